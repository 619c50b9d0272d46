"""Evaluation measures (pure numpy/torch): mode coverage (2-D mixtures, Stacked MNIST), likelihood summaries."""

from __future__ import annotations

import math

import numpy as np


def mode_histogram_statistics(mode_ids: np.ndarray, num_modes: int) -> dict[str, float]:
    """Modes captured and KL(histogram of mode_ids || uniform over num_modes), in nats.

    A mode is captured when at least one id names it. KL = sum_k p_k log(p_k K): 0 for
    a perfectly even spread, log K when everything sits in one mode (and log K for no
    ids at all, the worst case).
    """
    if isinstance(num_modes, bool) or not isinstance(num_modes, (int, np.integer)) or num_modes < 1:
        raise ValueError(f"num_modes must be a positive integer, got {num_modes!r}")
    ids = np.asarray(mode_ids)
    if ids.ndim != 1 or (len(ids) and ids.dtype.kind not in "iu"):
        raise ValueError(f"mode_ids must be a 1-D array of integers, got shape {ids.shape} and dtype {ids.dtype}")
    if len(ids) and (ids.min() < 0 or ids.max() >= num_modes):
        raise ValueError(f"mode_ids must lie in 0..{num_modes - 1}, got values in [{ids.min()}, {ids.max()}]")
    k = int(num_modes)
    counts = np.bincount(ids.astype(np.int64), minlength=k).astype(np.float64)
    if counts.sum() > 0:
        p = counts / counts.sum()
        nz = p > 0
        kl = float(np.sum(p[nz] * np.log(p[nz] * k)))
    else:
        kl = math.log(k)
    return {"modes_captured": int((counts > 0).sum()), "modes_total": k, "kl_to_uniform": kl}


def mode_statistics(samples: np.ndarray, centers: np.ndarray, std: float) -> dict[str, float]:
    """Mode coverage as in VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018).

    A sample is high quality when it lies within 3 std of its nearest mode; a mode
    is captured when it is the nearest mode of at least one high-quality sample.
    KL is KL(histogram of high-quality samples over modes || uniform), in nats
    (log K when everything sits in one mode, 0 for a perfectly even spread).
    """
    samples = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)
    if samples.shape[1] != centers.shape[1]:
        raise ValueError(f"samples have {samples.shape[1]} dimensions, the modes {centers.shape[1]}")
    d = np.linalg.norm(samples[:, None, :] - centers[None, :, :], axis=-1)  # (n, K)
    nearest, dist = d.argmin(1), d.min(1)
    good = np.isfinite(dist) & (dist <= 3 * std)
    out = mode_histogram_statistics(nearest[good], len(centers))
    return {**out, "high_quality_fraction": float(good.mean()) if len(good) else 0.0}


def stacked_mode_ids(digits: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """Per-channel class labels (n, C) -> mode ids (n,): digits read as a base-`num_classes`
    number, channel 0 first (Stacked MNIST: 100 * d0 + 10 * d1 + d2)."""
    digits = np.asarray(digits)
    if digits.ndim != 2 or digits.dtype.kind not in "iu":
        raise ValueError(f"digits must be an (n, channels) integer array, got shape {digits.shape} and dtype {digits.dtype}")
    if digits.size and (digits.min() < 0 or digits.max() >= num_classes):
        raise ValueError(f"digits must lie in 0..{num_classes - 1}")
    weights = num_classes ** np.arange(digits.shape[1] - 1, -1, -1, dtype=np.int64)  # (C,): 100, 10, 1
    return digits.astype(np.int64) @ weights


def likelihood_summary(ll_nats: np.ndarray, dim: int, kind: str) -> dict[str, float]:
    """Mean negative log-likelihood in nats per example and bits per dimension."""
    nll = -float(np.mean(ll_nats))
    out = {"test_nll": nll, "test_nll_stderr": float(np.std(ll_nats) / math.sqrt(max(1, len(ll_nats))))}
    if kind in ("image", "binary"):
        out["test_bits_per_dim"] = nll / (dim * math.log(2))
    return out
