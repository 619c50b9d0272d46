"""The two backbone families, trained briefly, beat a trivial baseline on a measure that fits them
(the other families have theirs in test_autoregressive, test_flow_diffusion, test_markov, test_gmmn_iwae)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from data import sources
from genzoo.evaluation.metrics import mode_statistics


pytestmark = pytest.mark.usefixtures("one_thread")


def test_gan_captures_the_modes_of_ring8():
    x = torch.from_numpy(sources.ring8(4000, seed=0, std=0.02)[0])
    centers = sources.mode_centers("ring8")
    torch.manual_seed(0)
    gan = models.build("gan", {"data_shape": [2], "data_kind": "points", "lr": 1e-3, "hidden": 128, "latent_dim": 8})
    before = mode_statistics(gan.sample(1000, torch.Generator().manual_seed(1)).numpy(), centers, 0.02)
    opts, g = gan.configure_optimizers(), torch.Generator().manual_seed(0)
    for _ in range(1000):
        gan.training_step(x[torch.randint(0, len(x), (128,), generator=g)], opts)
    after = mode_statistics(gan.sample(1000, torch.Generator().manual_seed(1)).numpy(), centers, 0.02)
    assert before["modes_captured"] <= 2
    assert after["modes_captured"] >= 6 and after["kl_to_uniform"] < before["kl_to_uniform"]


def test_vae_elbo_beats_independent_bernoulli_on_structured_binary_data():
    rng = np.random.default_rng(0)
    prototypes = rng.random((4, 16)) < 0.5
    def draw(n):
        x = prototypes[rng.integers(0, 4, n)]
        return torch.from_numpy((x ^ (rng.random((n, 16)) < 0.05)).astype(np.float32)).view(n, 1, 4, 4)
    train, test = draw(2000), draw(500)
    p = train.mean(0).clamp(1e-3, 1 - 1e-3)
    baseline = (test * p.log() + (1 - test) * (1 - p).log()).flatten(1).sum(1).mean().item()
    torch.manual_seed(0)
    vae = models.build("vae", {"data_shape": [1, 4, 4], "data_kind": "binary", "latent_dim": 4, "hidden": 64})
    opts, g = vae.configure_optimizers(), torch.Generator().manual_seed(0)
    for _ in range(600):
        vae.training_step(train[torch.randint(0, len(train), (64,), generator=g)], opts)
    torch.manual_seed(1)
    elbo = vae.log_likelihood(test).mean().item()
    assert elbo > baseline + 2.0, (elbo, baseline)  # a lower bound above the baseline's exact log-likelihood
