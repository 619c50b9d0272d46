"""super-resolve (genzoo/uses/superres.py) and the shared conditional measures: the 4x4 averaging,
PSNR and diversity on known cases, the input checks, and every method's run at a tiny config on
tiny synthetic digits with a predictor that round-trips through its saved config and weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from data.prepared import Prepared
from genzoo.evaluation.networks import Evaluator, EvaluatorConfig
from genzoo.uses import UseInputs, get_use, load_predictor, save_predictor
from genzoo.uses.conditional_measures import diversity, psnr, tile
from genzoo.uses.superres import USE, check_low_res, downsample, upsample
from models.base import ConfigError
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ("made", "pixelcnn", "realnvp", "vae", "rbm", "gsn", "gan", "gmmn", "ddpm")
TINY = {"steps": 3, "batch_size": 16, "width": 8, "eval_examples": 24, "diversity_inputs": 4, "picture_inputs": 3,
        "samples_per_input": 2}
TINY_METHOD = {"gan": {"d_width": 8, "noise_channels": 2}, "ddpm": {"timesteps": 50, "sample_steps": 3}}


def tiny_digits(n: int = 96, seed: int = 0) -> Prepared:
    """n synthetic 'digits' per split: a bright bar whose orientation is the label (0..3), uint8 levels."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "val", "test"):
        labels = rng.integers(0, 4, n)
        x = np.zeros((n, 1, 28, 28), np.uint8)
        for i, y in enumerate(labels):
            r, c = rng.integers(6, 22, 2)
            if y in (0, 1):
                x[i, 0, r - 1:r + 2, 4:24] = 255 if y == 0 else 128
            else:
                x[i, 0, 4:24, c - 1:c + 2] = 255 if y == 2 else 128
        arrays[split], arrays[f"{split}_labels"] = x, labels
    manifest = {"name": "tiny", "kind": "image", "levels": 256, "shape": [1, 28, 28]}
    return Prepared("tiny", manifest, arrays)


def untrained_evaluator() -> Evaluator:
    torch.manual_seed(0)
    return Evaluator(EvaluatorConfig(image_shape=(1, 28, 28), num_classes=4, width=4, feature_dim=8)).eval()


def run(use, method: str, **extra):
    m = use.method(method)
    cfg = m.Config.from_dict({**TINY, **TINY_METHOD.get(method, {}), **extra})
    return m, m.run(UseInputs(use.name, method, "tiny", tiny_digits(), cfg, torch.device("cpu"),
                              untrained_evaluator(), log=lambda line: None))


def test_downsample_is_exact_4x4_averaging():
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    low = downsample(x)
    assert low.shape == (3, 1, 7, 7)
    for i, r, c in ((0, 0, 0), (1, 3, 5), (2, 6, 6)):
        assert float(low[i, 0, r, c]) == pytest.approx(float(x[i, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4].mean()), abs=1e-7)
    block = torch.zeros(1, 1, 28, 28)
    block[0, 0, 4:8, 8:10] = 1.0  # half of the block (1, 2) is white
    expected = torch.zeros(1, 1, 7, 7)
    expected[0, 0, 1, 2] = 0.5
    assert torch.equal(downsample(block), expected)
    assert torch.equal(downsample(upsample(low)), low)  # replication then averaging gives the input back


def test_psnr_and_diversity_known_cases():
    zeros = torch.zeros(4, 1, 28, 28)
    assert psnr(zeros, torch.full_like(zeros, 0.1)) == pytest.approx(20.0)  # MSE 0.01
    assert psnr(zeros, torch.full_like(zeros, 1.0)) == pytest.approx(0.0)
    assert psnr(zeros, zeros) == pytest.approx(100.0)  # the MSE floor keeps it finite
    mixed = torch.cat([torch.full((2, 1, 28, 28), 0.1), torch.full((2, 1, 28, 28), 0.01)])
    assert psnr(zeros, mixed) == pytest.approx(30.0)  # the mean of 20 and 40 dB, per image
    assert diversity(torch.stack([zeros, zeros, zeros])) == 0.0
    assert diversity(torch.stack([zeros, torch.ones_like(zeros)])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same shape"):
        psnr(zeros, zeros[:2])


def test_tile_puts_each_column_side_by_side():
    a, b = torch.zeros(2, 1, 7, 7), torch.ones(2, 1, 7, 7)
    grid = tile([a, b])
    assert grid.shape == (2 * 8 + 1, 2 * 8 + 1)
    assert grid[1:8, 1:8].max() == 0 and grid[1:8, 9:16].min() == 1 and grid[0].min() == 1  # padding is white


def test_low_res_input_is_checked():
    assert check_low_res(np.full((2, 1, 7, 7), 0.5)).shape == (2, 1, 7, 7)
    with pytest.raises(ValueError, match=r"\(n, 1, 7, 7\)"):
        check_low_res(np.zeros((2, 1, 28, 28)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_low_res(np.full((2, 1, 7, 7), 255))


@pytest.mark.parametrize("method", ["mse", "gan", "ddpm"])
def test_method_runs_measures_and_round_trips(method, tmp_path):
    m, outcome = run(USE, method)
    for key, _ in USE.columns:
        assert np.isfinite(outcome.metrics[key]), key
    assert outcome.metrics["diversity"] == 0.0 if method == "mse" else outcome.metrics["diversity"] > 0
    picture = outcome.pictures["outputs"]
    assert picture.ndim == 2 and 0 <= picture.min() and picture.max() <= 1
    low = downsample(torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))).numpy()
    pred = outcome.predictor
    y = pred.predict(low, seed=3)
    assert y.shape == (5, 1, 28, 28) and y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1
    assert np.array_equal(pred.predict(low, seed=3), y)  # a seed is one draw
    if method != "mse":
        assert not np.array_equal(pred.predict(low, seed=4), y)
    rebuilt = m.build(pred.config)
    rebuilt.load_state_dict(pred.state_dict())
    assert np.array_equal(rebuilt.eval().predict(low, seed=3), y)
    save_predictor(tmp_path / "p.pt", USE.name, method, pred)
    assert np.array_equal(load_predictor(tmp_path / "p.pt").predict(low, seed=3), y)


def test_training_changes_the_outputs_and_is_seeded():
    _, a = run(USE, "mse")
    _, b = run(USE, "mse")
    _, c = run(USE, "mse", steps=6)
    low = np.full((2, 1, 7, 7), 0.3, np.float32)
    assert np.array_equal(a.predictor.predict(low), b.predictor.predict(low))
    assert not np.array_equal(a.predictor.predict(low), c.predictor.predict(low))


def test_registry_refusals_and_configs():
    assert get_use("super-resolve") is USE
    assert set(USE.methods) | set(USE.refusals) >= set(FAMILIES) and not set(USE.methods) & set(USE.refusals)
    with pytest.raises(ConfigError, match="cannot do super-resolve: genzoo's VAE"):
        USE.method("vae")
    with pytest.raises(ConfigError, match="nope"):
        USE.method("gan").Config.from_dict({"nope": 1})
    with pytest.raises(ConfigError, match="content"):
        USE.method("gan").Config.from_dict({"content": "vgg"})
    sections = yaml.safe_load((REPO / "params.yaml").read_text())["uses"]["super-resolve"]
    assert set(sections) == set(USE.methods)
    for name, section in sections.items():
        common = {k: v for k, v in section.items() if k not in ("smoke", "quick", "standard", "full")}
        for budget in ("smoke", "quick", "standard", "full"):
            USE.method(name).Config.from_dict({**common, **section[budget]})
