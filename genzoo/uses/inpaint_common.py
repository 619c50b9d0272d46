"""Masks, measures and the evaluation loop of the inpainting task (genzoo/uses/inpaint.py).

Masks (True = missing), on images (n, 1, H, W):
- `bottom`: rows H/2 .. H-1 (the bottom half);
- `centre`: the centred square of side H/2 (rows and columns 7..20 on 28x28);
- `random50`, `random80`: round(p D) of the D pixels of each image, chosen uniformly without
  replacement from numpy.random.default_rng(seed) (so exactly p of the pixels are missing).

Measures per mask, flat keys `<mask>.<measure>`:
- `accuracy`: the dataset's evaluator on the completed images, against the labels; on a dataset
  without labels (binarized-mnist) against the evaluator's class of the complete true image;
- `psnr`: 10 log10(1 / MSE) on the MISSING pixels of each image (values in [0, 1]), averaged over
  images (MSE floored at 1e-10);
- `diversity`: mean pairwise L2 distance between `completions` completions of the same input,
  averaged over `diversity_inputs` inputs (0 for a deterministic method);
- `cond_nll`: the exact conditional NLL in nats per image of the missing pixels given the observed
  ones, only where a family has one for that mask (autoregressive families, bottom half).
Every completion is checked: an observed pixel that changed raises (it never should: completions
are written as where(missing, method's values, input)).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable

import numpy as np
import torch

from data.prepared import to_model_space
from genzoo.evaluation.networks import predict_logits
from genzoo.uses.base import UseConfig
from models.base import ConfigError

MASKS = ("bottom", "centre", "random50", "random80")
RANDOM_RATES = {"random50": 0.5, "random80": 0.8}


def make_mask(name: str, n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Boolean (n, *shape) mask of image shape (C, H, W): True where the pixel is missing."""
    c, h, w = shape
    out = np.zeros((n, c, h, w), dtype=bool)
    if name == "bottom":
        out[:, :, h // 2:] = True
    elif name == "centre":
        side_h, side_w = h // 2, w // 2
        top, left = (h - side_h) // 2, (w - side_w) // 2
        out[:, :, top:top + side_h, left:left + side_w] = True
    elif name in RANDOM_RATES:
        d = c * h * w
        k = int(round(RANDOM_RATES[name] * d))
        order = np.random.default_rng(seed).random((n, d)).argsort(1)  # (n, D): a random permutation per row
        flat = np.zeros((n, d), dtype=bool)
        np.put_along_axis(flat, order[:, :k], True, axis=1)
        out = flat.reshape(n, c, h, w)
    else:
        raise ConfigError(f"unknown mask '{name}' (known: {', '.join(MASKS)})")
    return out


def with_nan(x: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """The predictor's input: x with NaN where missing."""
    out = np.array(x, dtype=np.float32, copy=True)
    out[missing] = np.nan
    return out


def split_nan(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A predictor's input (NaN where missing) -> (values with 0 there, missing mask), as tensors."""
    x = np.asarray(x, dtype=np.float32)
    missing = np.isnan(x)
    return torch.from_numpy(np.where(missing, 0.0, x).astype(np.float32)), torch.from_numpy(missing)


def check_images(x: np.ndarray, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A predictor's input: (n, *shape) floats in [0, 1], NaN where missing -> (values, missing)."""
    x = np.asarray(x)
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"expected images of shape (n, {', '.join(map(str, shape))}) with NaN where missing, "
                         f"got {x.shape}")
    values, missing = split_nan(x)
    if values.min() < 0 or values.max() > 1:
        raise ValueError("observed pixels must lie in [0, 1]")
    return values, missing


def psnr_missing(completed: np.ndarray, truth: np.ndarray, missing: np.ndarray) -> float:
    """Mean over images of 10 log10(1 / MSE) on each image's missing pixels."""
    m = missing.reshape(len(missing), -1)
    err = ((completed - truth).reshape(len(m), -1) ** 2 * m).sum(1) / np.maximum(m.sum(1), 1)
    return float(np.mean(10 * np.log10(1.0 / np.maximum(err, 1e-10))))


def mean_pairwise_l2(samples: np.ndarray) -> float:
    """samples (n, k, ...): mean over n of the mean L2 distance between the k completions of one input."""
    flat = samples.reshape(samples.shape[0], samples.shape[1], -1)
    pairs = list(itertools.combinations(range(flat.shape[1]), 2))
    if not pairs:
        return 0.0
    return float(np.mean([np.linalg.norm(flat[:, a] - flat[:, b], axis=1).mean() for a, b in pairs]))


@dataclasses.dataclass
class InpaintConfig(UseConfig):
    """Settings every image method shares: what is measured, on how many test images."""

    masks: tuple[str, ...] = MASKS
    eval_examples: int = 500  # test images (a seeded subset) completed once per mask
    diversity_inputs: int = 50  # of them, the first ones completed `completions` times more ...
    completions: int = 4  # ... for the diversity measure
    mask_seed: int = 0  # the random masks and the test subset (the same for every method)
    batch_size: int = 250  # images completed per call

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.masks, str) or not all(isinstance(m, str) for m in self.masks):
            raise ConfigError(f"masks must be a list of mask names, got {self.masks!r}")
        self.masks = tuple(self.masks)
        for m in self.masks:
            if m not in MASKS:
                raise ConfigError(f"unknown mask '{m}' (known: {', '.join(MASKS)})")
        for key in ("eval_examples", "batch_size", "completions"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.diversity_inputs < 0:
            raise ConfigError(f"diversity_inputs must not be negative, got {self.diversity_inputs}")


# complete(values (n, 1, H, W) with 0 where missing, missing (n, 1, H, W) bool) -> completions (n, 1, H, W)
Completer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# cond_nll(values, missing) -> (n,) nats, or None where the family has no exact one for this mask
CondNLL = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | None"]


def completed(complete: Completer, x: torch.Tensor, missing: torch.Tensor, batch: int) -> torch.Tensor:
    """Completions of x in batches, observed pixels checked unchanged; (n, 1, H, W) in [0, 1]."""
    out = []
    for i in range(0, len(x), batch):
        xb, mb = x[i:i + batch], missing[i:i + batch]
        yb = complete(torch.where(mb, torch.zeros_like(xb), xb), mb).detach().cpu().float()
        if not torch.equal(yb[~mb], xb[~mb]):
            raise RuntimeError("a completion changed an observed pixel")
        out.append(yb.clamp(0, 1))
    return torch.cat(out)


def picture(truth: np.ndarray, missing: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """A grid (H', W') in [0, 1]: one column per input; rows: truth, input (missing shown grey 0.5),
    then the completions. samples: (n, k, 1, H, W)."""
    n, k = samples.shape[:2]
    h, w = truth.shape[-2:]
    shown = np.where(missing, 0.5, truth)
    rows = [truth[:, 0], shown[:, 0]] + [samples[:, j, 0] for j in range(k)]  # each (n, H, W)
    canvas = np.ones(((h + 1) * len(rows) + 1, (w + 1) * n + 1), dtype=np.float32)
    for r, row in enumerate(rows):
        for c in range(n):
            canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = row[c]
    return canvas


def test_rows(n_all: int, n: int, seed: int) -> np.ndarray:
    """The test rows measured: n drawn without replacement with `seed`, in file order (all when n >= n_all)."""
    if n >= n_all:
        return np.arange(n_all)
    return np.sort(np.random.default_rng(seed).choice(n_all, size=n, replace=False))


def evaluate_images(complete: Completer, data, evaluator, config: InpaintConfig,
                    cond_nll: CondNLL | None = None, log: Callable[[str], None] = print,
                    progress: Callable[[dict[str, float]], None] = lambda m: None
                    ) -> tuple[dict[str, float], dict[str, np.ndarray], list[str]]:
    """Every mask of config.masks on a seeded subset of the test split: (metrics, pictures, notes)."""
    rows = test_rows(len(data.arrays["test"]), config.eval_examples, config.mask_seed)
    truth = to_model_space(data.arrays["test"][rows], data.manifest)  # (n, 1, H, W) in [0, 1]
    shape = tuple(truth.shape[1:])
    labelled = "test_labels" in data.arrays
    if evaluator is not None:
        target = data.arrays["test_labels"][rows] if labelled else predict_logits(evaluator, truth).argmax(1).numpy()
    metrics, pictures, notes = {}, {}, []
    for i, name in enumerate(config.masks):
        missing = torch.from_numpy(make_mask(name, len(truth), shape, config.mask_seed + MASKS.index(name)))
        filled = completed(complete, truth, missing, config.batch_size)
        m = missing.numpy()
        metrics[f"{name}.psnr"] = psnr_missing(filled.numpy(), truth.numpy(), m)
        if evaluator is not None:
            metrics[f"{name}.accuracy"] = float((predict_logits(evaluator, filled).argmax(1).numpy() == target).mean())
        d = min(config.diversity_inputs, len(truth))
        if d:
            k = config.completions
            rep_x, rep_m = truth[:d].repeat_interleave(k, 0), missing[:d].repeat_interleave(k, 0)  # (d k, 1, H, W)
            samples = completed(complete, rep_x, rep_m, config.batch_size).view(d, k, *shape).numpy()
            metrics[f"{name}.diversity"] = mean_pairwise_l2(samples)
            shown = min(d, 10)
            pictures[name] = picture(truth[:shown].numpy(), m[:shown], samples[:shown, :min(k, 3)])
        if cond_nll is not None:
            nll = [cond_nll(truth[j:j + config.batch_size], missing[j:j + config.batch_size])
                   for j in range(0, len(truth), config.batch_size)]
            if all(v is not None for v in nll):
                metrics[f"{name}.cond_nll"] = float(torch.cat(nll).double().mean())
        log(f"inpaint {name}: " + ", ".join(f"{k.split('.', 1)[1]}={v:.4g}" for k, v in metrics.items()
                                            if k.startswith(name + ".")))
        progress({k: v for k, v in metrics.items() if k.startswith(name + ".")} | {"mask": float(i)})
    if evaluator is not None and not labelled:
        notes.append(f"{data.name} has no labels: accuracy is the agreement of the evaluator's class of each "
                     "completed image with its class of the complete true image")
    notes.append(f"measured on {len(truth)} test images (seeded subset, seed {config.mask_seed}); psnr on the missing "
                 f"pixels only; diversity: mean pairwise L2 between {config.completions} completions of each of "
                 f"the first {min(config.diversity_inputs, len(truth))} inputs")
    return metrics, pictures, notes
