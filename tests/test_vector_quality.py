"""The vector measures (genzoo/evaluation/vectors.py) against known answers, the protocol that applies
them to vector data of any width, and the projection picture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genzoo.evaluation import vectors


def test_identical_sets_are_at_distance_zero():
    x = np.random.default_rng(0).normal(size=(300, 5))
    assert vectors.energy_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert vectors.marginal_w1(x, x) == 0.0
    assert vectors.correlation_error(x, x) == pytest.approx(0.0, abs=1e-12)
    b = (x > 0).astype(float)
    assert vectors.cooccurrence_error(b, b) == 0.0


def test_a_shift_moves_the_marginals_by_the_shift_and_leaves_the_dependence():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 4)) @ rng.normal(size=(4, 4))  # correlated features
    shifted = x + 0.7
    assert vectors.marginal_w1(shifted, x) == pytest.approx(0.7, abs=1e-9)
    assert vectors.correlation_error(shifted, x) == pytest.approx(0.0, abs=1e-9)
    assert vectors.energy_distance(shifted, x) > vectors.energy_distance(x + 0.1, x) > 0


def test_energy_distance_of_point_masses_and_of_two_gaussians():
    # point masses at 0 and c: 2|c| - 0 - 0
    assert vectors.energy_distance(np.zeros((10, 3)), np.full((7, 3), 2.0)) == pytest.approx(2 * 2 * math.sqrt(3))
    # N(0, 1) vs N(mu, 1) in 1-D: 2 E|X - Y| - 2 E|X - X'|, X - Y ~ N(mu, 2), X - X' ~ N(0, 2)
    mu, s = 1.0, math.sqrt(2)
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-mu ** 2 / (2 * s ** 2)) + mu * math.erf(mu / (s * math.sqrt(2)))
    expected = 2 * e_xy - 2 * s * math.sqrt(2 / math.pi)
    from scipy.stats import norm

    x = norm.ppf((np.arange(2000) + 0.5) / 2000)[:, None]  # N(0, 1) by its quantiles, no sampling noise
    assert vectors.energy_distance(x, x + mu) == pytest.approx(expected, abs=0.005)


def test_dependence_errors_known_answers():
    a = np.random.default_rng(3).normal(size=(200, 1))
    same, opposite = np.hstack([a, a]), np.hstack([a, -a])  # correlation +1 and -1
    assert vectors.correlation_error(same, opposite) == pytest.approx(2.0)
    assert vectors.correlation_error(np.hstack([a, np.ones_like(a)]), same) == pytest.approx(1.0)  # constant: 0
    ones, zeros = np.ones((5, 3)), np.zeros((5, 3))
    assert vectors.cooccurrence_error(ones, zeros) == 1.0
    bits = (np.random.default_rng(4).random((5000, 1)) < 0.5).astype(float)
    copies, independent = np.hstack([bits, bits]), (np.random.default_rng(5).random((5000, 2)) < 0.5).astype(float)
    assert vectors.cooccurrence_error(copies, independent) == pytest.approx(0.25, abs=0.02)  # 1/2 vs 1/4
    assert vectors.marginal_w1(copies, independent) == pytest.approx(0.0, abs=0.02)  # same means


def test_vector_quality_applies_the_measures_of_the_kind():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(3000, 3))
    out = vectors.vector_quality(real[:100], real[100:], "points", seed=0)
    assert set(out) == {"energy_distance", "marginal_w1", "correlation_error", "vector_samples", "vector_real"}
    assert out["vector_samples"] == 100 and out["vector_real"] == vectors.MAX_ROWS  # capped
    binary = vectors.vector_quality((real[:100] > 0).astype(float), (real[100:] > 0).astype(float), "binary")
    assert "cooccurrence_error" in binary and "correlation_error" not in binary
    assert "correlation_error" not in vectors.vector_quality(real[:50, :1], real[50:, :1], "points")  # D = 1
    with pytest.raises(ValueError, match="features per row"):
        vectors.vector_quality(real[:10], real[:10, :2], "points")


def _prepared(x: np.ndarray, kind: str):
    from data.prepared import Prepared

    n = len(x)
    arrays = {"train": x[: n // 2], "val": x[n // 2: 3 * n // 4], "test": x[3 * n // 4:]}
    manifest = {"name": "tab", "kind": kind, "shape": [x.shape[1]], "levels": 2 if kind == "binary" else 0,
                "params": {}, "hash": "x"}
    return Prepared("tab", manifest, arrays)


@pytest.mark.parametrize("kind", ["binary", "points"])
def test_the_protocol_measures_vectors_of_any_width_against_a_known_baseline(kind, tmp_path):
    """10-d binary rows whose features come in copies, and 30-d standardised tabular rows
    (scikit-learn's breast-cancer table): the independent baseline matches the marginals; only where
    the features depend on each other (binary copies) does it miss the co-occurrences, by about 1/4
    on the copied pairs."""
    from genzoo.baselines import FactorisedBaseline
    from genzoo.config import EvalConfig
    from genzoo.evaluation.protocol import measure
    from genzoo.plots import save_samples

    if kind == "binary":
        bits = np.random.default_rng(7).random((4000, 5)) < 0.5
        x = np.repeat(bits, 2, axis=1).astype(np.uint8)  # (4000, 10): features 2k and 2k+1 equal
    else:
        from sklearn.datasets import load_breast_cancer

        x = np.random.default_rng(7).permutation(load_breast_cancer().data)  # the file is ordered
        x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)  # (569, 30)
    prepared = _prepared(x, kind)
    model = FactorisedBaseline(prepared.tensor("train"), kind, prepared.levels)
    ecfg = EvalConfig(parzen_examples=200, real_examples=1000)
    samples = model.sample(1000, torch.Generator().manual_seed(0)).numpy()
    out = measure(model, "tab", prepared, samples, ecfg, None)
    assert np.isfinite(out["test_nll"]) and np.isfinite(out["parzen_ll"])
    assert 0 < out["energy_distance"] < 1 and out["vector_samples"] == 1000
    if kind == "binary":  # the fitted marginals: about the sampling noise of 1,000 rows
        assert out["marginal_w1"] < 0.05
    else:  # a Gaussian fitted to skewed features (W1 measured 0.25 std): right mean and spread, wrong shape
        assert 0.1 < out["marginal_w1"] < 0.4
    if kind == "binary":  # 5 copied pairs of 45 miss 1/2 - 1/4; the other pairs only sampling noise
        assert 0.25 * 5 / 45 - 0.01 < out["cooccurrence_error"] < 0.25 * 5 / 45 + 0.03
    else:  # a full-covariance Gaussian keeps the correlations (0.08 measured: 143 test rows)
        assert out["correlation_error"] < 0.12
    picture = save_samples(samples, tmp_path / "s.png", title="baseline", reference=prepared.arrays["test"],
                           binary=kind == "binary")
    from PIL import Image

    with Image.open(picture) as im:
        assert im.size[0] > 200 and im.size[1] > 200


def test_vectors_draw_without_reference_data(tmp_path):
    from genzoo.plots import save_samples

    x = np.random.default_rng(8).normal(size=(50, 10))
    assert save_samples(x, tmp_path / "a.png").is_file()  # projection on the samples' own components
    assert save_samples(x[:, :1], tmp_path / "b.png").is_file()  # one feature
    assert save_samples((x > 0).astype(float), tmp_path / "c.png").is_file()  # binary: feature means
    with pytest.raises(ValueError, match="only images and vectors"):
        save_samples(np.zeros((4, 2, 3)), tmp_path / "d.png")
