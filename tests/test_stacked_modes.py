"""Stacked MNIST's mode statistics and its per-channel evaluator (an MNIST classifier applied to each channel)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from data import sources
from data.prepare import write
from data import evaluator_stage
from genzoo.evaluation import networks
from genzoo.config import EvalConfig
from genzoo.evaluation.networks import Evaluator, PerChannelEvaluator, extract_features, predict_logits
from genzoo.evaluation.metrics import mode_histogram_statistics, mode_statistics, stacked_mode_ids

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::genzoo.evaluation.quality.SmallSampleWarning")]


# ----------------------------------------------------------------------------- mode histogram


def test_mode_histogram_counts_exactly_the_modes_present():
    ids = np.array([3, 3, 999, 0, 512, 3, 0])
    out = mode_histogram_statistics(ids, 1000)
    assert out["modes_captured"] == 4 and out["modes_total"] == 1000
    p = np.array([2, 3, 1, 1]) / 7  # modes 0, 3, 512, 999
    assert out["kl_to_uniform"] == pytest.approx(float(np.sum(p * np.log(p * 1000))), rel=1e-12)


def test_mode_histogram_kl_is_zero_when_even_and_log_k_for_one_mode():
    even = mode_histogram_statistics(np.repeat(np.arange(1000), 26), 1000)
    assert even["modes_captured"] == 1000 and even["kl_to_uniform"] == pytest.approx(0.0, abs=1e-12)
    one = mode_histogram_statistics(np.full(26000, 7), 1000)
    assert one["modes_captured"] == 1 and one["kl_to_uniform"] == pytest.approx(math.log(1000), rel=1e-12)
    assert mode_histogram_statistics(np.array([], dtype=np.int64), 1000)["kl_to_uniform"] == pytest.approx(math.log(1000))
    with pytest.raises(ValueError, match="mode_ids must lie in 0..999"):
        mode_histogram_statistics(np.array([1000]), 1000)
    with pytest.raises(ValueError, match="1-D array of integers"):
        mode_histogram_statistics(np.array([0.5]), 1000)


def test_mixture_mode_statistics_share_the_histogram():
    centers = sources.mode_centers("ring8")
    x = np.concatenate([centers[[0, 0, 0, 5]], [[10.0, 10.0]]])  # the last one is far from every mode
    out = mode_statistics(x, centers, 0.01)
    assert out == {**mode_histogram_statistics(np.array([0, 0, 0, 5]), 8), "high_quality_fraction": 0.8}


def test_stacked_mode_ids_read_digits_channel_zero_first():
    assert stacked_mode_ids(np.array([[1, 2, 3], [0, 0, 9], [9, 9, 9]])).tolist() == [123, 9, 999]
    with pytest.raises(ValueError, match="digits must lie in 0..9"):
        stacked_mode_ids(np.array([[1, 10, 3]]))


# ----------------------------------------------------------------------------- per-channel evaluator


@pytest.fixture(scope="module")
def mnist_test(raw_data_dir):
    files = sources.MNIST_FILES
    x = sources.parse_idx(sources.read_verified(raw_data_dir / "mnist", "t10k-images-idx3-ubyte",
                                                files["t10k-images-idx3-ubyte"], "mnist"), "images")
    y = sources.parse_idx(sources.read_verified(raw_data_dir / "mnist", "t10k-labels-idx1-ubyte",
                                                files["t10k-labels-idx1-ubyte"], "mnist"), "labels")
    return x[:, None], y.astype(np.int64)  # (10000, 1, 28, 28) uint8, (10000,)


@pytest.fixture(scope="module")
def stacked_evaluator(tmp_path_factory, mnist_test):
    """The evaluator stage run on a tiny stand-in for data/prepared/mnist (1 epoch, 1,000 images)."""
    root = tmp_path_factory.mktemp("root")
    x, y = mnist_test
    parts = {"train": slice(0, 1000), "val": slice(1000, 1200), "test": slice(1200, 1400)}
    raw = sources.Raw("image", 256, {k: (x[s], y[s]) for k, s in parts.items()}, "MNIST t10k slices", {})
    write("mnist", raw, {k: raw.splits[k] for k in parts}, root / "data" / "prepared" / "mnist", {})
    metrics = evaluator_stage.build("stacked-mnist", root, {"source": "mnist", "per_channel": 3, "epochs": 1,
                                                            "batch_size": 128, "seed": 0, "threads": 1})
    return root / "data" / "evaluators" / "stacked-mnist", metrics


def _stack(x: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x[rows, 0]).float() / 255  # (n, 3, 28, 28): three MNIST test images per example


def test_per_channel_evaluator_classifies_each_channel_like_the_digit_network(stacked_evaluator, mnist_test):
    folder, metrics = stacked_evaluator
    assert metrics["per_channel"] == 3 and json.loads((folder / "metrics.json").read_text())["per_channel"] == 3
    net, meta = networks.load(folder)
    assert isinstance(net, PerChannelEvaluator) and isinstance(net.digit, Evaluator) and net.image_shape == (3, 28, 28)
    x, _ = mnist_test
    rows = np.random.default_rng(0).integers(2000, 10000, size=(64, 3))
    stack = _stack(x, rows)
    digits = net.predict_digits(stack)
    assert digits.shape == (64, 3) and digits.dtype == np.int64
    for c in range(3):
        single = predict_logits(net.digit, stack[:, c:c + 1]).argmax(1).numpy()
        assert np.array_equal(digits[:, c], single)
    f = extract_features(net, stack)  # what image_quality computes FID & co. on
    fd = net.digit.config.feature_dim
    assert f.shape == (64, 3 * fd)
    for c in range(3):
        assert np.allclose(f[:, c * fd:(c + 1) * fd], extract_features(net.digit, stack[:, c:c + 1]), atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 8, 8), (2, 4, 28, 28)])
def test_per_channel_evaluator_refuses_wrong_shapes(stacked_evaluator, shape):
    net, _ = networks.load(stacked_evaluator[0])
    with pytest.raises(ValueError, match=r"per-channel evaluator was built for images of shape \(n, 3, 28, 28\)"):
        net.features(torch.zeros(shape))
    with pytest.raises(ValueError, match=r"\(n, 3, 28, 28\)"):
        net.predict_digits(torch.zeros(shape))


def test_stacked_mode_statistics_of_samples(stacked_evaluator, mnist_test):
    from data.prepared import Prepared
    from genzoo.evaluation.protocol import stacked_modes

    folder, _ = stacked_evaluator
    x, _ = mnist_test
    stack = _stack(x, np.random.default_rng(1).integers(2000, 10000, size=(50, 3))).numpy()
    prepared = Prepared("stacked-mnist", {"modes": 1000}, {})
    out = stacked_modes(stack, prepared, str(folder), EvalConfig(n_mode_samples=100))
    net, _ = networks.load(folder)
    expected = mode_histogram_statistics(stacked_mode_ids(net.predict_digits(torch.from_numpy(stack))), 1000)
    assert {k: out[k] for k in expected} == expected and out["mode_samples"] == 50
    assert "mode statistics from 50 samples (< 100)" in out["mode_sample_warning"]
    with pytest.raises(ValueError, match="has 100 modes, but its evaluator tells 10 classes in each of 3 channels"):
        stacked_modes(stack, Prepared("stacked-mnist", {"modes": 100}, {}), str(folder), EvalConfig())
    whole = folder.parent / "whole-images"  # the same weights saved as a plain (whole-image) evaluator
    whole.mkdir()
    torch.save({"config": net.digit.config.to_dict(), "state_dict": net.digit.state_dict()}, whole / "evaluator.pt")
    (whole / "metrics.json").write_text(json.dumps({"test_accuracy": 0.5}))
    with pytest.raises(ValueError, match="classifies whole images; set evaluators.stacked-mnist.per_channel"):
        stacked_modes(stack, prepared, str(whole), EvalConfig())


def test_per_channel_needs_a_single_channel_classifier():
    from genzoo.evaluation.networks import EvaluatorConfig

    with pytest.raises(ValueError, match="single-channel classifier"):
        PerChannelEvaluator(Evaluator(EvaluatorConfig((3, 28, 28), 10)), 3)


def test_evaluator_stage_rejects_a_bad_per_channel(tmp_path):
    from data.errors import DataError

    with pytest.raises(DataError, match="per_channel for stacked-mnist must be an integer >= 0"):
        evaluator_stage.build("stacked-mnist", tmp_path, {"source": "mnist", "per_channel": "three"})


def test_n_mode_samples_must_be_positive():
    from models.base import ConfigError

    assert EvalConfig().n_mode_samples == 26000
    with pytest.raises(ConfigError, match="evaluate.n_mode_samples must be positive"):
        EvalConfig(n_mode_samples=0)
