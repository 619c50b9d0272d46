"""Typed run configuration: `params.yaml` sections map one-to-one onto these classes.

- `prepare.<dataset>`  -> keyword parameters of data.prepare (checked there)
- `evaluators.<dataset>` -> the evaluator stage (genzoo/evaluator_stage.py, checked there)
- `train.<preset>`     -> TrainConfig (budgets: smoke, quick, full)
- `models.<family>`    -> the family's Config class (models/<family>.py)
- `evaluate`           -> EvalConfig
Unknown keys are rejected with a message that names them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from models.base import ConfigError, _coerce, reject_unknown_keys

PRESETS = ("smoke", "quick", "full")
FID_NETWORKS = ("evaluator", "inception")  # evaluate.fid_network: the dataset's own CNN (default), or also Inception-v3


@dataclasses.dataclass
class _Strict:
    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, _coerce(field.name, getattr(self, field.name), field.type))

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "") -> "_Strict":
        reject_unknown_keys(cls, values, where or None)
        return cls(**(values or {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TrainConfig(_Strict):
    epochs: int = 5
    batch_size: int = 128  # global batch, split over workers
    steps_per_epoch: int = 0  # 0: one full pass over the training split
    num_workers: int = 1  # Ray Train workers (data-parallel)
    use_gpu: str = "auto"  # 'auto' (when the cluster has GPUs), 'true' or 'false'
    cpus_per_worker: float = 1.0
    max_failures: int = 2  # worker failures survived by resuming from the last checkpoint
    seed: int = 0
    val_examples: int = 500  # validation likelihood per epoch on this many examples (0: none)

    def __post_init__(self) -> None:
        if isinstance(self.use_gpu, bool):
            self.use_gpu = str(self.use_gpu).lower()
        super().__post_init__()
        for key in ("epochs", "batch_size", "num_workers"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key} must be positive, got {getattr(self, key)}")
        if self.steps_per_epoch < 0 or self.val_examples < 0 or self.max_failures < 0:
            raise ConfigError("train.steps_per_epoch, val_examples and max_failures must not be negative")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"train.cpus_per_worker must be positive, got {self.cpus_per_worker}")
        if self.use_gpu not in ("auto", "true", "false"):
            raise ConfigError(f"train.use_gpu must be auto, true or false, got {self.use_gpu!r}")
        if self.batch_size < self.num_workers:
            raise ConfigError(f"train.batch_size {self.batch_size} is smaller than num_workers {self.num_workers}")


@dataclasses.dataclass
class EvalConfig(_Strict):
    n_samples: int = 2500  # samples of 2-D data drawn for the mode statistics and the scatter
    n_image_samples: int = 1000  # samples of image data for FID & co. (10,000 in the papers)
    n_mode_samples: int = 26000  # samples drawn on Stacked MNIST to count its 1,000 modes (PacGAN/VEEGAN)
    sample_budget_seconds: float = 120.0  # stop drawing image samples after this long (min. 64): O(pixels) samplers
    likelihood_examples: int = 2000  # test examples (a seeded random subset) for the likelihood (0: whole test split)
    parzen_examples: int = 1000  # validation rows to choose sigma, test rows to score
    real_examples: int = 2000  # test images whose features stand for the data in FID & co.
    seed: int = 1234
    fid_network: str = "evaluator"  # 'inception': also an Inception-v3 FID (genzoo/inception.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fid_network not in FID_NETWORKS:
            raise ConfigError(f"evaluate.fid_network must be {' or '.join(FID_NETWORKS)}, got {self.fid_network!r}")
        for key in ("n_samples", "n_image_samples", "n_mode_samples", "parzen_examples", "real_examples",
                    "sample_budget_seconds"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"evaluate.{key} must be positive, got {getattr(self, key)}")
        if self.likelihood_examples < 0:
            raise ConfigError("evaluate.likelihood_examples must not be negative")


@dataclasses.dataclass
class Params:
    """The whole of params.yaml, checked."""

    datasets: list[str]
    prepare: dict[str, dict]
    evaluators: dict[str, dict]  # checked by genzoo.evaluator_stage
    train: dict[str, TrainConfig]
    models: dict[str, dict]
    evaluate: EvalConfig

    def train_config(self, preset: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
        if preset not in self.train:
            raise ConfigError(f"unknown preset '{preset}' (known: {', '.join(self.train)})")
        return TrainConfig.from_dict({**self.train[preset].to_dict(), **(overrides or {})}, f"train.{preset}")


def load_params(path: str | Path) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run genzoo from the project folder (where dvc.yaml and params.yaml are) or set GENZOO_PROJECT_DIR")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({exc})") from None
    known = {"datasets", "prepare", "evaluators", "train", "models", "evaluate"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown section '{unknown[0]}' in {path} (known: {', '.join(sorted(known))})")
    from models import FAMILIES  # the family registry decides which model sections exist

    models = raw.get("models") or {}
    for family in models:
        if family not in FAMILIES:
            raise ConfigError(f"unknown family '{family}' in the models section of {path}")
    return Params(
        datasets=list(raw.get("datasets") or []),
        prepare=dict(raw.get("prepare") or {}),
        evaluators=dict(raw.get("evaluators") or {}),
        train={k: TrainConfig.from_dict(v, f"train.{k}") for k, v in (raw.get("train") or {}).items()},
        models={k: dict(v or {}) for k, v in models.items()},
        evaluate=EvalConfig.from_dict(raw.get("evaluate") or {}, "evaluate"),
    )
