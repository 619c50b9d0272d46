"""Sample-quality measures on feature vectors, and the legacy Parzen-window likelihood (pure numpy/scipy).

All functions take 2-D arrays of shape (n, d): one row per example, features from
an evaluator network (genzoo.evaluator) or raw data for toy sets.

- frechet_distance          FID, Heusel et al. 2017, "GANs Trained by a Two Time-Scale
                            Update Rule Converge to a Local Nash Equilibrium" (the
                            formula of the reference TTUR / pytorch-fid code).
- kernel_inception_distance KID, Binkowski et al. 2018, "Demystifying MMD GANs":
                            unbiased MMD^2 with the kernel (x.y / d + 1)^3 over subsets.
- precision_recall          improved precision and recall, Kynkaanniemi et al. 2019,
                            "Improved Precision and Recall Metric for Assessing
                            Generative Models": k-NN hypersphere manifolds.
- density_coverage          Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics
                            for Generative Models".
- parzen_log_likelihood,    the Gaussian Parzen-window estimate of Goodfellow et al. 2014
  choose_parzen_sigma       ("Generative Adversarial Nets", code in goodfeli/adversarial).

NOTE: the Parzen estimate is a LEGACY measure, kept only to compare with the tables of
older papers. Theis, van den Oord & Bethge 2016 ("A note on the evaluation of
generative models") show it is far from the true log-likelihood even in low
dimensions and ranks models unreliably (a model that memorises the training set can
beat the true data distribution); report it next to, never instead of, exact or
bounded likelihoods.

FID, KID and the k-NN measures are biased or noisy at small sample sizes; the
references use 10,000 to 50,000 samples, and these functions warn (SmallSampleWarning)
below MIN_RECOMMENDED_SAMPLES. Numbers computed with different feature networks or
sample sizes are not comparable.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg
from scipy.special import logsumexp

MIN_RECOMMENDED_SAMPLES = 10_000
FID_EPS = 1e-6  # diagonal offset of pytorch-fid when the covariance product is singular
PARZEN_SIGMAS = np.logspace(-1, 0, 10)  # Goodfellow et al. 2014: 10 values from 0.1 to 1 (for data in [0, 1])
_CHUNK_ELEMENTS = 2**22  # entries of one block of pairwise distances (32 MiB in float64)


class SmallSampleWarning(UserWarning):
    """A sample-quality measure was computed on fewer samples than its references use."""


# ----------------------------------------------------------------------------- input checks


def _features(name: str, x: object, min_rows: int = 1) -> np.ndarray:
    """`x` as a float64 (n, d) array, or a ValueError naming what is wrong with it."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric array of shape (n, d), got {type(x).__name__}") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n, d), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one feature column, got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(f"{name} contains non-finite values (NaN or inf) in {bad} of its {arr.shape[0]} rows")
    return arr


def _pair(name_a: str, a: object, name_b: str, b: object, min_rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    a, b = _features(name_a, a, min_rows), _features(name_b, b, min_rows)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} has {a.shape[1]} features per row but {name_b} has {b.shape[1]}; they must match")
    return a, b


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _warn_if_small(metric: str, *sizes: int) -> None:
    n = min(sizes)
    if n < MIN_RECOMMENDED_SAMPLES:
        warnings.warn(
            f"{metric} computed on {n} samples, fewer than the {MIN_RECOMMENDED_SAMPLES} its reference protocol "
            "uses; the value is biased/noisy and not comparable with published numbers",
            SmallSampleWarning,
            stacklevel=3,
        )


def _sq_distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (len(a), len(b)) as |a|^2 + |b|^2 - 2 a.b, clipped at 0."""
    d2 = (a * a).sum(1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0, out=d2)


def _row_chunks(n_rows: int, n_cols: int):
    step = max(1, _CHUNK_ELEMENTS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _knn_sq_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of every row of x to its k-th nearest other row (the row itself excluded)."""
    x_sq = (x * x).sum(1)
    radii = np.empty(len(x))
    for rows in _row_chunks(len(x), len(x)):
        d2 = _sq_distances(x[rows], x, x_sq)  # (chunk, n)
        own = np.arange(rows.start, rows.stop)
        d2[own - rows.start, own] = 0.0  # each row's distance to itself, exactly (the formula leaves rounding)
        radii[rows] = np.partition(d2, k, axis=1)[:, k]  # index 0 is the row itself
    return radii


# ----------------------------------------------------------------------------- FID


def feature_statistics(feats: object) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of the rows, in float64 (what FID compares)."""
    x = _features("feats", feats, min_rows=2)
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance_from_statistics(mu1: object, sigma1: object, mu2: object, sigma2: object,
                                     eps: float = FID_EPS) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the Frechet distance of two Gaussians.

    The square root is scipy.linalg.sqrtm of S1 S2, whose real part is kept (tiny
    imaginary parts come from rounding). As in pytorch-fid: when the product is
    singular enough that sqrtm returns non-finite values, `eps` is added to the
    diagonal of both covariances and the root is recomputed (a RuntimeWarning says
    so); an imaginary part above 1e-3 on the diagonal is an error, not rounding.
    scipy's "Matrix is singular" LinAlgWarning on the first attempt is silenced:
    singular products (dead feature units, fewer rows than features) are routine
    and their finite roots accurate (checked against an eigendecomposition).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = len(mu1)
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"means must have shape (d,) and covariances (d, d) with the same d, got {mu1.shape}, {s1.shape}, "
            f"{mu2.shape}, {s2.shape}"
        )
    if not all(np.isfinite(v).all() for v in (mu1, mu2, s1, s2)):
        raise ValueError("the means and covariances must be finite (no NaN or inf)")
    with warnings.catch_warnings():
        # singular products are common (dead ReLU units, fewer rows than features); scipy then warns
        # "Matrix is singular" yet usually returns an accurate root. A non-finite one is handled below.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: the covariance product is singular; adding {eps} to the diagonal of both covariances",
                      RuntimeWarning, stacklevel=2)
        offset = np.eye(d) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if imag > 1e-3:
            raise ValueError(f"FID: the matrix square root has an imaginary component of {imag:.3g} on its diagonal")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def frechet_distance(feats_a: object, feats_b: object) -> float:
    """FID between two sets of feature rows: the Frechet distance of Gaussians fitted to each (float64)."""
    a, b = _pair("feats_a", feats_a, "feats_b", feats_b, min_rows=2)
    _warn_if_small("FID", len(a), len(b))
    return frechet_distance_from_statistics(*feature_statistics(a), *feature_statistics(b))


# ----------------------------------------------------------------------------- KID


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 (the estimator of Binkowski et al.)."""
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * k_xy.mean())


def kernel_inception_distance(feats_a: object, feats_b: object, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> dict[str, float]:
    """KID: the unbiased MMD^2 (cubic polynomial kernel) averaged over random subsets.

    Each of `subsets` rounds draws `subset_size` rows of each set without
    replacement (numpy Generator seeded with `seed`). Returns {"kid": mean,
    "kid_std": standard deviation over the subsets} (the spread of one subset's
    estimate, as torch-fidelity reports it; the standard error of the mean is
    kid_std / sqrt(subsets)). The estimate is unbiased, so it can be negative
    when the two distributions are equal.
    """
    subsets, subset_size = _positive_int("subsets", subsets), _positive_int("subset_size", subset_size)
    a, b = _pair("feats_a", feats_a, "feats_b", feats_b, min_rows=2)
    if subset_size < 2:
        raise ValueError(f"subset_size must be at least 2 for the unbiased estimate, got {subset_size}")
    if subset_size > min(len(a), len(b)):
        raise ValueError(
            f"subset_size {subset_size} is larger than the sets ({len(a)} and {len(b)} rows); lower it"
        )
    _warn_if_small("KID", len(a), len(b))
    rng = np.random.default_rng(seed)
    mmd = np.array([
        _mmd2_unbiased(a[rng.choice(len(a), subset_size, replace=False)],
                       b[rng.choice(len(b), subset_size, replace=False)])
        for _ in range(subsets)
    ])
    return {"kid": float(mmd.mean()), "kid_std": float(mmd.std())}


# ----------------------------------------------------------------------------- k-NN manifolds


def _check_k(k: object, *sets: tuple[str, np.ndarray]) -> int:
    k = _positive_int("k", k)
    for name, x in sets:
        if len(x) <= k:
            raise ValueError(f"{name} has {len(x)} rows but k={k} nearest neighbours need at least {k + 1}")
    return k


def precision_recall(real: object, fake: object, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    Each real row spans a ball whose radius is the distance to its k-th nearest
    real neighbour; precision is the fraction of fake rows inside at least one
    real ball. Recall swaps the roles (balls around the fake rows, fraction of
    real rows covered). Points on a ball's boundary count as inside (`<=`, as in
    the reference code). Distances are computed in row chunks, so 10,000 x 10,000
    needs tens of MiB, not the full matrix.
    """
    real, fake = _pair("real", real, "fake", fake)
    k = _check_k(k, ("real", real), ("fake", fake))
    _warn_if_small("precision/recall", len(real), len(fake))
    center = real.mean(0)  # translation-invariant; centring reduces rounding in |a|^2 + |b|^2 - 2 a.b
    real, fake = real - center, fake - center
    r_real, r_fake = _knn_sq_radii(real, k), _knn_sq_radii(fake, k)
    real_sq = (real * real).sum(1)
    fake_in = np.zeros(len(fake), dtype=bool)
    real_in = np.zeros(len(real), dtype=bool)
    for rows in _row_chunks(len(fake), len(real)):
        d2 = _sq_distances(fake[rows], real, real_sq)  # (chunk of fake, n_real)
        fake_in[rows] = (d2 <= r_real[None, :]).any(1)
        real_in |= (d2 <= r_fake[rows, None]).any(0)
    return {"precision": float(fake_in.mean()), "recall": float(real_in.mean())}


def density_coverage(real: object, fake: object, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020), with the k-NN balls around the real rows only.

    density  = (1 / (k M)) sum_j sum_i 1[fake_j in ball(real_i)]  (about 1 when the
               distributions match; above 1 when fakes crowd into dense regions)
    coverage = (1 / N) sum_i 1[some fake row lies in ball(real_i)]
    Boundaries count as outside (`<`, as in the reference prdc code). Chunked like
    precision_recall.
    """
    real, fake = _pair("real", real, "fake", fake)
    k = _check_k(k, ("real", real))
    _warn_if_small("density/coverage", len(real), len(fake))
    center = real.mean(0)
    real, fake = real - center, fake - center
    r_real = _knn_sq_radii(real, k)
    real_sq = (real * real).sum(1)
    inside = 0
    nearest_fake = np.full(len(real), np.inf)
    for rows in _row_chunks(len(fake), len(real)):
        d2 = _sq_distances(fake[rows], real, real_sq)  # (chunk of fake, n_real)
        inside += int((d2 < r_real[None, :]).sum())
        np.minimum(nearest_fake, d2.min(0), out=nearest_fake)
    return {
        "density": inside / (k * len(fake)),
        "coverage": float((nearest_fake < r_real).mean()),
    }


# ----------------------------------------------------------------------------- Parzen window (legacy)


def _check_sigmas(sigmas: object) -> np.ndarray:
    try:
        s = np.atleast_1d(np.asarray(sigmas, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"sigma values must be positive numbers, got {sigmas!r}") from None
    if s.ndim != 1 or len(s) == 0 or not np.isfinite(s).all() or (s <= 0).any():
        raise ValueError(f"sigma values must be finite and positive, got {sigmas!r}")
    return s


def _parzen_batches(samples: np.ndarray, test: np.ndarray, sigmas: np.ndarray, batch: int):
    """Yield (rows, ll) with ll of shape (len(sigmas), len(rows)): log p(test rows) for every sigma."""
    n, d = samples.shape
    center = samples.mean(0)
    samples, test = samples - center, test - center
    s_sq = (samples * samples).sum(1)
    log_norm = math.log(n) + d * np.log(sigmas * math.sqrt(2.0 * math.pi))  # (S,)
    for start in range(0, len(test), batch):
        rows = slice(start, min(start + batch, len(test)))
        d2 = _sq_distances(test[rows], samples, s_sq)  # (b, n)
        ll = np.stack([logsumexp(-0.5 * d2 / (s * s), axis=1) for s in sigmas])  # (S, b)
        yield rows, ll - log_norm[:, None]


def parzen_log_likelihood(samples: object, test: object, sigma: float, batch: int = 100) -> np.ndarray:
    """Per-row log-likelihood (nats) of `test` under a Gaussian Parzen window on `samples`.

    log p(x) = logsumexp_i(-|x - s_i|^2 / (2 sigma^2)) - log n - d log(sigma sqrt(2 pi)),
    evaluated `batch` test rows at a time (Goodfellow et al. 2014 used 10,000
    samples, batches of 100 and sigma chosen on a validation split, see
    choose_parzen_sigma). LEGACY measure: see the module docstring (Theis et al. 2016).
    """
    samples, test = _pair("samples", samples, "test", test)
    if np.ndim(sigma) != 0:
        raise ValueError(f"sigma must be one positive number, got {sigma!r}")
    sigma = float(_check_sigmas(sigma)[0])
    batch = _positive_int("batch", batch)
    out = np.empty(len(test))
    for rows, ll in _parzen_batches(samples, test, np.array([sigma]), batch):
        out[rows] = ll[0]
    return out


def choose_parzen_sigma(samples: object, validation: object, sigmas: object = PARZEN_SIGMAS,
                        batch: int = 100) -> float:
    """The sigma in `sigmas` with the highest mean Parzen log-likelihood of `validation`.

    The default grid is the protocol's np.logspace(-1, 0, 10), meant for data in
    [0, 1]; a warning says when the best value lies on the edge of the grid (widen
    it then). Distances are computed once per batch and reused for every sigma.
    """
    samples, validation = _pair("samples", samples, "validation", validation)
    sigmas = _check_sigmas(sigmas)
    batch = _positive_int("batch", batch)
    total = np.zeros(len(sigmas))
    for _, ll in _parzen_batches(samples, validation, sigmas, batch):
        total += ll.sum(1)
    best = int(np.argmax(total))
    if len(sigmas) > 1 and sigmas[best] in (sigmas.min(), sigmas.max()):
        warnings.warn(f"the best Parzen sigma {sigmas[best]:.4g} lies on the edge of the grid "
                      f"[{sigmas.min():.4g}, {sigmas.max():.4g}]; widen the grid", RuntimeWarning, stacklevel=2)
    return float(sigmas[best])
