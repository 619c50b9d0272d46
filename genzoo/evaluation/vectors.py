"""Sample-quality measures for D-dimensional vectors (tabular rows, binary vectors, 2-D points), pure numpy.

Images are judged on an evaluator network's features (genzoo.evaluation.quality); vectors are judged
on their own coordinates, against held-out test rows. A small set, each answering one question:

- energy_distance     does the joint distribution match? The energy distance of Szekely & Rizzo
                      (2013, "Energy statistics: a class of statistics based on distances"),
                      2 E|X - Y| - E|X - X'| - E|Y - Y'| with Euclidean |.|, between the two
                      empirical distributions (the V-statistic: 0 for identical sets, never
                      negative, about O(1/n) above 0 for two samples of one distribution). It is
                      the MMD^2 of the distance kernel, so it needs no bandwidth; it is in the
                      data's units (a shift by c of 1-D point masses gives 2|c|).
- marginal_w1         do the one-dimensional marginals match? The mean over features of the 1-D
                      Wasserstein-1 distance between the samples' and the test rows' values of the
                      feature (a shift of every feature by c gives exactly |c|). On binary data it
                      is the mean |p_sample - p_test| of the features' means.
- correlation_error   (real-valued data, D >= 2) does the linear dependence match? The mean
                      absolute difference of the Pearson correlations of all feature pairs i < j
                      (a feature constant in one set counts as uncorrelated there).
- cooccurrence_error  (binary data, D >= 2) the same for binary vectors: the mean absolute
                      difference of the pairwise co-occurrence rates E[x_i x_j], i < j.

Both sets are capped at MAX_ROWS rows (a seeded random subset) so the pairwise distances of the
energy distance stay cheap; `vector_quality` says how many rows it used. 2-D mixtures keep their
mode statistics (genzoo.evaluation.metrics) beside these.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import wasserstein_distance

from genzoo.evaluation.quality import _pair, _row_chunks, _sq_distances

MAX_ROWS = 2000  # rows of each set the measures use (energy distance: MAX_ROWS^2 distances)


def energy_distance(x: object, y: object) -> float:
    """2 mean|x_i - y_j| - mean|x_i - x_k| - mean|y_j - y_l| over all pairs (Euclidean), >= 0."""
    x, y = _pair("samples", x, "reference", y)
    center = y.mean(0)  # translation-invariant; centring reduces rounding in |a|^2 + |b|^2 - 2 a.b
    x, y = x - center, y - center
    return max(0.0, 2.0 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y))


def _mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    b_sq = (b * b).sum(1)
    total = 0.0
    for rows in _row_chunks(len(a), len(b)):
        total += float(np.sqrt(_sq_distances(a[rows], b, b_sq)).sum())
    return total / (len(a) * len(b))


def marginal_w1(x: object, y: object) -> float:
    """Mean over features of the 1-D Wasserstein-1 distance between the two sets' values."""
    x, y = _pair("samples", x, "reference", y)
    return float(np.mean([wasserstein_distance(x[:, j], y[:, j]) for j in range(x.shape[1])]))


def _correlations(x: np.ndarray) -> np.ndarray:
    """Pearson correlations of the columns (D, D); a constant column is uncorrelated with every other."""
    centred = x - x.mean(0)
    scale = np.sqrt((centred * centred).sum(0))
    safe = np.where(scale > 0, scale, 1.0)
    corr = (centred.T @ centred) / np.outer(safe, safe)
    corr[scale == 0, :] = 0.0
    corr[:, scale == 0] = 0.0
    return corr


def _upper_mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    i, j = np.triu_indices(a.shape[0], k=1)
    return float(np.abs(a[i, j] - b[i, j]).mean())


def correlation_error(x: object, y: object) -> float:
    """Mean |corr_x(i, j) - corr_y(i, j)| over feature pairs i < j (needs D >= 2)."""
    x, y = _pair("samples", x, "reference", y, min_rows=2)
    if x.shape[1] < 2:
        raise ValueError(f"correlation_error needs at least 2 features, got {x.shape[1]}")
    return _upper_mean_abs(_correlations(x), _correlations(y))


def cooccurrence_error(x: object, y: object) -> float:
    """Mean |mean(x_i x_j) - mean(y_i y_j)| over feature pairs i < j of binary rows (needs D >= 2)."""
    x, y = _pair("samples", x, "reference", y)
    if x.shape[1] < 2:
        raise ValueError(f"cooccurrence_error needs at least 2 features, got {x.shape[1]}")
    return _upper_mean_abs(x.T @ x / len(x), y.T @ y / len(y))


def _capped(x: np.ndarray, seed: int) -> np.ndarray:
    if len(x) <= MAX_ROWS:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), MAX_ROWS, replace=False))]


def vector_quality(samples: object, test: object, kind: str, seed: int = 0) -> dict[str, float]:
    """The measures that apply to vectors of this kind ('points' or 'binary'), samples against test rows.

    Binary samples that are Bernoulli means (GAN, GMMN) are compared as they are, not thresholded, as
    the image protocol does."""
    x, y = _pair("samples", np.asarray(samples).reshape(len(samples), -1),
                 "test rows", np.asarray(test).reshape(len(test), -1), min_rows=2)
    x, y = _capped(x, seed), _capped(y, seed + 1)
    out = {"energy_distance": energy_distance(x, y), "marginal_w1": marginal_w1(x, y),
           "vector_samples": len(x), "vector_real": len(y)}
    if x.shape[1] >= 2:
        key, measure = ("cooccurrence_error", cooccurrence_error) if kind == "binary" else \
            ("correlation_error", correlation_error)
        out[key] = measure(x, y)
    return out
