"""Sampling and evaluation of a trained model (runs in the flow's process, holding one CPU slot).

- sample:   draws samples in batches (up to a time budget, so O(pixels) samplers stay
            affordable), times them, saves them and their picture;
- evaluate: mode statistics on ring8/grid25 and Stacked MNIST; the family's own test likelihood (exact,
            bound or estimate); the legacy Parzen-window estimate for every family;
            on image data FID, KID, precision/recall and density/coverage on the
            features of the dataset's evaluator network. Every number is logged with
            the protocol that produced it (sample counts, sigma, evaluator accuracy).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

import data
import models
from data import sources
from genzoo import quality
from genzoo.config import EvalConfig
from genzoo.metrics import likelihood_summary, mode_histogram_statistics, mode_statistics, stacked_mode_ids
from genzoo.training import log_likelihoods
from genzoo.plots import save_samples
from tasks.progress import say
from tasks.schema import ModelRequest, ModelResult, RunContext, Tag
from tasks.tracking import TrackedRun, tracked_run

MIXTURES = {"ring8": 0.01, "grid25": 0.05}  # dataset -> default std of the modes
POINT_SIGMAS = np.logspace(-3, 0.5, 15)  # Parzen grid for 2-D points (modes of std 0.01 to 0.05)


def sample_count(manifest: dict, ecfg: EvalConfig) -> int:
    """Samples drawn for evaluation: the 2-D protocol's or the image protocol's count, and on Stacked
    MNIST enough to count its 1,000 modes."""
    n = ecfg.n_samples if len(manifest["shape"]) == 1 else ecfg.n_image_samples
    return max(n, ecfg.n_mode_samples) if manifest.get("modes") else n


def draw(model: models.GenerativeModel, n: int, seed: int, budget_seconds: float, minimum: int) -> tuple[np.ndarray, float]:
    """Up to n samples in batches of 256 from one seeded generator; stops early once the time
    budget is spent (never below `minimum`). Returns (samples, seconds per sample)."""
    gen = torch.Generator().manual_seed(seed)
    parts, drawn, t0 = [], 0, time.perf_counter()
    while drawn < n:
        size = min(256 if drawn else min(n, 64), n - drawn)
        parts.append(model.sample(size, gen).numpy())
        drawn += size
        if drawn >= minimum and time.perf_counter() - t0 > budget_seconds:
            break
    return np.concatenate(parts), (time.perf_counter() - t0) / drawn


def sample(model: models.GenerativeModel, req: ModelRequest, ecfg: EvalConfig, out: Path,
           run: TrackedRun) -> tuple[np.ndarray, dict]:
    """Draw the protocol's samples with its seed; save them (.npy) and their picture; time the sampler."""
    x, per_sample = draw(model, req.n_samples, ecfg.seed, ecfg.sample_budget_seconds, minimum=min(req.n_samples, 64))
    if not np.isfinite(x).all():
        raise ValueError(f"{req.name}: the model produced NaN or infinite samples")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "samples.npy", x)
    centers = sources.mode_centers(req.dataset) if req.dataset in MIXTURES else None
    picture = save_samples(x if x.ndim == 2 else x[:64], out / "samples.png", centers=centers, title=req.name)
    run.artifact(picture)
    timing = {"sample_seconds_per_sample": per_sample, "samples_per_second": 1 / max(per_sample, 1e-12),
              "samples_drawn": len(x)}
    run.metrics(timing)
    return x, timing


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_model(req: ModelRequest, ctx: RunContext, run: TrackedRun, model_path: str) -> dict:
    """Sample and measure a trained model on its dataset's protocol; everything is logged to `run`.
    Holds one CPU of the cluster's admission while it computes, so it never oversubscribes the
    machine the trainings share."""
    from tasks.ray_job import admission, cpu_capacity

    ecfg = EvalConfig(**ctx.evaluate)
    with admission.slot(1.0, cpu_capacity()):
        t0 = time.perf_counter()
        torch.set_num_threads(1)  # the one CPU it holds
        model = models.load(model_path)
        prepared = data.load(req.prepared_dir)
        samples, timing = sample(model, req, ecfg, Path(model_path).parent, run)
        out = measure(model, req.dataset, prepared, samples, ecfg, ctx.evaluators.get(req.dataset))
        timing["eval_seconds"] = time.perf_counter() - t0  # sampling included
    _log(run, out, len(samples), ecfg, prepared)
    run.metrics({"eval_seconds": timing["eval_seconds"]})
    return {**out, **timing}


def family_likelihood(model: models.GenerativeModel, prepared: data.Prepared, ecfg: EvalConfig) -> dict:
    test = prepared.subset("test", ecfg.likelihood_examples, ecfg.seed)
    torch.manual_seed(ecfg.seed)
    ll = (log_likelihoods(model, test) if isinstance(model, torch.nn.Module) else model.log_likelihood(test)).numpy()
    if not np.isfinite(ll).all():
        raise ValueError(f"{model.name}-{prepared.name}: the test log-likelihood is not finite")
    return {**likelihood_summary(ll, int(np.prod(prepared.shape)), prepared.kind),
            "likelihood_method": model.likelihood_method or model.likelihood_kind}


def parzen(samples: np.ndarray, prepared: data.Prepared, ecfg: EvalConfig) -> dict:
    """Goodfellow et al. (2014) Parzen window: sigma chosen on validation rows, mean over test rows."""
    flat = samples.reshape(len(samples), -1).astype(np.float64)
    val = prepared.subset("val", ecfg.parzen_examples, ecfg.seed).flatten(1).double().numpy()
    test = prepared.subset("test", ecfg.parzen_examples, ecfg.seed).flatten(1).double().numpy()
    grid = POINT_SIGMAS if prepared.kind == "points" else quality.PARZEN_SIGMAS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # edge-of-grid notice: the sigma is logged anyway
        sigma = quality.choose_parzen_sigma(flat, val, grid)
    ll = quality.parzen_log_likelihood(flat, test, sigma)
    return {"parzen_ll": float(ll.mean()), "parzen_ll_stderr": float(ll.std() / np.sqrt(len(ll))),
            "parzen_sigma": sigma}


def image_quality(samples: np.ndarray, prepared: data.Prepared, evaluator_dir: str, ecfg: EvalConfig) -> dict:
    """FID, KID, precision/recall, density/coverage on the evaluator's penultimate features; with
    evaluate.fid_network 'inception' also `inception_fid` on Inception-v3 features (genzoo/inception.py)."""
    from genzoo import evaluator_stage
    from genzoo.evaluator import extract_features

    net, meta = evaluator_stage.load(evaluator_dir)
    real = prepared.subset("test", ecfg.real_examples, ecfg.seed)
    if prepared.kind == "binary":
        real = (real > 0.5).float()
    f_real = extract_features(net, real)
    images = evaluator_stage.as_images(samples)
    f_fake = extract_features(net, images)
    k = min(5, len(f_fake) - 1, len(f_real) - 1)
    with warnings.catch_warnings():  # the small-sample case is reported once, below
        warnings.simplefilter("ignore", quality.SmallSampleWarning)
        out = {"fid": quality.frechet_distance(f_real, f_fake),
               **quality.kernel_inception_distance(f_real, f_fake, subsets=50,
                                                   subset_size=min(1000, len(f_fake), len(f_real)), seed=ecfg.seed),
               **quality.precision_recall(f_real, f_fake, k=min(3, k)),
               **quality.density_coverage(f_real, f_fake, k=k)}
    if ecfg.fid_network == "inception":  # optional extra ruler: same samples, same real images
        from genzoo import inception

        inception_net = inception.load()
        fakes = inception.inception_features(images, inception_net)
        out["inception_fid"] = quality.frechet_distance(inception.inception_features(real, inception_net), fakes)
        out["inception_fid_samples"] = len(fakes)
    if not hasattr(net, "predict_digits"):  # one label per image: how the samples spread over the classes
        from genzoo.baselines import class_shares
        from genzoo.evaluator import predict_logits

        out.update(class_shares(predict_logits(net, images).argmax(-1).numpy(), net.config.num_classes))
    out["evaluator_test_accuracy"] = meta["test_accuracy"]
    out["metric_samples"], out["metric_real"] = len(f_fake), len(f_real)
    if min(len(f_fake), len(f_real)) < quality.MIN_RECOMMENDED_SAMPLES:
        out["small_sample_warning"] = f"{len(f_fake)} samples / {len(f_real)} real: fewer than 10,000, noisy"
        say(f"warning: {prepared.name} quality metrics from {len(f_fake):,} samples and {len(f_real):,} real "
              f"images (the protocol: 10,000 of each, the real ones limited by the test split): noisy")
    return out


def stacked_modes(samples: np.ndarray, prepared: data.Prepared, evaluator_dir: str, ecfg: EvalConfig) -> dict:
    """Stacked MNIST mode coverage (Metz et al. 2017; VEEGAN; PacGAN): the evaluator's digit
    classifier labels each channel, a sample's mode is 100 * d0 + 10 * d1 + d2; modes captured
    and KL(mode histogram || uniform over the manifest's `modes`), in nats."""
    from genzoo import evaluator_stage

    num_modes = int(prepared.manifest["modes"])
    net, _ = evaluator_stage.load(evaluator_dir)
    if not hasattr(net, "predict_digits"):
        raise ValueError(f"{prepared.name} counts its {num_modes} modes channel by channel, but the evaluator in "
                         f"{evaluator_dir} classifies whole images; set evaluators.{prepared.name}.per_channel in params.yaml")
    classes = net.digit.config.num_classes
    if classes ** net.channels != num_modes:
        raise ValueError(f"{prepared.name} has {num_modes} modes, but its evaluator tells {classes} classes "
                         f"in each of {net.channels} channels ({classes ** net.channels} modes)")
    digits = net.predict_digits(evaluator_stage.as_images(samples))  # (n, channels)
    out = {**mode_histogram_statistics(stacked_mode_ids(digits, classes), num_modes), "mode_samples": len(samples)}
    if len(samples) < ecfg.n_mode_samples:
        out["mode_sample_warning"] = f"{len(samples)} samples: fewer than {ecfg.n_mode_samples:,} (the protocol's count)"
        say(f"warning: {prepared.name} mode statistics from {len(samples)} samples "
            f"(< {ecfg.n_mode_samples:,}): modes captured is biased low")
    return out


def measure(model, dataset: str, prepared: data.Prepared, samples: np.ndarray, ecfg: EvalConfig,
            evaluator_dir: str | None) -> dict:
    """Every measure that applies to a model (a family, or the dataset's baseline) and its samples."""
    out: dict[str, float | str] = {"likelihood_kind": model.likelihood_kind}
    if dataset in MIXTURES and prepared.kind == "points":
        std = prepared.manifest["params"].get("std", MIXTURES[dataset])
        out.update(mode_statistics(samples, sources.mode_centers(dataset), std))
    if prepared.manifest.get("modes"):  # Stacked MNIST: mode counts on all samples, the rest on the image protocol's
        if evaluator_dir is None:
            raise ValueError(f"{dataset} counts modes with its evaluator, but none is trained; add it to params.yaml evaluators")
        out.update(stacked_modes(samples, prepared, evaluator_dir, ecfg))
        samples = samples[:ecfg.n_image_samples]
    if model.likelihood_kind != "none":
        out.update(family_likelihood(model, prepared, ecfg))
    out.update(parzen(samples, prepared, ecfg))
    if evaluator_dir is not None:
        out.update(image_quality(samples, prepared, evaluator_dir, ecfg))
    return out


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
    from tasks.ray_job import admission, cpu_capacity

    ecfg = EvalConfig(**ctx.evaluate)
    prepared = data.load(prepared_dir)
    result = ModelResult(baselines.NAME, dataset, branch=baselines.BRANCH)
    tags = {Tag.FAMILY: baselines.NAME, Tag.DATASET: dataset, Tag.DATA_HASH: prepared.manifest["hash"],
            Tag.BRANCH: baselines.BRANCH}
    with tracked_run(ctx.root, f"{baselines.NAME}-{dataset}", tags, ctx.parent_run_id) as run:
        result.run_id = run.run_id
        try:
            with admission.slot(1.0, cpu_capacity()):
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
    return result
