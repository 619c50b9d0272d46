"""The contract every registered family keeps, parametrised over the family registry."""

from __future__ import annotations


import pytest
import torch

import models
from models import FAMILIES
from models.base import ConfigError, NoLikelihood

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only add contention (conftest)

SHAPES = {"points": (2,), "image": (1, 8, 8), "binary": (1, 8, 8)}
CASES = [(name, kind) for name, cls in FAMILIES.items() for kind in cls.supported_kinds]


def batch(kind: str, n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "points":
        return torch.randn((n, 2), generator=g)
    x = torch.rand((n, *SHAPES[kind]), generator=g)
    if kind == "binary":
        return (x > 0.5).float()
    return torch.round(x * 16) / 16  # 17 levels, like the 8x8 digits


def make(name: str, kind: str) -> models.GenerativeModel:
    torch.manual_seed(0)
    return models.build(name, {"data_shape": list(SHAPES[kind]), "data_kind": kind, "levels": 17})


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name,kind", CASES)
def test_training_step_loss_gradients_and_update(name, kind):
    model = make(name, kind)
    before = snapshot(model)
    metrics = model.training_step(batch(kind), model.configure_optimizers())
    assert "loss" in metrics and all(torch.isfinite(torch.tensor(float(v))) for v in metrics.values()), metrics
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad}"
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged, f"parameters that one step did not change: {unchanged}"


@pytest.mark.parametrize("name,kind", CASES)
def test_sample_shape_range_reproducible_and_pure(name, kind):
    model = make(name, kind)
    model.training_step(batch(kind), model.configure_optimizers())
    before = snapshot(model)
    a = model.sample(5, torch.Generator().manual_seed(3))
    b = model.sample(5, torch.Generator().manual_seed(3))
    assert a.shape == (5, *SHAPES[kind]) and a.device.type == "cpu"
    assert torch.isfinite(a).all()
    if kind != "points":
        assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b), "same seed, different samples"
    assert model.sample(2).shape == (2, *SHAPES[kind])  # no generator works too
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "sampling changed the model's state"


@pytest.mark.parametrize("name,kind", CASES)
def test_likelihood_kind_and_evaluation_changes_nothing(name, kind):
    model = make(name, kind)
    cls = FAMILIES[name]
    assert cls.likelihood_kind in ("exact", "bound", "estimate", "none")
    assert cls.branch and cls.paper
    before = snapshot(model)
    x = batch(kind, n=8)
    if cls.likelihood_kind == "none":
        with pytest.raises(NoLikelihood):
            model.log_likelihood(x)
    else:
        torch.manual_seed(0)
        ll = model.log_likelihood(x)
        assert ll.shape == (8,) and torch.isfinite(ll).all()
        if kind != "points":
            assert (ll <= 1e-4).all(), "a probability of discrete data above 1"
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "evaluation changed the model's state"


@pytest.mark.parametrize("name,kind", CASES)
def test_save_load_gives_identical_samples(name, kind, tmp_path):
    model = make(name, kind)
    model.training_step(batch(kind), model.configure_optimizers())
    model.save(tmp_path / "m.pt")
    loaded = models.load(tmp_path / "m.pt")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert torch.equal(model.sample(4, torch.Generator().manual_seed(7)), loaded.sample(4, torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_config_rejects_unknown_keys_and_unfit_data(name):
    cls = FAMILIES[name]
    with pytest.raises(ConfigError, match="unknown config key 'no_such_key'"):
        cls.Config.from_dict({"data_shape": [2], "data_kind": "points", "no_such_key": 1})
    with pytest.raises(ConfigError):
        cls.Config.from_dict({"data_shape": [0], "data_kind": "points"})
    for kind in set(SHAPES) - set(cls.supported_kinds):
        with pytest.raises(ConfigError, match="does not fit"):
            make(name, kind)


def test_registry_holds_every_family_in_models():
    """Every family class defined in a models/ file is in FAMILIES under its own name, so a family
    dropped from the registry cannot silently shrink this contract suite."""
    import importlib
    import inspect
    import pkgutil

    defined = {}
    for info in pkgutil.iter_modules(models.__path__):
        module = importlib.import_module(f"models.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, models.GenerativeModel) and cls is not models.GenerativeModel \
                    and cls.__module__ == module.__name__:
                defined[cls.name] = cls
    assert len(defined) >= 9 and defined == FAMILIES, f"models/ defines {sorted(defined)}, FAMILIES has {sorted(FAMILIES)}"
    for name, cls in FAMILIES.items():
        assert cls.name == name and issubclass(cls.Config, models.FamilyConfig)


@pytest.mark.parametrize("name", [n for n, cls in FAMILIES.items() if "image" in cls.supported_kinds])
def test_three_channel_images_train_and_sample_or_are_refused(name):
    """Stacked MNIST is (3, 28, 28): every image family trains and samples on 3 channels, or says it cannot."""
    config = {"data_shape": [3, 8, 8], "data_kind": "image", "levels": 256}
    if name == "pixelcnn":
        with pytest.raises(ConfigError, match="single-channel images only"):
            models.build(name, config)
        return
    torch.manual_seed(0)
    model = models.build(name, config)
    x = torch.round(torch.rand((8, 3, 8, 8), generator=torch.Generator().manual_seed(0)) * 255) / 255
    metrics = model.training_step(x, model.configure_optimizers())
    assert all(torch.isfinite(torch.tensor(float(v))) for v in metrics.values()), metrics
    s = model.sample(4, torch.Generator().manual_seed(3))
    assert s.shape == (4, 3, 8, 8) and torch.isfinite(s).all() and s.min() >= 0 and s.max() <= 1
