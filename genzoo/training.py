"""The one generic training loop (pure torch), with hooks for whatever wraps it.

`fit` knows nothing of Ray or MLflow: data-parallel sharding comes in as
(rank, world_size), checkpointing and reporting come in as the `on_epoch_end`
hook. Ray Train calls it from tasks/train.py; tests and benchmarks call it bare.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
import torch.distributed as dist

from genzoo.config import TrainConfig
from models.base import GenerativeModel, NoLikelihood


class NonFiniteLoss(RuntimeError):
    """A training metric became NaN or infinite: training stops, it is not retried."""


EpochHook = Callable[[int, dict[str, float], dict[str, Any]], None]


def training_state(model: GenerativeModel, optimizers: dict, epoch: int, history: list,
                   resumed_from: list[int] | None = None) -> dict[str, Any]:
    """Everything needed to resume: weights, config, optimiser states, epoch, metric history,
    and the epochs this training was resumed from (after worker failures)."""
    return {**model.state(), "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "epoch": epoch, "history": history, "resumed_from": list(resumed_from or [])}


def _mean_over_workers(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: v / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def fit(
    model: GenerativeModel,
    train: torch.Tensor,
    cfg: TrainConfig,
    *,
    val: torch.Tensor | None = None,
    resume: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    on_epoch_end: EpochHook | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Train for cfg.epochs (continuing from `resume`); returns the per-epoch metric history.

    Every worker sees the same shuffled order (seeded by epoch) and takes its
    own stride of each global batch, so N workers with batch B/N each make the
    same steps as one worker with batch B.
    """
    device = model.device
    optimizers = model.configure_optimizers()
    history: list[dict[str, float]] = []
    start, resumed_from = 0, []
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        for k, o in optimizers.items():
            o.load_state_dict(resume["optimizers"][k])
        start, history = resume["epoch"], list(resume["history"])
        resumed_from = list(resume.get("resumed_from", [])) + [start]
        log(f"resuming from the checkpoint of epoch {start}")
    n = len(train)
    per_worker = cfg.batch_size // world_size
    steps = max(1, n // cfg.batch_size) if cfg.steps_per_epoch == 0 else cfg.steps_per_epoch
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        torch.manual_seed(cfg.seed * 100_003 + epoch * 7919 + rank)  # the model's own noise
        model.train()
        sums: dict[str, float] = {}
        for step in range(steps):
            start_idx = (step * cfg.batch_size) % max(1, n - cfg.batch_size + 1)
            idx = order[start_idx:start_idx + cfg.batch_size][rank::world_size][:per_worker]
            metrics = model.training_step(train[idx].to(device), optimizers)
            bad = [k for k, v in metrics.items() if not math.isfinite(v)]
            if bad:
                raise NonFiniteLoss(f"{bad[0]} became {metrics[bad[0]]} at epoch {epoch + 1}, step {step + 1}")
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        epoch_metrics = _mean_over_workers({k: v / steps for k, v in sums.items()}, device)
        if val is not None and len(val) and model.likelihood_kind != "none":
            epoch_metrics["val_nll"] = -validation_log_likelihood(model, val)
        epoch_metrics["epoch_seconds"] = time.perf_counter() - t0
        history.append({"epoch": epoch + 1, **epoch_metrics})
        if rank == 0:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in epoch_metrics.items())
            log(f"{model.name} epoch {epoch + 1}/{cfg.epochs}: {shown}")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, epoch_metrics, training_state(model, optimizers, epoch + 1, history, resumed_from))
    return history


@torch.no_grad()
def log_likelihoods(model: GenerativeModel, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Per-example log-likelihood (or bound/estimate) in nats, float64 on the CPU, in batches."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model.log_likelihood(x[i:i + batch].to(model.device)).double().cpu()
                          for i in range(0, len(x), batch)])
    finally:
        model.train(was_training)


def validation_log_likelihood(model: GenerativeModel, x: torch.Tensor, batch: int = 500) -> float:
    """Mean per-example log-likelihood (or bound/estimate) in nats; NaN if the family has none."""
    try:
        return log_likelihoods(model, x, batch).mean().item()
    except NoLikelihood:
        return float("nan")
