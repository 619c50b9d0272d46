"""Sampling and first evaluation of a trained model (runs in the flow's process)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from prefect import task

import data
import models
from data import sources
from genzoo.config import EvalConfig
from genzoo.metrics import likelihood_summary, mode_statistics
from genzoo.plots import save_samples
from tasks.tracking import log_metrics

MIXTURES = {"ring8": 0.01, "grid25": 0.05}  # dataset -> default std of the modes


@task(name="sample")
def sample(model_path: str, dataset: str, n: int, seed: int, out_dir: str, run_id: str) -> dict:
    """Draw n samples with a seed; save them (.npy) and their picture; time the sampler."""
    model = models.load(model_path)
    t0 = time.perf_counter()
    x = model.sample(n, torch.Generator().manual_seed(seed)).numpy()
    seconds = time.perf_counter() - t0
    if not np.isfinite(x).all():
        raise ValueError(f"{model.name}-{dataset}: the model produced NaN or infinite samples")
    out = Path(out_dir)
    np.save(out / "samples.npy", x)
    title = f"{model.name}-{dataset}"
    centers = sources.mode_centers(dataset) if dataset in MIXTURES else None
    picture = save_samples(x if x.ndim == 2 else x[:64], out / "samples.png", centers=centers, title=title)
    from tasks.services import client

    client().log_artifact(run_id, str(picture))
    metrics = {"sample_seconds_per_sample": seconds / n, "samples_per_second": n / max(seconds, 1e-9)}
    log_metrics(run_id, metrics)
    return {"samples": str(out / "samples.npy"), "picture": str(picture), **metrics}


@task(name="evaluate")
def evaluate(model_path: str, dataset: str, prepared_dir: str, samples_path: str, cfg: dict, run_id: str) -> dict:
    """Mode statistics on ring8/grid25, the family's test likelihood (or bound/estimate) where it has one."""
    ecfg = EvalConfig(**cfg)
    prepared = data.load(prepared_dir)
    model = models.load(model_path)
    out: dict[str, float | str] = {"likelihood_kind": model.likelihood_kind}
    if dataset in MIXTURES and prepared.kind == "points":
        std = prepared.manifest["params"].get("std", MIXTURES[dataset])
        out.update(mode_statistics(np.load(samples_path), sources.mode_centers(dataset), std))
    if model.likelihood_kind != "none":
        test = prepared.tensor("test", ecfg.likelihood_examples or None)
        torch.manual_seed(ecfg.seed)
        model.eval()
        with torch.no_grad():
            ll = torch.cat([model.log_likelihood(test[i:i + 500]) for i in range(0, len(test), 500)]).double().numpy()
        if not np.isfinite(ll).all():
            raise ValueError(f"{model.name}-{dataset}: the test log-likelihood is not finite")
        out.update(likelihood_summary(ll, int(np.prod(prepared.shape)), prepared.kind))
        out["likelihood_method"] = model.likelihood_method or model.likelihood_kind
    log_metrics(run_id, {f"eval.{k}": v for k, v in out.items() if isinstance(v, (int, float))})
    return out
