"""The semi-supervised task (genzoo/uses/semisupervised.py): the labelled subset, the K+1 loss, every
method at its smoke settings on tiny data, and the served predictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data.errors import DataError
from data.prepared import Prepared
from genzoo.uses import UseInputs, load_predictor, save_predictor
from genzoo.uses.semisup_common import as_images, label_batches, labelled_split, labelled_subset
from genzoo.uses.semisup_nets import Classifier, k_plus_one_losses
from genzoo.uses.semisupervised import USE
from models import FAMILIES
from models.base import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
BUDGETS = ("smoke", "quick", "standard", "full")


def settings(method: str, budget: str) -> dict:
    section = yaml.safe_load(PARAMS.read_text())["uses"]["semi-supervised"][method]
    values = {k: v for k, v in section.items() if k not in BUDGETS}
    values.update(section.get(budget) or {})
    return values


def tiny_mnist(n_train: int = 300, n_test: int = 60, seed: int = 0) -> Prepared:
    """Balanced labels; class c is a bright 4x4 block at a place of its own plus noise, so a classifier can
    learn it from 2 examples a class; every image differs from every other."""
    rng = np.random.default_rng(seed)

    def split(n: int):
        y = np.arange(n) % 10
        rng.shuffle(y)
        x = rng.integers(0, 40, size=(n, 1, 28, 28), dtype=np.uint8)
        for i, c in enumerate(y):
            r, col = divmod(int(c), 5)
            x[i, 0, 4 + 12 * r: 8 + 12 * r, 2 + 5 * col: 6 + 5 * col] = 255
        return x, y.astype(np.int64)

    arrays = {}
    for name, n in (("train", n_train), ("val", n_test), ("test", n_test)):
        arrays[name], arrays[f"{name}_labels"] = split(n)
    manifest = {"name": "mnist", "kind": "image", "shape": [1, 28, 28], "levels": 256}
    return Prepared("mnist", manifest, arrays)


def test_labelled_subset_is_exactly_ten_a_class_and_seeded():
    labels = np.random.default_rng(1).integers(0, 10, size=2000)
    rows = labelled_subset(labels, 10, seed=3)
    assert len(rows) == 100 and len(np.unique(rows)) == 100
    assert np.bincount(labels[rows], minlength=10).tolist() == [10] * 10
    assert np.array_equal(rows, labelled_subset(labels, 10, seed=3))
    assert not np.array_equal(rows, labelled_subset(labels, 10, seed=4))
    with pytest.raises(ConfigError, match="class"):
        labelled_subset(labels[:50], 10, seed=0)


def test_labelled_images_come_from_the_training_split_only():
    data = tiny_mnist()
    split = labelled_split(data, 10, seed=0)
    train = data.arrays["train"].reshape(len(data.arrays["train"]), -1)
    assert split.rows.max() < len(train)  # indices into the training split
    assert np.array_equal((split.x_lab.numpy() * 255).round(), train[split.rows])
    assert np.array_equal(split.y_lab.numpy(), data.arrays["train_labels"][split.rows])
    test_rows = {row.tobytes() for row in data.arrays["test"].reshape(len(data.arrays["test"]), -1)}
    assert not any((row * 255).round().astype(np.uint8).tobytes() in test_rows for row in split.x_lab.numpy())
    assert len(split.x_unl) == len(train) - 100  # the rest of the training split, labels dropped
    # the split reads no test (or validation) array at all
    train_only = Prepared("mnist", data.manifest, {k: data.arrays[k] for k in ("train", "train_labels")})
    assert np.array_equal(labelled_split(train_only, 10, seed=0).rows, split.rows)


def test_labelled_batches_upsample_every_labelled_image_equally():
    batches = label_batches(20, 10, 6, torch.Generator().manual_seed(0))  # (6, 10): three permutations of 20
    for block in batches.view(3, 20):
        assert sorted(block.tolist()) == list(range(20))


def test_k_plus_one_loss_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    lab, unl, fake = (rng.normal(size=(4, 10)) * 2 for _ in range(3))
    y = np.array([0, 3, 9, 3])

    def softmax_with_zero(logits):  # the K+1 classes, the last logit fixed at 0
        full = np.concatenate([logits, np.zeros((len(logits), 1))], 1)
        e = np.exp(full)
        return e / e.sum(1, keepdims=True)

    p_lab, p_unl, p_fake = softmax_with_zero(lab), softmax_with_zero(unl), softmax_with_zero(fake)
    expected_lab = -np.mean(np.log(p_lab[np.arange(4), y] / (1 - p_lab[:, 10])))  # p(y | x, real)
    expected_unl = -0.5 * np.mean(np.log(1 - p_unl[:, 10])) - 0.5 * np.mean(np.log(p_fake[:, 10]))
    got_lab, got_unl = k_plus_one_losses(*(torch.tensor(a) for a in (lab, y, unl, fake)))
    assert got_lab.item() == pytest.approx(expected_lab, rel=1e-9)
    assert got_unl.item() == pytest.approx(expected_unl, rel=1e-9)


def preactivations(net: Classifier, x: torch.Tensor, noise: bool) -> list[torch.Tensor]:
    """Each layer's pre-activations on `x`, with the training noise (drawn from torch's seed) or without."""
    out, h = [], x + (net.input_noise * torch.randn_like(x) if noise else 0)
    for layer in net.hidden:
        out.append(layer(h))
        h = torch.relu(out[-1])
        h = h + (net.hidden_noise * torch.randn_like(h) if noise else 0)
    return [*out, net.out(h)]


@pytest.mark.parametrize("noisy", [False, True])
def test_data_dependent_initialisation_standardises_every_layer_on_its_batch(noisy):
    """After init_from, every unit's pre-activation has mean 0 and variance 1 on the batch, computed the
    way the batch went through: clean, or with the training noise (the reference's initialisation)."""
    x = torch.rand(256, 784, generator=torch.Generator().manual_seed(0))
    net = Classifier((64, 32), input_noise=0.3, hidden_noise=0.5)
    torch.manual_seed(5)
    net.init_from(x, noisy=noisy)
    torch.manual_seed(5)  # the same noise again
    with torch.no_grad():
        for t in preactivations(net, x, noisy):
            assert torch.allclose(t.mean(0), torch.zeros(t.shape[1]), atol=1e-4)
            assert torch.allclose(t.var(0, unbiased=False), torch.ones(t.shape[1]), atol=1e-3)
    clean = Classifier((64, 32), input_noise=0.3, hidden_noise=0.5)
    clean.load_state_dict(net.state_dict())
    clean.init_from(x, noisy=False)
    assert not torch.allclose(clean.hidden[1].g, net.hidden[1].g) if noisy else torch.equal(clean.hidden[1].g, net.hidden[1].g)


@pytest.mark.parametrize("method", ["gan", "vae", "baseline"])
@pytest.mark.parametrize("budget", BUDGETS)
def test_every_budget_loads_into_its_config(method, budget):
    USE.method(method).Config.from_dict(settings(method, budget))


def test_unknown_keys_and_families_are_refused_with_a_sentence():
    with pytest.raises(ConfigError, match="'lr_gen'"):
        USE.method("gan").Config.from_dict({"lr_gen": 1.0})
    assert set(USE.methods) - {"baseline"} | set(USE.refusals) == set(FAMILIES)
    with pytest.raises(ConfigError, match="made cannot do semi-supervised"):
        USE.method("made")


def run(method: str, data: Prepared, **changes):
    m = USE.method(method)
    config = m.Config.from_dict({**settings(method, "smoke"), **changes})
    lines = []
    outcome = m.run(UseInputs("semi-supervised", method, "mnist", data, config, torch.device("cpu"), log=lines.append))
    return m, config, outcome, lines


@pytest.mark.parametrize("method", ["gan", "vae", "baseline"])
def test_each_method_runs_and_its_predictor_round_trips(method, tmp_path):
    data = tiny_mnist()
    m, config, outcome, lines = run(method, data)
    metrics = outcome.metrics
    assert all(np.isfinite(v) for v in metrics.values())
    assert 0 <= metrics["test_error"] <= 100 and metrics["labels"] == 20
    assert lines and outcome.pictures
    for picture in outcome.pictures.values():
        assert picture.ndim == 2 and 0 <= picture.min() and picture.max() <= 1
    x = data.arrays["test"]
    predicted = outcome.predictor.predict(x)
    assert predicted.shape == (len(x),) and predicted.dtype == np.int64
    assert 100 * np.mean(predicted != data.arrays["test_labels"]) == pytest.approx(metrics["test_error"])
    assert np.array_equal(outcome.predictor.predict(x / 255.0), predicted)  # floats in [0, 1] alike
    rebuilt = m.build(outcome.predictor.config)
    rebuilt.load_state_dict(outcome.predictor.state_dict())
    assert np.array_equal(rebuilt.eval().predict(x), predicted)
    save_predictor(tmp_path / "p.pt", "semi-supervised", method, outcome.predictor)
    assert np.array_equal(load_predictor(tmp_path / "p.pt").predict(x.reshape(len(x), -1)), predicted)


def test_predictor_refuses_bad_images():
    with pytest.raises(DataError, match="shape"):
        as_images(np.zeros((3, 27, 27)))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        as_images(np.full((3, 784), 2.0))


@pytest.mark.parametrize("method", ["gan", "baseline"])
def test_the_classifier_learns_the_tiny_task(method):
    """Not only finite: 2 labels a class of the block images, 60 steps, mostly right. At the paper's lr 0.003:
    the GAN's MNIST recipe (0.001) needs more than 60 steps (measured: 47-63 % error on this task)."""
    _, _, outcome, _ = run(method, tiny_mnist(), epochs=4, steps_per_epoch=15, lr=0.003)
    assert outcome.metrics["test_error"] < 25


def test_same_seed_same_run_other_seed_other_labels():
    data = tiny_mnist()
    a, b, c = (run("baseline", data, seed=s)[2] for s in (0, 0, 1))
    assert a.metrics["test_error"] == b.metrics["test_error"]
    assert np.array_equal(a.pictures["labelled_images"], b.pictures["labelled_images"])
    assert not np.array_equal(a.pictures["labelled_images"], c.pictures["labelled_images"])
