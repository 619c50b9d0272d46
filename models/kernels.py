"""Kernel two-sample statistics: the maximum mean discrepancy (MMD).

Gretton et al. 2012, "A Kernel Two-Sample Test" (JMLR 13, arXiv:0805.2368),
with a mixture (sum) of Gaussian kernels as in Li, Swersky & Zemel 2015
(arXiv:1502.02761):

    k(x, y) = sum_s exp(-||x - y||^2 / (2 s^2)),   s in `bandwidths` (length-scales)

- biased (V-statistic, Gretton et al. eq. 5):
      MMD_b^2 = mean K_xx + mean K_yy - 2 mean K_xy      (all pairs, diagonals included; >= 0)
- unbiased (U-statistic, Gretton et al. eq. 3):
      MMD_u^2 = mean_{i != j} K_xx + mean_{i != j} K_yy - 2 mean K_xy   (unbiased, can be < 0)

Inputs of any shape (n, ...) are flattened to (n, D). Plain torch, differentiable,
device-agnostic, so families (GMMN) and metric code can share it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _check_bandwidths(bandwidths: Sequence[float]) -> tuple[float, ...]:
    bws = tuple(float(s) for s in bandwidths)
    if not bws or any(not math.isfinite(s) or s <= 0 for s in bws):
        raise ValueError(f"bandwidths must be a non-empty list of positive numbers, got {bandwidths!r}")
    return bws


def pairwise_sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x_i - y_j||^2 for x (n, D), y (m, D) -> (n, m), clamped at 0 against round-off."""
    xx = (x * x).sum(-1)  # (n,)
    yy = (y * y).sum(-1)  # (m,)
    return (xx[:, None] + yy[None, :] - 2.0 * x @ y.T).clamp_min(0.0)  # (n, m)


class _MixtureKernel(torch.autograd.Function):
    """sum_s exp(-gamma_s d2) of x (n, D) against y (m, D), with a backward pass written out.

    Autograd through `exp(-d2[None] * gammas).sum(0)` keeps an (S, n, m) tensor per kernel matrix and runs
    matmuls for both operands of `x @ y.T` (two of them for x against x). Here the forward pass adds one
    (n, m) exponential at a time into the kernel and into its derivative in d2, and the backward pass uses
    d d2_ij / d x_i = 2 (x_i - y_j): one matmul per input that needs a gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, gammas: tuple[float, ...], same: bool) -> torch.Tensor:
        d2 = pairwise_sq_dists(x, y)  # (n, m)
        if same:  # exact zeros on the diagonal (round-off there would matter for small bandwidths)
            d2.fill_diagonal_(0.0)
        wants_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        k = torch.zeros_like(d2)  # (n, m)
        dk = torch.zeros_like(d2) if wants_grad else None  # d k / d d2
        for gamma in gammas:
            e = torch.exp(d2 * -gamma)  # (n, m)
            k += e
            if dk is not None:
                dk.add_(e, alpha=-gamma)
        ctx.same = same
        if dk is not None:
            ctx.save_for_backward(x, y, dk)
        return k

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_k: torch.Tensor):
        x, y, dk = ctx.saved_tensors
        g = (grad_k * dk).to(x.dtype)  # dL / d d2, (n, m); under autocast the forward's matmul may have been bf16
        if ctx.same:  # d2_ij = |x_i|^2 + |x_j|^2 - 2 x_i.x_j: x enters both sides
            gs = g + g.T
            return 2.0 * (gs.sum(1, keepdim=True) * x - gs @ x), None, None, None
        grad_x = 2.0 * (g.sum(1, keepdim=True) * x - g @ y) if ctx.needs_input_grad[0] else None
        grad_y = 2.0 * (g.sum(0)[:, None] * y - g.T @ x) if ctx.needs_input_grad[1] else None
        return grad_x, grad_y, None, None


def mixture_kernel(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float]) -> torch.Tensor:
    """Sum of Gaussian kernels exp(-d^2 / (2 s^2)) over the bandwidths s: (n, ...), (m, ...) -> (n, m)."""
    gammas = tuple(0.5 / s**2 for s in _check_bandwidths(bandwidths))
    return _MixtureKernel.apply(x.flatten(1), y.flatten(1), gammas, y is x)


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float], unbiased: bool = False) -> torch.Tensor:
    """Squared MMD between samples x (n, ...) and y (m, ...) under the mixture kernel (a 0-dim tensor)."""
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"samples must have the same event shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    k_xx = mixture_kernel(x, x, bandwidths)  # (n, n)
    k_yy = mixture_kernel(y, y, bandwidths)  # (m, m)
    k_xy = mixture_kernel(x, y, bandwidths)  # (n, m)
    if not unbiased:
        return k_xx.mean() + k_yy.mean() - 2.0 * k_xy.mean()
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples on each side, got {n} and {m}")
    off_xx = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    off_yy = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return off_xx + off_yy - 2.0 * k_xy.mean()


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float], eps: float = 1e-12) -> torch.Tensor:
    """sqrt of the biased MMD^2 (the GMMN training loss of Li et al. 2015); eps keeps the gradient finite at 0."""
    return torch.sqrt(mmd2(x, y, bandwidths).clamp_min(0.0) + eps)
