"""The evaluate tasks: a trained model (or a dataset's trivial baseline) sampled and measured on its
dataset's protocol (genzoo.evaluation.protocol), in the flow's process holding one CPU slot of the
cluster. Samples (.npy), their picture and every number, with the protocol that produced it (sample
counts, sigma, binarization, evaluator accuracy), go to the model's MLflow run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

import data
import models
from data import sources
from genzoo.config import EvalConfig
from genzoo.evaluation.protocol import MIXTURES, draw, measure, sample_count
from genzoo.plots import save_samples
from tasks.progress import say
from tasks.schema import ModelRequest, ModelResult, RunContext, Tag
from tasks.tracking import TrackedRun, tracked_run


def sample(model: models.GenerativeModel, req: ModelRequest, ecfg: EvalConfig, out: Path,
           run: TrackedRun, prepared: data.Prepared) -> tuple[np.ndarray, dict]:
    """Draw the protocol's samples with its seed; save them (.npy) and their picture (vectors over the
    test rows they are measured against); time the sampler."""
    x, per_sample = draw(model, req.n_samples, ecfg.seed, ecfg.sample_budget_seconds, minimum=min(req.n_samples, 64))
    if not np.isfinite(x).all():
        raise ValueError(f"{req.name}: the model produced NaN or infinite samples")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "samples.npy", x)
    centers = sources.mode_centers(req.dataset) if req.dataset in MIXTURES else None
    reference = prepared.subset("test", ecfg.real_examples, ecfg.seed).numpy() if x.ndim == 2 else None
    picture = save_samples(x if x.ndim == 2 else x[:64], out / "samples.png", centers=centers, title=req.name,
                           reference=reference, binary=prepared.kind == "binary")
    run.artifact(picture)
    timing = {"sample_seconds_per_sample": per_sample, "samples_per_second": 1 / max(per_sample, 1e-12),
              "samples_drawn": len(x)}
    run.metrics(timing)
    return x, timing


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_model(req: ModelRequest, ctx: RunContext, run: TrackedRun, model_path: str) -> dict:
    """Sample and measure a trained model on its dataset's protocol; everything is logged to `run`.
    Holds one CPU of the cluster's admission while it computes (the one its training handed over),
    so it never oversubscribes the machine the trainings share."""
    from tasks.plan import evaluation_key
    from tasks.ray_job import admission, cpu_capacity

    ecfg = EvalConfig(**ctx.evaluate)
    prepared = data.load(req.prepared_dir)
    check_data_version(req, prepared)
    with admission.slot(1.0, cpu_capacity(), evaluation_key(ctx, req.name)):  # the CPU its training handed over
        t0 = time.perf_counter()
        torch.set_num_threads(1)  # the one CPU it holds
        model = models.load(model_path)
        samples, timing = sample(model, req, ecfg, Path(model_path).parent, run, prepared)
        out = measure(model, req.dataset, prepared, samples, ecfg, ctx.evaluators.get(req.dataset))
        timing["eval_seconds"] = time.perf_counter() - t0  # sampling included
    _log(run, out, len(samples), ecfg, prepared)
    run.metrics({"eval_seconds": timing["eval_seconds"]})
    for key, text in out.items():
        if key.endswith("_warning"):
            say(f"warning: {text}")
    return {**out, **timing}


def check_data_version(req: ModelRequest, prepared: data.Prepared) -> None:
    """The prepared folder is read again here: refuse it when it is no longer the data version the
    model was trained and tagged on (another run re-prepared it meanwhile)."""
    trained, now = req.manifest["hash"], prepared.manifest["hash"]
    if now != trained:
        raise data.DataError(f"{req.prepared_dir} now holds data version {now}, but {req.name} was trained on "
                             f"{trained}: not evaluated on other data (run the pipeline again to train on it)")


def _log(run: TrackedRun, out: dict, n_samples: int, ecfg: EvalConfig, prepared: data.Prepared) -> None:
    run.metrics({f"eval.{k}": v for k, v in out.items() if isinstance(v, (int, float))})
    run.params({
        "eval.n_samples": str(n_samples), "eval.likelihood_examples": str(ecfg.likelihood_examples),
        "eval.parzen_examples": str(ecfg.parzen_examples), "eval.binarization":
            prepared.manifest["params"].get("binarization", "n/a") if prepared.kind == "binary" else "n/a",
        "eval.likelihood_method": str(out.get("likelihood_method", "none")),
    })


@task(name="baseline", cache_policy=NO_CACHE)
def evaluate_baseline(ctx: RunContext, dataset: str, prepared_dir: str) -> ModelResult:
    """The dataset's trivial baseline (genzoo/baselines.py), measured like a family, in a child run
    this task owns. A baseline is a reference, never a reason to stop the flow: an error marks its
    run FAILED and the row says why."""
    from genzoo import baselines
    from tasks.plan import queue_key
    from tasks.ray_job import admission, cpu_capacity

    ecfg = EvalConfig(**ctx.evaluate)
    prepared = data.load(prepared_dir)
    result = ModelResult(baselines.NAME, dataset, branch=baselines.BRANCH)
    tags = {Tag.FAMILY: baselines.NAME, Tag.DATASET: dataset, Tag.DATA_HASH: prepared.manifest["hash"],
            Tag.BRANCH: baselines.BRANCH}
    key = queue_key(ctx, f"baseline-{dataset}")
    with tracked_run(ctx.root, f"{baselines.NAME}-{dataset}", tags, ctx.parent_run_id) as run:
        result.run_id = run.run_id
        try:
            with admission.slot(1.0, cpu_capacity(), key):  # after the trainings (tasks/plan.py)
                torch.set_num_threads(1)
                model = baselines.FactorisedBaseline(prepared.tensor("train"), prepared.kind, prepared.levels)
                n = sample_count(prepared.manifest, ecfg)
                samples = model.sample(n, torch.Generator().manual_seed(ecfg.seed)).numpy()
                result.metrics = measure(model, dataset, prepared, samples, ecfg, ctx.evaluators.get(dataset))
            _log(run, result.metrics, len(samples), ecfg, prepared)
            result.status = "FINISHED"
        except Exception as exc:
            result.reason = f"baseline failed: {exc}"
            run.fail(result.reason)
        finally:
            admission.cancel(key)
    return result
