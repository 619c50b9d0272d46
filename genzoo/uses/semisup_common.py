"""What the semi-supervised methods share: the labelled subset, batches of it, the served predictors,
and the test error."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from data.errors import DataError
from genzoo.uses.base import Predictor, UseConfig
from genzoo.uses.semisup_nets import CLASSES, IMAGE_DIM, M1, M2, Classifier
from models.base import ConfigError


def labelled_subset(train_labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Row indices into the TRAINING split: exactly `per_class` rows of each of the 10 classes, drawn
    without replacement with `seed` (sorted). Only the training labels are read, so the subset cannot
    overlap the test split."""
    labels = np.asarray(train_labels)
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(CLASSES):
        rows = np.flatnonzero(labels == c)
        if len(rows) < per_class:
            raise ConfigError(f"the training split has {len(rows)} images of class {c}; labels_per_class asks for {per_class}")
        picks.append(rng.choice(rows, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


@dataclasses.dataclass
class Split:
    """The training split cut in two, as tensors of flattened images in [0, 1]."""

    x_lab: torch.Tensor  # (n_lab, 784)
    y_lab: torch.Tensor  # (n_lab,) int64
    x_unl: torch.Tensor  # (n_unl, 784): the rest of the training split, labels dropped
    rows: np.ndarray  # the labelled rows' indices in the training split


def labelled_split(data: Any, per_class: int, seed: int, device: torch.device | str = "cpu") -> Split:
    rows = labelled_subset(data.arrays["train_labels"], per_class, seed)
    x = data.tensor("train").reshape(-1, IMAGE_DIM)
    rest = np.setdiff1d(np.arange(len(x)), rows)
    y = torch.from_numpy(np.asarray(data.arrays["train_labels"])[rows].astype(np.int64))
    return Split(x[rows].to(device), y.to(device), x[rest].to(device), rows)


def begin_run(method: Any, inputs: Any) -> tuple[Any, torch.Generator, Split, Predictor]:
    """What every method's run begins with: torch seeded, a generator of the same seed, the labelled /
    unlabelled split on the device, and a fresh predictor in training mode."""
    cfg = inputs.config
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    split = labelled_split(inputs.data, cfg.labels_per_class, cfg.seed, inputs.device)
    predictor = method.build(cfg.predictor_config()).to(inputs.device).train()
    return cfg, gen, split, predictor


def label_batches(n_lab: int, batch: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """(steps, batch) indices into the labelled set: concatenated random permutations of it, so the small
    labelled set is upsampled to the unlabelled batch size (every labelled image once per n_lab draws)."""
    need = steps * batch
    perms = [torch.randperm(n_lab, generator=generator) for _ in range(-(-need // n_lab))]
    return torch.cat(perms)[:need].view(steps, batch)


def as_images(x: np.ndarray) -> torch.Tensor:
    """A user's images -> (n, 784) floats in [0, 1]: (n, 1, 28, 28) or (n, 784), uint8 levels 0..255 or
    floats in [0, 1]."""
    x = np.asarray(x)
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != IMAGE_DIM:
        raise DataError(f"images have shape {x.shape}; expected (n, 1, 28, 28) or (n, {IMAGE_DIM})")
    if x.dtype.kind in "biu":
        if x.min(initial=0) < 0 or x.max(initial=0) > 255:
            raise DataError("integer images must hold levels 0..255")
        return torch.from_numpy(x.reshape(len(x), IMAGE_DIM).astype(np.float32) / 255.0)
    if x.dtype.kind != "f":
        raise DataError(f"images hold {x.dtype} values; expected uint8 levels or floats in [0, 1]")
    if not np.isfinite(x).all() or x.min(initial=0) < 0 or x.max(initial=0) > 1:
        raise DataError("float images must be finite and within [0, 1]")
    return torch.from_numpy(x.reshape(len(x), IMAGE_DIM).astype(np.float32))


class ClassifierPredictor(Predictor):
    """The GAN's discriminator (its K real-class logits) or the baseline: the noisy MLP classifier."""

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.net = Classifier(tuple(config["hidden"]), config["input_noise"], config["hidden_noise"])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """images (n, 1, 28, 28) or (n, 784), uint8 levels 0..255 or floats in [0, 1] -> digit labels (n,) int64."""
        return predict_labels(self, as_images(x))


class LatentClassifierPredictor(Predictor):
    """M1 + M2: q(y | z1) on the mean of M1's q(z1 | x). Holds both VAEs (their decoders draw the samples)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.m1 = M1(tuple(config["m1_hidden"]), config["m1_latent"])
        self.m2 = M2(config["m1_latent"], config["m2_hidden"], config["m2_latent"])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.m2.classifier(self.m1.encode(x)[0])

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """images (n, 1, 28, 28) or (n, 784), uint8 levels 0..255 or floats in [0, 1] -> digit labels (n,) int64."""
        return predict_labels(self, as_images(x))


@torch.no_grad()
def predict_labels(predictor: Predictor, x: torch.Tensor, chunk: int = 1000) -> np.ndarray:
    was_training = predictor.training
    predictor.eval()
    device = next(predictor.parameters()).device
    out = [predictor.logits(x[i:i + chunk].to(device)).argmax(1).cpu() for i in range(0, len(x), chunk)]
    predictor.train(was_training)
    return torch.cat(out).numpy().astype(np.int64)


def error_percent(predictor: Predictor, data: Any, split: str, limit: int | None = None) -> float:
    """Classification error (%) on the first `limit` (all if None) images of `split`."""
    x = data.tensor(split, limit).reshape(-1, IMAGE_DIM)
    y = np.asarray(data.arrays[f"{split}_labels"][:limit])
    return float(100.0 * np.mean(predict_labels(predictor, x) != y))


def check_finite(**losses: float) -> None:
    for name, value in losses.items():
        if not np.isfinite(value):
            raise FloatingPointError(f"the {name} loss became {value}: training diverged (lower the learning rate)")


@dataclasses.dataclass
class LabelsConfig(UseConfig):
    """Settings every semi-supervised method has."""

    labels_per_class: int = 10  # the labelled subset: this many training images of each class
    batch_size: int = 100
    val_rows: int = 2000  # validation images scored after each epoch (progress only; nothing is selected on them)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("labels_per_class", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}' must be at least 1, got {getattr(self, key)}")
