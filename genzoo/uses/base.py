"""What a generative model is for, beyond drawing samples: the contract of `genzoo apply TASK`.

A *use* (`semi-supervised`, `inpaint`, `super-resolve`, `translate`) is a task with several
*methods*: ways of doing it, generative ones (a family, e.g. `gan`, `made`) beside the baselines
a generative model has to beat (e.g. `baseline`, `mse`). One method on one dataset is one run:

    outcome = method.run(UseInputs(...))      # train what it needs, measure, draw the pictures

Methods are pure torch: no Prefect, Ray or MLflow here. The pipeline layer (tasks/apply.py) runs
each on a Ray worker, logs its metrics and pictures to MLflow and registers its predictor as
`<task>-<method>-<dataset>`; the registered model is served through `predict` (numpy in, numpy out).

Settings come from params.yaml, `uses.<task>.<method>`: keys common to every budget, refined per
budget (`smoke`, `quick`, `standard`, `full`); each method's `Config` dataclass checks them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from models.base import ConfigError, _coerce, reject_unknown_keys


@dataclasses.dataclass
class UseConfig:
    """Base of every method's settings: typed, unknown keys rejected with a sentence."""

    seed: int = 0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, _coerce(field.name, getattr(self, field.name), field.type))

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, where: str = "") -> "UseConfig":
        reject_unknown_keys(cls, values or {}, where or None)
        return cls(**(values or {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class UseInputs:
    """Everything one method run gets."""

    task: str
    method: str
    dataset: str
    data: Any  # data.Prepared: arrays 'train', 'val', 'test' (+ '*_labels'), manifest
    config: UseConfig  # the method's settings for this budget
    device: torch.device
    evaluator: nn.Module | None = None  # the dataset's evaluator network (accuracy, FID features), if any
    family_model: nn.Module | None = None  # a trained generative model (methods with `family`), eval mode
    log: Callable[[str], None] = print  # one line of progress
    progress: Callable[[dict[str, float]], None] = lambda metrics: None  # per-epoch numbers (MLflow steps)


@dataclasses.dataclass
class UseOutcome:
    """What a method run measured and what is kept of it."""

    metrics: dict[str, float]  # flat, finite floats; the report's columns
    predictor: "Predictor | None" = None  # registered and served; None for a method with nothing to keep
    pictures: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> image in [0, 1], (H, W) or (H, W, 3)
    notes: list[str] = dataclasses.field(default_factory=list)  # what a reader of the table must know


class Predictor(nn.Module):
    """A trained method, as the registry serves it: numpy in, numpy out (`predict`), rebuilt from
    its config and state dict (`Method.build`)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = dict(config)

    def predict(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Method:
    """One way of doing a task. Subclasses set the class attributes and implement `run` and `build`."""

    name: ClassVar[str]  # e.g. 'gan', 'mse', 'baseline'
    Config: ClassVar[type[UseConfig]] = UseConfig
    datasets: ClassVar[tuple[str, ...]]  # the datasets it works on
    family: ClassVar[str | None] = None  # the generative family it needs trained (inpaint), else None
    generative: ClassVar[bool] = True  # False for the baselines
    summary: ClassVar[str] = ""  # one line for the report: what it is

    def run(self, inputs: UseInputs) -> UseOutcome:
        raise NotImplementedError

    def build(self, config: dict[str, Any]) -> Predictor:
        """An untrained predictor of this method from its saved config (load_state_dict follows)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Use:
    """A task: its methods by name, the columns of its report table, and what it is."""

    name: str  # e.g. 'inpaint'
    summary: str
    methods: dict[str, Method]
    columns: tuple[tuple[str, str], ...]  # (metric key, column header), in table order
    refusals: dict[str, str] = dataclasses.field(default_factory=dict)  # family -> why it cannot do this task

    def method(self, name: str) -> Method:
        if name in self.methods:
            return self.methods[name]
        why = self.refusals.get(name)
        if why:
            raise ConfigError(f"{name} cannot do {self.name}: {why}")
        raise ConfigError(f"unknown method '{name}' for {self.name} (known: {', '.join(self.methods)})")


PREDICTOR_FILE = "predictor.pt"


def save_predictor(path: str | Path, task: str, method: str, predictor: Predictor) -> None:
    """Weights + config only (loaded with weights_only: no code runs)."""
    torch.save({"task": task, "method": method, "config": predictor.config,
                "state_dict": {k: v.detach().cpu() for k, v in predictor.state_dict().items()}}, path)
