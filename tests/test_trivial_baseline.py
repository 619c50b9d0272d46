"""The trivial baseline every row is compared with: a proper distribution, fitted in closed form."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from genzoo.baselines import FactorisedBaseline, beats_baseline, class_shares


def test_binary_baseline_sums_to_one_and_matches_the_means():
    train = torch.bernoulli(torch.full((500, 1, 2, 2), 0.3), generator=torch.Generator().manual_seed(0))
    model = FactorisedBaseline(train, "binary", 2)
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).view(16, 1, 2, 2)
    assert model.log_likelihood(every).exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    assert torch.allclose(model.p, (train.flatten(1).double().sum(0) + 1) / 502)
    samples = model.sample(20000, torch.Generator().manual_seed(1))
    assert samples.shape == (20000, 1, 2, 2) and set(samples.unique().tolist()) <= {0.0, 1.0}
    assert samples.mean().item() == pytest.approx(0.3, abs=0.02)


def test_image_baseline_is_a_categorical_over_levels():
    levels = 3
    train = torch.randint(0, levels, (300, 1, 1, 2), generator=torch.Generator().manual_seed(0)).float() / (levels - 1)
    model = FactorisedBaseline(train, "image", levels)
    every = torch.tensor(list(itertools.product(range(levels), repeat=2))).float().view(-1, 1, 1, 2) / (levels - 1)
    assert model.log_likelihood(every).exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    x = model.sample(100, torch.Generator().manual_seed(2))
    assert set((x * (levels - 1)).round().unique().tolist()) <= {0.0, 1.0, 2.0}


def test_points_baseline_is_the_fitted_gaussian():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(5000, 2, generator=g) * torch.tensor([2.0, 0.5]) + torch.tensor([1.0, -1.0])
    model = FactorisedBaseline(train, "points", 0)
    x = model.sample(20000, torch.Generator().manual_seed(3))
    assert torch.allclose(x.mean(0), torch.tensor([1.0, -1.0]), atol=0.05)
    assert torch.allclose(x.std(0), torch.tensor([2.0, 0.5]), atol=0.05)


def test_beats_baseline_follows_the_primary_measure():
    assert beats_baseline({"test_nll": 80.0}, {"test_nll": 200.0}) is True
    assert beats_baseline({"test_nll": 300.0, "fid": 1.0}, {"test_nll": 200.0, "fid": 9.0}) is False
    assert beats_baseline({"modes_captured": 8, "high_quality_fraction": 0.1},
                          {"modes_captured": 3, "high_quality_fraction": 0.9}) is True
    assert beats_baseline({"modes_captured": 8, "high_quality_fraction": 0.1},
                          {"modes_captured": 8, "high_quality_fraction": 0.2}) is False
    assert beats_baseline({"fid": 10.0}, {"fid": 50.0}) is True
    assert beats_baseline({"parzen_ll": 1.0}, {"fid": 50.0}) is None


def test_class_shares():
    out = class_shares(np.array([0, 0, 1, 3]), 4)
    assert out == {"classes_hit": 3, "classes_total": 4, "max_class_share": 0.5, "min_class_share": 0.0}
