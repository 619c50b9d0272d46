"""Evaluation measures (pure numpy/torch): mode coverage on the 2-D mixtures, likelihood summaries."""

from __future__ import annotations

import math

import numpy as np


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
    k = len(centers)
    counts = np.bincount(nearest[good], minlength=k).astype(np.float64)
    if counts.sum() > 0:
        p = counts / counts.sum()
        nz = p > 0
        kl = float(np.sum(p[nz] * np.log(p[nz] * k)))
    else:
        kl = math.log(k)
    return {
        "modes_captured": int((counts > 0).sum()),
        "modes_total": k,
        "high_quality_fraction": float(good.mean()) if len(good) else 0.0,
        "kl_to_uniform": kl,
    }


def likelihood_summary(ll_nats: np.ndarray, dim: int, kind: str) -> dict[str, float]:
    """Mean negative log-likelihood in nats per example and bits per dimension."""
    nll = -float(np.mean(ll_nats))
    out = {"test_nll": nll, "test_nll_stderr": float(np.std(ll_nats) / math.sqrt(max(1, len(ll_nats))))}
    if kind in ("image", "binary"):
        out["test_bits_per_dim"] = nll / (dim * math.log(2))
    return out
