"""translate (genzoo/uses/translate.py): the edge maps (deterministic, binary, where the digit's
outline is), the input check, and every method's run at a tiny config on tiny synthetic digits with
a predictor that round-trips through its saved config and weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from genzoo.uses import UseInputs, get_use, load_predictor, save_predictor
from genzoo.uses.translate import USE, check_edges, consistency, edges
from models.base import ConfigError
from tests.conftest import REPO
from tests.uses.test_superres import FAMILIES, run, tiny_digits

pytestmark = pytest.mark.usefixtures("one_thread")


def test_edge_maps_are_deterministic_and_binary():
    digits = torch.from_numpy(tiny_digits().arrays["train"][:32]).float() / 255
    a, b = edges(digits), edges(digits.clone())
    assert a.shape == digits.shape and a.dtype == torch.float32
    assert a.numpy().tobytes() == b.numpy().tobytes()
    assert set(np.unique(a.numpy())) <= {0.0, 1.0} and a.sum() > 0
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert edges(digits).numpy().tobytes() == a.numpy().tobytes()
    finally:
        torch.set_num_threads(previous)


def test_edges_outline_a_square_and_follow_a_shift():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10:16, 10:16] = 1.0
    e = edges(x)[0, 0]
    assert e[12:14, 12:14].sum() == 0 and e[:8].sum() == 0 and e[18:].sum() == 0  # flat inside and far outside
    assert e[10, 10:16].all() and e[9, 11:15].all() and e[15, 10:16].all() and e[16, 11:15].all()  # both sides of a step
    assert edges(torch.zeros(2, 1, 28, 28)).sum() == 0
    shifted = torch.roll(x, (3, -2), (2, 3))
    assert torch.equal(edges(shifted), torch.roll(edges(x), (3, -2), (2, 3)))
    faint = x * 0.4  # a step of 0.4 gives a Sobel magnitude of at most 1.6, under the threshold of 2
    assert edges(faint).sum() == 0
    assert consistency(x, edges(x)) == 0.0 and consistency(torch.zeros_like(x), edges(x)) == float(e.mean())


def test_edge_input_is_checked():
    assert check_edges(np.ones((2, 1, 28, 28), np.uint8)).dtype == torch.float32
    with pytest.raises(ValueError, match="only 0 and 1"):
        check_edges(np.full((2, 1, 28, 28), 0.5))
    with pytest.raises(ValueError, match=r"\(n, 1, 28, 28\)"):
        check_edges(np.zeros((2, 28, 28)))


@pytest.mark.parametrize("method", ["l1", "gan", "ddpm"])
def test_method_runs_measures_and_round_trips(method, tmp_path):
    m, outcome = run(USE, method)
    for key, _ in USE.columns:
        assert np.isfinite(outcome.metrics[key]), key
    assert outcome.metrics["diversity"] == 0.0 if method == "l1" else outcome.metrics["diversity"] > 0
    assert 0 <= outcome.metrics["consistency"] <= 1
    e = edges(torch.from_numpy(tiny_digits(seed=5).arrays["test"][:5]).float() / 255).numpy()
    pred = outcome.predictor
    y = pred.predict(e, seed=1)
    assert y.shape == (5, 1, 28, 28) and y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1
    if method != "l1":
        assert not np.array_equal(pred.predict(e, seed=2), y)
    rebuilt = m.build(pred.config)
    rebuilt.load_state_dict(pred.state_dict())
    assert np.array_equal(rebuilt.eval().predict(e, seed=1), y)
    save_predictor(tmp_path / "p.pt", USE.name, method, pred)
    assert np.array_equal(load_predictor(tmp_path / "p.pt").predict(e, seed=1), y)


def test_registry_refusals_and_configs():
    assert get_use("translate") is USE
    assert set(USE.methods) | set(USE.refusals) >= set(FAMILIES) and not set(USE.methods) & set(USE.refusals)
    with pytest.raises(ConfigError, match="cannot do translate: genzoo's GMMN"):
        USE.method("gmmn")
    sections = yaml.safe_load((REPO / "params.yaml").read_text())["uses"]["translate"]
    assert set(sections) == set(USE.methods)
    for name, section in sections.items():
        common = {k: v for k, v in section.items() if k not in ("smoke", "quick", "standard", "full")}
        for budget in ("smoke", "quick", "standard", "full"):
            USE.method(name).Config.from_dict({**common, **section[budget]})


def test_other_data_is_refused():
    data = tiny_digits()
    data.manifest = {**data.manifest, "shape": [1, 8, 8]}
    m = USE.method("l1")
    with pytest.raises(ConfigError, match="28x28 grey images"):
        m.run(UseInputs("translate", "l1", "tiny", data, m.Config.from_dict({}), torch.device("cpu")))
