"""The interface every genzoo family implements.

A family is one file in `models/`: a typed config (a dataclass deriving from
`FamilyConfig`, so the data shape is always given, never inferred) and a
`GenerativeModel` subclass with

- `configure_optimizers()`      -> {name: optimizer}
- `training_step(batch, opts)`  -> {metric: float or 0-d tensor}, detached tensors
                                   staying on the device until the training loop
                                   reads them once per epoch; the step does its own
                                   backward pass and optimiser steps (through
                                   `self.optimize`), so families with their own
                                   regime (GAN's two players, CD-k, walkback)
                                   override the step, not the trainer;
- `sample(n, generator)`        -> tensor of shape (n, *data_shape), on the CPU;
- `log_likelihood(x)`           -> per-example log-likelihood in nats (exact,
                                   a lower bound or an estimate, as
                                   `likelihood_kind` says); 'none' families
                                   raise `NoLikelihood`.

Nothing here knows about Ray, MLflow, Prefect or DVC. Data-parallel training
only shows up as `average_gradients`, `gather_rows` and `step_noise`, which are
plain in one process. N workers must take the steps one worker takes with the
same global batch (each worker holds the stride [rank::N] of it): gradients of
means are averaged; a loss that is not a mean over examples (an MMD) is taken
on the rows gathered from every worker; and training noise drawn through
`step_noise` is the worker's stride of one draw for the global batch.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

DATA_KINDS = ("points", "image", "binary")
LIKELIHOOD_KINDS = ("exact", "bound", "estimate", "none")


class ConfigError(ValueError):
    """A configuration value or key that genzoo cannot accept."""


class NoLikelihood(RuntimeError):
    """The family defines no likelihood (implicit models)."""


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check one config value against its annotation (the types configs use)."""
    origin = typing.get_origin(annotation)
    if annotation in ("int", int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{name}' must be an integer, got {value!r}")
        return value
    if annotation in ("float", float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{name}' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"config key '{name}' must be finite, got {value!r}")
        return float(value)
    if annotation in ("str", str):
        if not isinstance(value, str):
            raise ConfigError(f"config key '{name}' must be a string, got {value!r}")
        return value
    if annotation in ("bool", bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{name}' must be true or false, got {value!r}")
        return value
    if annotation in ("tuple[float, ...]",):
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
        ):
            raise ConfigError(f"config key '{name}' must be a list of numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if annotation in ("tuple[int, ...]",) or origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"config key '{name}' must be a list of integers, got {value!r}")
        return tuple(value)
    return value


def reject_unknown_keys(cls: type, values: dict[str, Any], where: str | None = None) -> None:
    """Typed configs take no key they do not know: one sentence naming the first unknown one."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values or {}) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key '{unknown[0]}' for {where or cls.__name__} (known keys: {', '.join(sorted(known))})"
        )


@dataclasses.dataclass
class FamilyConfig:
    """Fields every family shares. Subclasses add their own hyper-parameters."""

    data_shape: tuple[int, ...]
    data_kind: str  # 'points' (real vectors), 'image' (levels in [0, 1]) or 'binary' ({0, 1})
    levels: int = 256  # discrete levels of 'image' data, for dequantisation
    lr: float = 2e-4
    seed: int = 0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, _coerce(field.name, getattr(self, field.name), field.type))
        if not self.data_shape or any(d <= 0 for d in self.data_shape):
            raise ConfigError(f"data_shape must be positive sizes, got {self.data_shape!r}")
        if self.data_kind not in DATA_KINDS:
            raise ConfigError(f"data_kind must be one of {DATA_KINDS}, got {self.data_kind!r}")
        if self.levels < 2:
            raise ConfigError(f"levels must be at least 2, got {self.levels}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FamilyConfig":
        reject_unknown_keys(cls, values)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @property
    def dim(self) -> int:
        return math.prod(self.data_shape)

    @property
    def is_image(self) -> bool:
        return len(self.data_shape) == 3


def average_gradients(params: typing.Iterable[nn.Parameter]) -> None:
    """Average gradients over data-parallel workers (what DDP's all-reduce does).

    A no-op in a single process. Families call it through `optimize`, so every
    optimiser step of every family is synchronised, including the two players
    of a GAN, which a single DistributedDataParallel wrapper would not cover.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world


def _world() -> tuple[int, int]:
    """(world size, rank) of the data-parallel group, (1, 0) in a single process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _GatherRows(torch.autograd.Function):
    """All workers' rows concatenated in rank order; the backward pass hands each worker the gradient
    of every worker's loss with respect to its own rows (summed over workers), so after
    `average_gradients` the parameters get the gradient of the loss on the global batch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = _world()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = (rank * x.shape[0], (rank + 1) * x.shape[0])
        return torch.cat(parts)  # (world * n, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rows[0]:ctx.rows[1]]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """The rows of every data-parallel worker, (world * n, ...), differentiable; x itself in one process.
    Every worker must pass the same number of rows. For losses that are not means over examples."""
    return x if _world()[0] == 1 else _GatherRows.apply(x)


class GenerativeModel(nn.Module):
    """Base class: see the module docstring for the contract."""

    name: ClassVar[str]
    branch: ClassVar[str]  # where it sits in Goodfellow's (2016) taxonomy
    paper: ClassVar[str]
    likelihood_kind: ClassVar[str]  # one of LIKELIHOOD_KINDS
    likelihood_method: ClassVar[str | None] = None  # e.g. 'ELBO', 'IWAE-k', 'AIS'
    Config: ClassVar[type[FamilyConfig]]
    supported_kinds: ClassVar[tuple[str, ...]] = DATA_KINDS
    grad_clip: float = 0.0  # max global gradient norm per optimiser step (set by the training loop; 0: none)
    step_generator: torch.Generator | None = None  # seeded alike on every worker by the training loop

    def __init__(self, config: FamilyConfig):
        super().__init__()
        if not isinstance(config, self.Config):
            raise ConfigError(f"{self.name} needs a {self.Config.__name__}, got {type(config).__name__}")
        self.check_data(config)
        self.config = config

    @classmethod
    def check_data(cls, config: FamilyConfig) -> None:
        """Raise ConfigError when this family cannot model data of the config's kind and shape
        (the pipeline skips such pairings before training; families with shape limits extend it)."""
        if config.data_kind not in cls.supported_kinds:
            raise ConfigError(
                f"family '{cls.name}' does not fit {config.data_kind} data "
                f"(it fits: {', '.join(cls.supported_kinds)})"
            )

    # -- training -------------------------------------------------------
    def init_from_data(self, train: torch.Tensor) -> None:
        """Start from the data before the first step (the training loop calls it once, on every worker
        with the same data). Families with Bernoulli or logistic outputs set those biases to the logit
        of the training mean (`logit_of_mean`), so the first steps learn structure, not the marginals;
        the default does nothing."""

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": torch.optim.Adam(self.parameters(), lr=self.config.lr)}

    def optimize(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """zero_grad, backward, average over workers, step."""
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(loss.device.type, enabled=False):  # a bf16 training step's backward (train.precision)
            loss.float().backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        average_gradients(params)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        optimizer.step()

    def training_step(self, batch: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        raise NotImplementedError

    # -- sampling and likelihood ----------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Per-example log-likelihood (or bound/estimate) of `x` in nats."""
        raise NoLikelihood(f"family '{self.name}' is an implicit model: it defines no likelihood")

    def likelihood_notes(self) -> dict[str, float | str]:
        """What the evaluation should record beside the test likelihood (numbers become eval.* metrics,
        keys ending in '_warning' are shown to the user); none by default."""
        return {}

    def step_noise(self, shape: tuple[int, ...], uniform: bool = False, per_example: bool = True) -> torch.Tensor:
        """Training noise (standard normal, or U[0, 1)) of `shape`, drawn so that N data-parallel workers
        take the steps one worker takes: per-example noise (rows = this worker's examples) is the
        worker's stride [rank::N] of one draw for the global batch of shape[0] * N rows, as its examples
        are the same stride of the global batch; noise for state every worker holds alike (PCD's fantasy
        particles) is the whole draw. Drawn on the CPU from `step_generator`, which the training loop
        seeds per epoch identically on every worker (the global RNG when it is not set)."""
        world, rank = _world() if per_example else (1, 0)
        draw = torch.rand if uniform else torch.randn
        x = draw((shape[0] * world, *shape[1:]), generator=self.step_generator)
        return x[rank::world].to(self.device)

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal noise drawn on the CPU (so a seed gives the same samples on any device)."""
        return torch.randn(shape, generator=generator).to(self.device)

    # -- persistence ----------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"family": self.name, "config": self.config.to_dict(), "state_dict": self.state_dict()}

    def save(self, path: str | Path) -> None:
        torch.save(self.state(), path)


def logit_of_mean(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Per-dimension logit of the mean of x (n, ...) -> (...,), the mean clamped to [eps, 1 - eps]
    (pixels that are always 0 in the training split get a large negative bias, not -inf)."""
    return torch.logit(x.float().mean(0).clamp(eps, 1 - eps))


def dequantize(x: torch.Tensor, levels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation of values k/(levels-1) to (k + u)/levels, u ~ U[0, 1)."""
    k = torch.round(x * (levels - 1))
    u = torch.rand(x.shape, generator=generator).to(x.device) if generator is not None else torch.rand_like(x)
    return (k + u) / levels
