"""Masked building blocks shared by the autoregressive families, and their sampler.

- `MaskedLinear`: a linear layer whose weight is multiplied by a registered 0/1
  mask buffer (MADE, Germain et al. 2015, arXiv:1502.03509). It may hold a stack
  of masks, one per connectivity, for order-agnostic training and ensembles.
- `MaskedConv2d` with `vertical_mask` / `horizontal_mask` of type 'A' (first
  layer: excludes the current pixel) or 'B' (later layers) for the two stacks of
  the Gated PixelCNN (van den Oord et al. 2016, arXiv:1606.05328).
- `AutoregressiveSampler`: fills the dimensions one at a time in a fixed order,
  one network pass per dimension, from uniforms drawn beforehand (the 'naive'
  sampler; MADE and PixelCNN also have a 'cached' one that updates only the
  activations each new value changes and draws the same samples).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

MASK_TYPES = ("A", "B")
SAMPLERS = ("cached", "naive")  # incremental generation, or one full network pass per dimension


class MaskedLinear(nn.Linear):
    """y = x (W * mask[index])^T + b, with `masks` of shape (out, in) or (M, out, in)."""

    def __init__(self, in_features: int, out_features: int, masks: torch.Tensor):
        super().__init__(in_features, out_features)
        masks = masks if masks.dim() == 3 else masks.unsqueeze(0)  # (M, out, in)
        if tuple(masks.shape[1:]) != (out_features, in_features):
            raise ValueError(f"mask shape {tuple(masks.shape)} does not fit a {in_features}->{out_features} layer")
        # In the weight's dtype: a bool mask costs a conversion per forward and backward (MADE's train
        # step was 0.86x a plain-torch MADE's, benchmarks/peers.py). Older bool checkpoints load as is.
        self.register_buffer("mask", masks.to(self.weight.dtype))

    @property
    def num_masks(self) -> int:
        return self.mask.shape[0]

    def forward(self, x: torch.Tensor, index: int = 0) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask[index], self.bias)  # (n, out)


def vertical_mask(kernel: int, mask_type: str) -> torch.Tensor:
    """(k, k) mask of the vertical stack: the rows above the centre; type 'B' also the centre row.

    With type 'A' in the first layer the vertical features at row i depend on
    input rows < i only (at every column of the kernel's width, so nothing up
    and to the right is missed); type 'B' keeps it that way in later layers.
    """
    _check(kernel, mask_type)
    mask = torch.zeros(kernel, kernel, dtype=torch.bool)
    mask[: kernel // 2 + (mask_type == "B")] = True
    return mask


def horizontal_mask(kernel: int, mask_type: str) -> torch.Tensor:
    """(1, k) mask of the horizontal stack: the pixels left of the centre; type 'B' also the centre."""
    _check(kernel, mask_type)
    mask = torch.zeros(1, kernel, dtype=torch.bool)
    mask[0, : kernel // 2 + (mask_type == "B")] = True
    return mask


def _check(kernel: int, mask_type: str) -> None:
    if kernel < 3 or kernel % 2 == 0:
        raise ValueError(f"masked kernels must be odd and at least 3, got {kernel}")
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask type must be one of {MASK_TYPES}, got {mask_type!r}")


class MaskedConv2d(nn.Conv2d):
    """Same-size convolution whose (kh, kw) kernel is multiplied by a registered mask buffer.

    The forward pass convolves with the smallest window that holds the mask's nonzero taps (a
    vertical 'B' 3x3 mask keeps 2 rows of 3, a horizontal 'B' 1x3 one 2 columns of 3) over an input
    padded to match, so the masked-out taps cost nothing: the same output as the full kernel with
    same-size padding, to float rounding, and the same parameter shape (checkpoints load as before).
    """

    def __init__(self, in_channels: int, out_channels: int, mask: torch.Tensor):
        kh, kw = mask.shape
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2))
        self.register_buffer("mask", mask.to(self.weight.dtype)[None, None])  # (1, 1, kh, kw), as MaskedLinear
        rows, cols = mask.nonzero(as_tuple=True)
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
        self.window = (slice(r0, r1 + 1), slice(c0, c1 + 1))
        ph, pw = kh // 2, kw // 2
        self.window_padding = (pw - c0, c1 - pw, ph - r0, r1 - ph)  # F.pad's (left, right, top, bottom); < 0 crops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight[(..., *self.window)] * self.mask[(..., *self.window)]  # (out, in, rows, cols): nonzero taps
        return F.conv2d(F.pad(x, self.window_padding), w, self.bias)  # (n, out, H, W)


def categorical_from_uniform(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: logits (n, K), u (n,) uniform in [0, 1) -> category indices (n,)."""
    cdf = torch.softmax(logits.float(), dim=-1).cumsum(-1)  # (n, K)
    return (cdf < u.unsqueeze(-1)).sum(-1).clamp(max=logits.shape[-1] - 1)  # (n,)


def bernoulli_thresholds(u: torch.Tensor) -> torch.Tensor:
    """The inverse-CDF draw of `categorical_from_uniform` on logits [0, l], in logit space: x = 1 exactly
    when l > -logit(u) (the CDF's first step 1 / (1 + e^l) is below u). u (...) in [0, 1) -> thresholds (...),
    +inf where u = 0; one comparison per draw instead of a softmax."""
    return -torch.logit(u)


@dataclasses.dataclass
class AutoregressiveSampler:
    """Fills flattened dimensions one at a time in `order`: `steps` = len(order) network passes.

    `logits_fn(x)` maps the current (n, D) values to (n, D, K) logits; dimension
    `order[t]` then gets `values[k]` with k drawn from its categorical by inverse
    CDF of `u[:, order[t]]`. Dimensions not yet drawn hold 0; an autoregressive
    network never looks at them.
    """

    order: list[int]

    @property
    def steps(self) -> int:
        return len(self.order)

    def __call__(
        self, logits_fn: Callable[[torch.Tensor], torch.Tensor], u: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        x = torch.zeros(u.shape, device=u.device, dtype=values.dtype)  # (n, D)
        for d in self.order:
            logits = logits_fn(x)[:, d]  # (n, K)
            x[:, d] = values[categorical_from_uniform(logits, u[:, d])]
        return x
