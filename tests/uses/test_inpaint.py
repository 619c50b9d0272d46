"""genzoo apply inpaint: masks, exact conditional likelihoods, the samplers' guarantees, every method at a
tiny config, predictor round-trips, the table imputers and the breast-cancer dataset."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import yaml

import data
import models
from data.prepared import Prepared
from genzoo.config import TrainConfig
from genzoo.evaluation.networks import Evaluator, EvaluatorConfig
from genzoo.training import fit
from genzoo.uses import UseInputs, get_use, load_predictor, save_predictor
from genzoo.uses.inpaint_common import MASKS, make_mask, with_nan
from genzoo.uses.inpaint_samplers import made_complete, made_cond_nll, pixelcnn_cond_nll
from genzoo.uses.inpaint_tabular import IterativeConfig, fit_iterative, mcar
from models.base import ConfigError
from tests.conftest import REPO

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*Early stopping criterion not reached")]  # tiny max_iter
USE = get_use("inpaint")
TINY = {"eval_examples": 12, "diversity_inputs": 2, "completions": 2, "batch_size": 8}
FAMILY_CONFIGS = {  # tiny family models for 8x8 images
    "made": {"hidden": [16]},
    "pixelcnn": {"channels": 4, "layers": 2, "kernel": 3, "first_kernel": 3},
    "rbm": {"hidden": 16, "ais_runs": 2, "ais_temperatures": 2},
    "gsn": {"hidden": 16},
    "vae": {"latent_dim": 2, "hidden": 16},
    "ddpm": {"width": 8, "timesteps": 25},
}
METHOD_SETTINGS = {"iterative": {"max_iter": 2}, "regression": {"hidden": 8, "steps": 3}, "made": {"proposals": 3}, "pixelcnn": {"proposals": 2},
                   "rbm": {"gibbs_steps": 3}, "gsn": {"chain_steps": 3}, "vae": {"importance_samples": 4,
                   "iterations": 1}, "ddpm": {"resample": 2}}


def digits(kind: str) -> Prepared:
    """scikit-learn's 8x8 digits as a tiny prepared dataset: 17 grey levels with labels, or binarised without."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), 0..16
    if kind == "binary":
        x = (x > 6).astype(np.uint8)
    arrays = {"train": x[:200], "val": x[200:240], "test": x[240:280]}
    if kind == "image":
        arrays.update(train_labels=bunch.target[:200], val_labels=bunch.target[200:240], test_labels=bunch.target[240:280])
    manifest = {"name": f"digits-{kind}", "kind": kind, "levels": 17 if kind == "image" else 2, "shape": [1, 8, 8]}
    return Prepared(f"digits-{kind}", manifest, arrays)


def trained(family: str, prepared: Prepared) -> models.GenerativeModel:
    cfg = {**FAMILY_CONFIGS[family], "data_shape": list(prepared.shape), "data_kind": prepared.kind,
           "levels": prepared.levels}
    model = models.build(family, cfg)
    fit(model, prepared.tensor("train"), TrainConfig(epochs=1, batch_size=32, steps_per_epoch=2, val_examples=0),
        log=lambda m: None)
    return model.eval()


def run(method: str, prepared: Prepared, family_model=None, **settings):
    m = USE.method(method)
    cfg = m.Config.from_dict({**({} if prepared.kind == "points" else TINY), **METHOD_SETTINGS.get(method, {}),
                              **settings})
    evaluator = None if prepared.kind == "points" else Evaluator(EvaluatorConfig((1, 8, 8), 10)).eval()
    return m.run(UseInputs("inpaint", method, prepared.name, prepared, cfg, torch.device("cpu"), evaluator,
                           family_model, log=lambda s: None))


# ----------------------------------------------------------------------------- masks
def test_masks_cover_the_right_pixels_and_are_deterministic():
    shape = (1, 28, 28)
    bottom, centre = make_mask("bottom", 3, shape), make_mask("centre", 3, shape)
    assert bottom[:, :, 14:].all() and not bottom[:, :, :14].any()
    assert centre[:, :, 7:21, 7:21].all() and centre.sum() == 3 * 14 * 14
    for name, count in (("random50", 392), ("random80", 627)):
        a, b, c = (make_mask(name, 5, shape, seed) for seed in (1, 1, 2))
        assert (a.reshape(5, -1).sum(1) == count).all()  # exactly p of the pixels in every image
        assert np.array_equal(a, b) and not np.array_equal(a, c)
        assert not np.array_equal(a[0], a[1])  # a fresh pattern per image
    with pytest.raises(ConfigError, match="unknown mask"):
        make_mask("left", 1, shape)


# ----------------------------------------------------------------------------- exact conditional NLL
def all_configurations(d: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=d)))  # (2^d, d)


def exact_conditional_nll(log_p: torch.Tensor, x: torch.Tensor, grid: torch.Tensor, missing: torch.Tensor) -> float:
    """-log p(x_missing | x_observed) by summing p over every completion of x's observed pixels."""
    same = (grid[:, ~missing] == x[~missing]).all(1)  # the 2^|missing| configurations sharing x's observed part
    mine = (grid == x).all(1)
    return float(torch.logsumexp(log_p[same], 0) - log_p[mine][0])


@pytest.mark.parametrize("family", ["made", "pixelcnn"])
def test_conditional_nll_of_the_bottom_half_is_the_exact_sum_over_missing_configurations(family):
    torch.manual_seed(0)
    shape = (1, 2, 3)  # 6 pixels, the bottom 3 missing
    cfg = {"data_shape": list(shape), "data_kind": "binary"}
    cfg.update({"hidden": [10], "num_masks": 2} if family == "made" else {"channels": 4, "layers": 2, "kernel": 3,
                                                                          "first_kernel": 3})
    model = models.build(family, cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # far from the symmetric start
    grid = all_configurations(6)
    log_p = model.log_likelihood(grid.view(-1, *shape)).double()
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-5)
    missing = torch.from_numpy(make_mask("bottom", 64, shape))  # (64, 1, 2, 3)
    nll = (made_cond_nll if family == "made" else pixelcnn_cond_nll)(model, grid.view(-1, *shape), missing)
    expected = [exact_conditional_nll(log_p, grid[i], grid, missing[i].flatten()) for i in range(64)]
    assert torch.allclose(nll.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-4)
    top = missing.flip(2)  # the top row missing: observed pixels after missing ones, no exact value
    assert (made_cond_nll if family == "made" else pixelcnn_cond_nll)(model, grid.view(-1, *shape), top) is None


def test_made_resampling_draws_the_exact_conditional_when_observed_pixels_come_later():
    torch.manual_seed(1)
    shape = (1, 2, 3)
    model = models.build("made", {"data_shape": list(shape), "data_kind": "binary", "hidden": [10]}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.5 * torch.randn_like(p))
    grid = all_configurations(6)
    p = model.log_likelihood(grid.view(-1, *shape)).double().exp()
    x = torch.tensor([0.0, 0, 0, 1, 0, 1]).view(1, *shape)  # the bottom row observed, the top row missing
    missing = torch.tensor([True, True, True, False, False, False]).view(1, *shape)
    same = (grid[:, 3:] == x.flatten()[3:]).all(1)
    exact = p[same] / p[same].sum()  # p(top | bottom) over the 8 top rows, in grid order
    n = 4000

    def frequencies(proposals: int) -> torch.Tensor:
        cfg = USE.method("made").Config(proposals=proposals)
        out = made_complete(model, x.expand(n, *shape), missing.expand(n, *shape), cfg, torch.Generator().manual_seed(2))
        assert (out.flatten(1)[:, 3:] == x.flatten()[3:]).all()
        code = (out.flatten(1)[:, :3] * torch.tensor([4.0, 2.0, 1.0])).sum(1).long()  # grid order of the top row
        return torch.bincount(code, minlength=8).double() / n

    resampled, proposal = frequencies(64), frequencies(1)
    assert (resampled - exact).abs().sum() < 0.08  # total variation x 2; sampling error about 0.03
    assert (proposal - exact).abs().sum() > 2 * (resampled - exact).abs().sum()  # the plain proposal is off


# ----------------------------------------------------------------------------- every method
CASES = [(m, kind) for m in USE.methods for kind in ("binary", "image", "points")
         if {"binary": "binarized-mnist", "image": "mnist", "points": "breast-cancer"}[kind] in USE.methods[m].datasets]


@pytest.fixture(scope="module")
def datasets():
    return {"binary": digits("binary"), "image": digits("image"), "points": table()}


def table() -> Prepared:
    from data import sources
    from data.prepare import split

    raw = sources.breast_cancer()
    s = split(raw, val_size=0.1, test_size=0.2, seed=0)
    arrays = {k: v[0] for k, v in s.items()}
    return Prepared("breast-cancer", {"name": "breast-cancer", "kind": "points", "levels": 0, "shape": [30]}, arrays)


@pytest.mark.parametrize("method,kind", CASES)
def test_every_method_runs_keeps_observed_pixels_and_round_trips(method, kind, datasets, tmp_path):
    prepared = datasets[kind]
    family = USE.methods[method].family
    outcome = run(method, prepared, trained(family, prepared) if family else None,
                  **({"iterations": 5} if method == "gain" else {}))
    assert outcome.metrics and all(math.isfinite(v) for v in outcome.metrics.values())
    assert outcome.pictures and all(p.ndim == 2 and 0 <= p.min() and p.max() <= 1 for p in outcome.pictures.values())
    if kind == "points":
        assert set(outcome.metrics) == {"mcar20.rmse", "mcar20.rmse_fit"}
        x = prepared.arrays["test"].astype(np.float64)
        masks = [mcar(x.shape, 0.2, 5)]
    else:
        assert {f"{m}.{k}" for m in MASKS for k in ("accuracy", "psnr", "diversity")} <= set(outcome.metrics)
        if kind == "binary":
            assert any("no labels" in n for n in outcome.notes)
        x = prepared.tensor("test", 6).numpy()
        masks = [make_mask(m, len(x), (1, 8, 8), 3) for m in MASKS]
    for missing in masks:  # observed entries unchanged, missing ones filled in [0, 1]
        out = outcome.predictor.predict(with_nan(x, missing))
        assert out.shape == x.shape and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
        assert np.array_equal(out[~missing], x[~missing].astype(out.dtype))
    save_predictor(tmp_path / "p.pt", "inpaint", method, outcome.predictor)
    again = load_predictor(tmp_path / "p.pt")
    probe = with_nan(x, masks[-1])
    assert np.array_equal(again.predict(probe), outcome.predictor.predict(probe))


def test_cond_nll_is_reported_only_where_it_is_exact(datasets):
    prepared = datasets["binary"]
    metrics = run("made", prepared, trained("made", prepared)).metrics
    assert "bottom.cond_nll" in metrics and metrics["bottom.cond_nll"] > 0
    assert not any(k.endswith("cond_nll") for k in metrics if not k.startswith("bottom"))
    assert not any(k.endswith("cond_nll") for k in run("vae", prepared, trained("vae", prepared)).metrics)


def test_a_family_method_needs_its_trained_family_model(datasets):
    prepared = datasets["binary"]
    with pytest.raises(ConfigError, match="needs a trained made model"):
        run("made", prepared, None)
    with pytest.raises(ConfigError, match="needs a trained made model"):
        run("made", prepared, trained("rbm", prepared))


def test_the_regression_baseline_learns_and_a_family_sampler_varies(datasets):
    prepared = datasets["image"]
    mean = run("mean", prepared).metrics
    regression = run("regression", prepared, steps=300, hidden=64, lr=3e-3).metrics
    assert regression["bottom.psnr"] > mean["bottom.psnr"]  # the observed half predicts the missing one
    assert mean["bottom.diversity"] == 0 and regression["bottom.diversity"] == 0
    assert run("ddpm", prepared, trained("ddpm", prepared)).metrics["bottom.diversity"] > 0


def test_the_regression_predictor_picks_the_network_of_each_rows_mask(datasets):
    predictor = run("regression", datasets["image"]).predictor
    shape = (1, 8, 8)
    rows = np.concatenate([make_mask(m, 2, shape, 7) for m in MASKS])  # (8, 1, 8, 8), two rows per mask
    assert predictor.net_for(torch.from_numpy(rows)) == [m for m in MASKS for _ in range(2)]


# ----------------------------------------------------------------------------- tables
def test_iterative_predictor_replays_scikit_learns_transform():
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    t = table()
    x, missing = t.arrays["train"].astype(np.float64), mcar(t.arrays["train"].shape, 0.2, 0)
    predictor = fit_iterative(x, missing, IterativeConfig(seed=0, max_iter=3), log=lambda m: None)
    reference = IterativeImputer(max_iter=3, min_value=0.0, max_value=1.0, random_state=0)
    reference.fit(np.where(missing, np.nan, x))
    test = t.arrays["test"].astype(np.float64)
    probe = np.where(mcar(test.shape, 0.2, 1), np.nan, test)
    assert np.allclose(predictor.predict(probe), reference.transform(probe), atol=1e-9)


def test_breast_cancer_is_a_built_in_points_dataset(tmp_path):
    assert "breast-cancer" in data.DATASETS
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert "breast-cancer" in params["datasets"]
    manifest = data.prepare("breast-cancer", tmp_path / "bc", params["prepare"]["breast-cancer"], tmp_path / "raw")
    prepared = data.load(tmp_path / "bc", verify=True)
    assert manifest["kind"] == "points" and manifest["shape"] == [30] and sum(manifest["splits"].values()) == 569
    x = np.concatenate([prepared.arrays[s] for s in ("train", "val", "test")])
    assert np.allclose(x.min(0), 0) and np.allclose(x.max(0), 1)  # every feature min-max scaled
    assert set(np.unique(prepared.arrays["train_labels"])) == {0, 1}


# ----------------------------------------------------------------------------- settings and refusals
def test_every_budget_of_params_yaml_loads_into_its_method_config():
    section = yaml.safe_load((REPO / "params.yaml").read_text())["uses"]["inpaint"]
    assert set(section) == set(USE.methods)
    for name, entry in section.items():
        common = {k: v for k, v in entry.items() if k not in ("smoke", "quick", "standard", "full")}
        for budget in ("smoke", "quick", "standard", "full"):
            USE.methods[name].Config.from_dict({**common, **(entry.get(budget) or {})}, f"{name}.{budget}")
    with pytest.raises(ConfigError, match="unknown config key 'gibbs'"):
        USE.methods["rbm"].Config.from_dict({"gibbs": 3})
    with pytest.raises(ConfigError, match="unknown mask"):
        USE.methods["mean"].Config.from_dict({"masks": ["bottom", "left"]})


def test_implicit_families_are_refused_with_a_reason():
    assert set(USE.refusals) | {m.family for m in USE.methods.values() if m.family} == set(models.FAMILIES)
    with pytest.raises(ConfigError, match="gan cannot do inpaint: an implicit model"):
        USE.method("gan")
    with pytest.raises(ConfigError, match="realnvp cannot do inpaint"):
        USE.method("realnvp")
