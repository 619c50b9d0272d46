"""A small CNN classifier whose penultimate layer supplies the features for genzoo.evaluation.quality.

FID, KID and the k-NN measures compare feature vectors; on MNIST-like data an
Inception network trained on ImageNet is the wrong ruler, so (as is common when
evaluating generative models on MNIST-scale data) genzoo trains a small
classifier on the data set itself and uses its penultimate activations.

Architecture (H, W >= 4; single-channel images in [0, 1], shape (n, 1, H, W)):
    conv3x3(C->w) BN ReLU, maxpool2         # (w, H/2, W/2)
    conv3x3(w->2w) BN ReLU, maxpool2        # (2w, H/4, W/4)
    flatten, linear -> feature_dim, ReLU    # the features
    dropout, linear -> num_classes          # logits
With w = 32 and feature_dim = 128 it has about 0.42 M parameters on 28x28.

Stacked MNIST (3 digits as channels) is judged by an MNIST classifier applied to each
channel (`PerChannelEvaluator`): its features are the three channels' features side by side.

NOTE: features from this network are only comparable between runs that use the
same trained evaluator (same data, seed and config); published FIDs use other
networks, so genzoo's numbers are relative, not absolute.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.base import ConfigError, reject_unknown_keys

EVALUATOR_FILE = "evaluator.pt"  # a trained evaluator's folder (a DVC output): weights ...
METRICS_FILE = "metrics.json"  # ... and its test accuracy, source and data hash


@dataclasses.dataclass
class EvaluatorConfig:
    image_shape: tuple[int, int, int]  # (C, H, W); genzoo's image sets are (1, 8, 8) and (1, 28, 28)
    num_classes: int
    width: int = 32  # channels of the first conv layer (the second has twice as many)
    feature_dim: int = 128
    dropout: float = 0.25

    def __post_init__(self) -> None:
        shape = self.image_shape
        if (not isinstance(shape, (tuple, list)) or len(shape) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)):
            raise ConfigError(f"image_shape must be three integers (C, H, W), got {shape!r}")
        self.image_shape = tuple(shape)
        c, h, w = self.image_shape
        if c < 1 or h < 4 or w < 4:
            raise ConfigError(f"image_shape needs C >= 1 and H, W >= 4 (two 2x poolings), got {self.image_shape}")
        for key in ("num_classes", "width", "feature_dim"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if key == "num_classes" else 1):
                raise ConfigError(f"{key} must be an integer >= {2 if key == 'num_classes' else 1}, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "EvaluatorConfig":
        reject_unknown_keys(cls, values)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


class Evaluator(nn.Module):
    """CNN classifier: forward(x) -> logits (n, num_classes); features(x) -> (n, feature_dim)."""

    def __init__(self, config: EvaluatorConfig):
        super().__init__()
        self.config = config
        c, h, w = config.image_shape
        width = config.width
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),  # (w, H/2, W/2)
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),  # (2w, H/4, W/4)
            nn.Flatten(),  # (2w * H/4 * W/4,)
            nn.Linear(2 * width * (h // 4) * (w // 4), config.feature_dim), nn.ReLU(),  # (feature_dim,)
        )
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.feature_dim, config.num_classes))

    def _check(self, x: torch.Tensor) -> None:
        expected = self.config.image_shape
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"the evaluator takes a torch.Tensor of images, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"the evaluator was built for images of shape (n, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (n, feature_dim), the input of the metrics in genzoo.evaluation.quality."""
        self._check(x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (n, num_classes)


class PerChannelEvaluator(nn.Module):
    """A single-channel classifier applied to each of `channels` channels (Stacked MNIST: an
    MNIST digit classifier labels the three digits of a (3, 28, 28) image).

    forward(x) -> logits (n, channels, num_classes); predict_digits(x) -> (n, channels) labels;
    features(x) -> the per-channel features concatenated, channel 0 first (n, channels * feature_dim).
    """

    def __init__(self, digit: Evaluator, channels: int):
        super().__init__()
        if digit.config.image_shape[0] != 1:
            raise ValueError("the per-channel evaluator needs a single-channel classifier, "
                             f"got image shape {digit.config.image_shape}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        self.digit, self.channels = digit, channels
        _, h, w = digit.config.image_shape
        self.image_shape = (channels, h, w)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"the evaluator takes a torch.Tensor of images, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"the per-channel evaluator was built for images of shape "
                             f"(n, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}")
        return x.reshape(-1, 1, *self.image_shape[1:])  # (n * channels, 1, H, W), channel-major per image

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.digit.features(self._split(x)).reshape(len(x), -1)  # (n, channels * feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.digit(self._split(x)).reshape(len(x), self.channels, -1)  # (n, channels, num_classes)

    @torch.no_grad()
    def predict_digits(self, x: Any, batch_size: int = 1000) -> np.ndarray:
        """Arg-max class of each channel of images x (n, channels, H, W) in [0, 1]: (n, channels) int64."""
        return predict_logits(self, x, batch_size).argmax(-1).numpy()


# ----------------------------------------------------------------------------- pure functions


def _images(name: str, x: Any) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.dim() != 4:
        raise ValueError(f"{name} must be images of shape (n, C, H, W), got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return x


def _labels(name: str, y: Any, n: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(y))
    if y.dim() != 1 or len(y) != n:
        raise ValueError(f"{name} must be a 1-D array of {n} labels, got shape {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"{name} must hold labels >= 0, got {int(y.min())}")
    return y.long()


@torch.no_grad()
def predict_logits(model: Evaluator | PerChannelEvaluator, x: Any, batch_size: int = 1000) -> torch.Tensor:
    """Logits of images x: (n, num_classes), or (n, channels, num_classes) for a PerChannelEvaluator."""
    model.eval()
    x = _images("x", x)
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def extract_features(model: Evaluator | PerChannelEvaluator, x: Any, batch_size: int = 1000) -> np.ndarray:
    """Penultimate features of images x (n, C, H, W) in [0, 1], as a float64 (n, feature_dim) array."""
    model.eval()
    x = _images("x", x)
    return torch.cat([model.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).double().numpy()


def accuracy(model: Evaluator, x: Any, y: Any) -> float:
    """Fraction of images x whose arg-max class equals the label y (eval mode, no gradients)."""
    logits = predict_logits(model, x)
    y = _labels("y", y, len(logits))
    return float((logits.argmax(1) == y).float().mean())


def train_evaluator(train_x: Any, train_y: Any, val_x: Any, val_y: Any, epochs: int = 3, batch_size: int = 128,
                    seed: int = 0, log: Callable[[str], None] = print, *, num_classes: int | None = None,
                    lr: float = 1e-3, config: dict[str, Any] | None = None) -> tuple[Evaluator, float]:
    """Train an Evaluator with Adam (one-cycle schedule peaking at `lr`) and cross-entropy.

    Returns (model in eval mode, validation accuracy after the last epoch).

    The image shape is that of train_x; num_classes defaults to the largest label
    + 1. `config` holds further EvaluatorConfig keys (width, feature_dim, dropout).
    Deterministic for a given seed and thread count.
    """
    train_x, val_x = _images("train_x", train_x), _images("val_x", val_x)
    train_y, val_y = _labels("train_y", train_y, len(train_x)), _labels("val_y", val_y, len(val_x))
    if tuple(val_x.shape[1:]) != tuple(train_x.shape[1:]):
        raise ValueError(f"val_x has images of shape {tuple(val_x.shape[1:])}, train_x {tuple(train_x.shape[1:])}")
    for key, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if num_classes is None:
        num_classes = int(max(train_y.max(), val_y.max())) + 1
    elif int(max(train_y.max(), val_y.max())) >= num_classes:
        raise ValueError(f"labels go up to {int(max(train_y.max(), val_y.max()))} but num_classes is {num_classes}")
    cfg = EvaluatorConfig.from_dict({**(config or {}), "image_shape": tuple(train_x.shape[1:]), "num_classes": num_classes})

    torch.manual_seed(seed)
    model = Evaluator(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(train_x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)  # warm-up, then cosine decay
    gen = torch.Generator().manual_seed(seed)
    val_acc = float("nan")
    for epoch in range(epochs):
        start, total, seen = time.perf_counter(), 0.0, 0
        model.train()
        for idx in torch.randperm(len(train_x), generator=gen).split(batch_size):
            loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
            if not torch.isfinite(loss):
                raise RuntimeError(f"evaluator loss became {loss.item()} in epoch {epoch + 1}; stopping")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        val_acc = accuracy(model, val_x, val_y)
        log(f"evaluator epoch {epoch + 1}/{epochs}: train loss {total / seen:.4f}, "
            f"val accuracy {val_acc:.4f} ({time.perf_counter() - start:.1f} s)")
    model.eval()
    return model, val_acc


def load(folder: str | Path) -> tuple[Evaluator | PerChannelEvaluator, dict]:
    """The trained network (eval mode) and its metrics.json; a `per_channel: C` evaluator comes
    wrapped in a PerChannelEvaluator for (n, C, H, W) images."""
    folder = Path(folder)
    if not (folder / EVALUATOR_FILE).is_file():
        raise FileNotFoundError(f"no trained evaluator in {folder}; run `dvc repro evaluator@<dataset>`")
    state = torch.load(folder / EVALUATOR_FILE, map_location="cpu", weights_only=True)
    cfg = EvaluatorConfig.from_dict({**state["config"], "image_shape": tuple(state["config"]["image_shape"])})
    model = Evaluator(cfg)
    model.load_state_dict(state["state_dict"])
    model.eval()
    meta = json.loads((folder / METRICS_FILE).read_text())
    if meta.get("per_channel"):
        model = PerChannelEvaluator(model, int(meta["per_channel"])).eval()
    return model, meta


def as_images(x: np.ndarray) -> torch.Tensor:
    """Model samples or data rows (n, C, H, W) in [0, 1] as the evaluator's input."""
    return torch.as_tensor(np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0))
