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


def flush_denormals() -> None:
    """Flush denormal floats to zero on the CPU (x86 FTZ/DAZ) in this thread and in every thread it
    starts from here on, torch's own pools included: threads inherit the floating-point mode of the
    thread that creates them, so call this before a process's (or a thread's) first torch operation.
    A pool made before keeps computing with denormals.

    NOTE: trained weights, Adam's moments and activations drift into float32's denormal range (below
    1.2e-38), where x86 runs every operation on them many times slower. A MADE 784-500-784's quick fit
    (12 x 500 steps, 2 threads, each in a new process) took 55.2 s and 60.4 s without this and 39.8 s
    and 40.7 s with it; the VAE's on MNIST 66.0 s and 46.3 s; the GAN's and the RBM's did not change
    (benchmarks/denormals.py; BENCHMARKS.md, "Denormal floats"). Values that small carry nothing these
    models use; their likelihoods are computed in log space."""
    torch.set_flush_denormal(True)


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or
    AMX tiles (elsewhere torch emulates it, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def trains_in_bfloat16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether a training with `cfg` on `device` runs its forward passes in bfloat16 (see step_autocast)."""
    return cfg.precision == "bf16" and native_bfloat16(device)


def step_autocast(cfg: TrainConfig, device: torch.device, log: Callable[[str], None] = print) -> torch.autocast:
    """The autocast context of each training step: bfloat16 when cfg.precision is 'bf16' and `device` has it
    natively, else disabled (float32), said once in the log.

    NOTE: bfloat16 keeps float32's range with 8 bits of mantissa. Only the forward pass runs in it (autocast
    casts the inputs of matmuls and convolutions); the weights, their gradients, Adam's moments and every
    likelihood the evaluation reports stay float32. On this machine's AMX cores it made a gated PixelCNN's
    training step 1.5x (16 channels) to 2.5x (64 channels) faster on 2 threads (BENCHMARKS.md, "PixelCNN at standard")."""
    enabled = trains_in_bfloat16(cfg, device)
    if cfg.precision == "bf16" and not enabled:
        log(f"train.precision is bf16, but this {device.type} has no native bfloat16: training in float32")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


BUDGET_WARMUP_STEPS = 2  # train.budget_seconds: steps run before the timing starts (allocations, caches) ...
BUDGET_TIMED_STEPS = 10  # ... and steps timed to fit steps_per_epoch to the budget


def steps_within_budget(cfg: TrainConfig, steps: int, seconds_per_step: float) -> int:
    """Steps per epoch for cfg.epochs epochs of `seconds_per_step` each to fit cfg.budget_seconds: at most `steps`
    (the configured ones), at least those the timing has run."""
    return steps_for_the_rest(cfg, steps, 0.0, 0, seconds_per_step, 0.0)


def steps_for_the_rest(cfg: TrainConfig, steps: int, spent: float, epochs_done: int, seconds_per_step: float,
                       seconds_per_epoch_besides: float) -> int:
    """Steps per epoch for the epochs left after `epochs_done` to fit what `spent` seconds left of cfg.budget_seconds,
    at the last epoch's `seconds_per_step` and `seconds_per_epoch_besides` (validation): at most `steps` (the
    configured ones), at least BUDGET_WARMUP_STEPS + BUDGET_TIMED_STEPS. Re-timed after every epoch, so steps that
    slow down after the first epoch's timing (caches, other work) do not overrun the budget."""
    left = max(1, cfg.epochs - epochs_done)
    per_epoch = (cfg.budget_seconds - spent) / left - seconds_per_epoch_besides
    fitting = int(max(0.0, per_epoch) / max(seconds_per_step, 1e-9))
    return max(BUDGET_WARMUP_STEPS + BUDGET_TIMED_STEPS, min(steps, fitting))


def lr_factor(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int, since: tuple[int, int] = (0, 0)) -> float:
    """Multiplier of the initial learning rate before optimiser step `step` (0-based) of `total`:
    linear warm-up over cfg.warmup_steps, then constant, cosine down to cfg.min_lr_ratio, or a
    decay by cfg.step_gamma every cfg.step_every epochs. `since` is (epochs, steps) run when the epochs
    took `steps_per_epoch` steps each (a time budget refits them after an epoch), so the step schedule
    counts epochs, not steps of the current length."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if cfg.schedule == "step":
        epoch = since[0] + max(0, step - since[1]) // max(1, steps_per_epoch)
        return cfg.step_gamma ** (epoch // cfg.step_every)
    return 1.0


class WeightAverage:
    """Exponential moving average of a model's parameters (Polyak averaging, as DDPM and many GANs
    sample from) and of its BatchNorm running statistics, so those are averaged with the weights they
    were measured under (as timm's ModelEma does) rather than taken from the live weights. Other
    buffers (counters, masks, running data moments) are copied from the live model."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.averaged = {k for k, _ in model.named_parameters()} | {
            f"{name}.{stat}" for name, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._NormBase) for stat in ("running_mean", "running_var")}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.averaged and v.is_floating_point():
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)


def training_state(model: GenerativeModel, optimizers: dict, epoch: int, history: list,
                   resumed_from: list[int] | None = None, *, serve: dict | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to resume, and the weights to serve.

    `state_dict` holds the weights a sampler or the registry should use (the best on validation, or
    the moving average, else the live ones); `live_state_dict` the ones training continues from.
    Also: config, optimiser states, epoch, metric history, the epochs this training was resumed
    from (after worker failures), and `extra` (schedule, EMA and early-stopping state)."""
    state = model.state()
    live = state["state_dict"]
    return {**state, "state_dict": serve if serve is not None else live, "live_state_dict": live,
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "epoch": epoch, "history": history, "resumed_from": list(resumed_from or []), **(extra or {})}


def _mean_over_workers(values: dict[str, float], device: torch.device) -> dict[str, float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: v / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def _max_over_workers(value: float, device: torch.device) -> float:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def _as_float(v: Any) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


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
    """Train for cfg.epochs (continuing from `resume`), or until validation stops improving for
    cfg.patience epochs; returns the per-epoch metric history. When it returns, the model holds the
    weights to serve: the best on validation (likelihood families, cfg.restore_best), else the moving
    average (cfg.ema > 0), else the last ones.

    With cfg.budget_seconds, the first epoch times its first steps and cuts steps_per_epoch to what
    fits the budget on this machine (`steps_within_budget`), and every later epoch's steps are fitted
    again to what the epochs before left of it (`steps_for_the_rest`); the history's `steps` (a running
    total) say what ran.

    Every worker sees the same shuffled order (seeded by epoch) and takes its
    own stride of each global batch, so N workers with batch B/N each make the
    same steps as one worker with batch B.
    """
    flush_denormals()  # this thread; set before the first torch operation where it matters (see there)
    device = model.device
    n = len(train)
    per_worker = cfg.batch_size // world_size
    steps = max(1, n // cfg.batch_size) if cfg.steps_per_epoch == 0 else cfg.steps_per_epoch
    configured = steps  # a time budget (below) fits steps per epoch between its timed steps and these
    total = steps * cfg.epochs
    model.grad_clip = cfg.clip_grad
    if resume is None and cfg.init_from_data:
        model.init_from_data(train)  # the same data on every worker: the same biases
    optimizers = model.configure_optimizers()
    # the lambdas read `total`, `steps` and `since` when called: a time budget (below) may change them after an epoch
    since = (0, 0)  # (epochs, steps) run when the epochs took `steps` steps each
    schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(cfg, s, total, steps, since))
                  for k, o in optimizers.items()}
    average = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
    autocast = step_autocast(cfg, device, log if rank == 0 else lambda m: None)
    has_val = val is not None and len(val) > 0 and model.likelihood_kind != "none"
    keep_best = has_val and cfg.restore_best
    history: list[dict[str, float]] = []
    start, resumed_from = 0, []
    best: dict[str, Any] = {"nll": math.inf, "epoch": 0, "weights": None}
    if resume is not None:
        model.load_state_dict(resume.get("live_state_dict", resume["state_dict"]))
        for k, o in optimizers.items():
            o.load_state_dict(resume["optimizers"][k])
        for k, sch in schedulers.items():
            if k in resume.get("schedulers", {}):
                sch.load_state_dict(resume["schedulers"][k])
        if average is not None and resume.get("ema") is not None:
            average.shadow = resume["ema"]
        best = resume.get("best", best)
        steps = resume.get("steps_per_epoch", steps)  # as a time budget fitted them before the failure
        total = resume.get("total_steps", steps * cfg.epochs)
        start, history = resume["epoch"], list(resume["history"])
        resumed_from = list(resume.get("resumed_from", [])) + [start]
        log(f"resuming from the checkpoint of epoch {start}")
        if resume.get("stopped_early"):
            model.load_state_dict(resume["state_dict"])
            return history

    def serving_weights() -> dict[str, torch.Tensor]:
        """The best weights on validation (when kept), else the moving average, else the live ones."""
        if keep_best and best["weights"] is not None:
            return best["weights"]
        return average.shadow if average is not None else model.state_dict()

    timed = BUDGET_WARMUP_STEPS + BUDGET_TIMED_STEPS
    fit_to_budget = cfg.budget_seconds > 0 and start == 0 and steps > timed
    done = int(history[-1]["steps"]) if history else 0  # optimiser steps run, over every epoch
    since = (start, done)
    spent_before = sum(h.get("epoch_seconds", 0.0) for h in history)  # of the budget, before a resume
    t_fit = time.perf_counter()
    bf16 = float(trains_in_bfloat16(cfg, device))
    stopped = False
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        torch.manual_seed(cfg.seed * 100_003 + epoch * 7919 + rank)  # the model's own noise
        # ... and the noise families draw through step_noise: one stream on every worker (their strides of it)
        model.step_generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 7919)
        model.train()
        sums: dict[str, Any] = {}
        step = 0
        while step < steps:
            if fit_to_budget and step == BUDGET_WARMUP_STEPS:
                t_timed = _synchronized_clock(device)
            start_idx = (step * cfg.batch_size) % max(1, n - cfg.batch_size + 1)
            idx = order[start_idx:start_idx + cfg.batch_size][rank::world_size][:per_worker]
            with autocast:  # the forward pass; GenerativeModel.optimize leaves it for the backward pass
                metrics = model.training_step(train[idx].to(device), optimizers)
            for sch in schedulers.values():
                sch.step()
            if average is not None:
                average.update(model)
            for k, v in metrics.items():  # floats or 0-d tensors, kept where they are until the epoch ends
                sums[k] = sums.get(k, 0.0) + (v.detach() if isinstance(v, torch.Tensor) else v)
            step += 1
            if fit_to_budget and step == timed:  # once, in the first epoch: fit the steps to the budget
                fit_to_budget = False
                per_step = _max_over_workers((_synchronized_clock(device) - t_timed) / BUDGET_TIMED_STEPS, device)
                steps = steps_within_budget(cfg, configured, per_step)
                total = steps * cfg.epochs
                if rank == 0:
                    log(f"{model.name}: {1000 * per_step:.0f} ms per step, so a {cfg.budget_seconds:g} s budget over "
                        f"{cfg.epochs} epochs holds {steps} steps per epoch (of {configured})")
        train_seconds = _synchronized_clock(device) - t0
        done += steps
        epoch_metrics = {k: _as_float(v) / steps for k, v in sums.items()}
        bad = [k for k, v in epoch_metrics.items() if not math.isfinite(v)]
        if bad:
            raise NonFiniteLoss(f"{bad[0]} became {epoch_metrics[bad[0]]} in epoch {epoch + 1}")
        epoch_metrics = _mean_over_workers(epoch_metrics, device)
        epoch_metrics["lr"] = next(iter(optimizers.values())).param_groups[0]["lr"]
        epoch_metrics["steps"] = float(done)
        epoch_metrics["bfloat16"] = bf16  # 1: the forward passes ran in bfloat16 (train.precision bf16, natively)
        if has_val:
            live = None
            if average is not None:  # validate the weights that would be served
                live = {k: v.clone() for k, v in model.state_dict().items()}
                model.load_state_dict(average.shadow)
            epoch_metrics["val_nll"] = -validation_log_likelihood(model, val)
            if live is not None:
                model.load_state_dict(live)
            if epoch_metrics["val_nll"] < best["nll"]:
                current = average.shadow if average is not None else model.state_dict()
                best = {"nll": epoch_metrics["val_nll"], "epoch": epoch + 1,
                        "weights": {k: v.detach().clone() for k, v in current.items()} if keep_best else None}
            elif cfg.patience and epoch + 1 - best["epoch"] >= cfg.patience:
                stopped = True
        epoch_metrics["epoch_seconds"] = time.perf_counter() - t0
        history.append({"epoch": epoch + 1, **epoch_metrics})
        if cfg.budget_seconds > 0 and not stopped and epoch + 1 < cfg.epochs:  # fit the epochs left to what is left
            # the slowest worker's figures, so that every worker takes the same number of steps
            spent = _max_over_workers(spent_before + time.perf_counter() - t_fit, device)
            per_step = _max_over_workers(train_seconds / steps, device)
            besides = _max_over_workers(epoch_metrics["epoch_seconds"] - train_seconds, device)
            refitted = steps_for_the_rest(cfg, configured, spent, epoch + 1, per_step, besides)
            if abs(refitted - steps) <= steps // 50:  # within 2 %: timing noise, not a change of pace
                refitted = steps
            if refitted != steps and rank == 0:
                log(f"{model.name}: {spent:.0f} s of the {cfg.budget_seconds:g} s budget spent at "
                    f"{1000 * per_step:.0f} ms per step: {refitted} steps per epoch for the "
                    f"{cfg.epochs - epoch - 1} epochs left (was {steps})")
            steps, since = refitted, (epoch + 1, done)
            total = done + steps * (cfg.epochs - epoch - 1)  # the cosine schedule ends where the training now ends
        if rank == 0:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in epoch_metrics.items() if k not in ("steps", "bfloat16"))
            log(f"{model.name} epoch {epoch + 1}/{cfg.epochs}: {shown}")
            if stopped:
                log(f"{model.name}: no better validation NLL for {cfg.patience} epochs, stopping early; "
                    f"keeping epoch {best['epoch']} (val_nll={best['nll']:.4g})")
        if on_epoch_end is not None:
            extra = {"schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                     "ema": average.shadow if average is not None else None, "best": best,
                     "stopped_early": stopped, "finished": stopped or epoch + 1 == cfg.epochs,
                     "steps_per_epoch": steps, "total_steps": total}
            on_epoch_end(epoch + 1, epoch_metrics,
                         training_state(model, optimizers, epoch + 1, history, resumed_from, serve=serving_weights(),
                                        extra=extra))
        if stopped:
            break
    model.load_state_dict(serving_weights())
    return history


def _synchronized_clock(device: torch.device) -> float:
    """perf_counter once the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


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
