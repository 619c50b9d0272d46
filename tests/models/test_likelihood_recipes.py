"""The training-recipe mechanics of the likelihood families (known answers, no data files).

- RBM (Hinton 2010, UTML TR 2010-003): SGD momentum is `momentum` for the first
  `momentum_switch_steps` optimiser steps and `momentum_final` after, checked on
  the optimiser's own momentum buffer (v_t = mu_t v_{t-1} + g_t); the step count
  is a buffer, so the schedule survives save/load; the weight cost shrinks W by
  (1 - lr * weight_decay) per step when the data gradient is zero, and leaves
  the biases alone; CD-k can grow from k to k_final; PCD runs with the
  schedule and its fantasy particles start at the training marginals.
- init_from_data: with every weight zero, an untrained MADE, RBM, VAE (binary
  and points decoders) and PixelCNN (binary and multi-level) predict the
  training mean (each dimension's, or the shared per-level frequencies of
  PixelCNN), so their log-likelihood is that of independent Bernoullis at the mean.
"""

from __future__ import annotations

import math

import pytest
import torch

from models import markov
from models.made import MADE
from models.pixelcnn import PixelCNN
from models.rbm import RBM
from models.vae import VAE

pytestmark = pytest.mark.usefixtures("one_thread")


def binary_train(n: int = 400, d: int = 12, seed: int = 0) -> torch.Tensor:
    """Binary rows whose column means spread over (0, 1), plus one column that is always 0."""
    g = torch.Generator().manual_seed(seed)
    rates = torch.linspace(0.1, 0.9, d - 1)
    x = (torch.rand(n, d - 1, generator=g) < rates).float()
    return torch.cat([x, torch.zeros(n, 1)], 1)  # (n, d)


def bernoulli_ll(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """log p(x) under independent Bernoullis with the given means, per row (n,)."""
    return (x * mean.log() + (1 - x) * (1 - mean).log()).sum(-1)


def clamped_mean(x: torch.Tensor) -> torch.Tensor:
    return x.float().mean(0).clamp(1e-3, 1 - 1e-3)


def zero_weights(module: torch.nn.Module) -> None:
    """Every weight tensor (not the biases) set to 0."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.endswith("bias"):
                p.zero_()


# -- RBM: momentum schedule ----------------------------------------------------
def test_rbm_momentum_switches_at_the_configured_step(tmp_path):
    train = binary_train(256, 12)
    model = RBM(RBM.Config(data_shape=(12,), data_kind="binary", hidden=5, lr=0.05, momentum=0.5,
                           momentum_final=0.9, momentum_switch_steps=3, weight_decay=0.0, init_std=0.1))
    opt = model.configure_optimizers()
    assert opt["main"].param_groups[0]["momentum"] == 0.5
    torch.manual_seed(0)
    previous = None
    seen = []
    for step in range(6):
        metrics = model.training_step(train[32 * step:32 * (step + 1)], opt)
        mu = 0.5 if step < 3 else 0.9
        seen.append(metrics["momentum"])
        assert all(group["momentum"] == mu for group in opt["main"].param_groups)
        g = model.b.grad.clone()  # this step's (negative) gradient of the visible biases: no weight cost
        buf = opt["main"].state[model.b]["momentum_buffer"]
        expected = g if previous is None else mu * previous + g
        torch.testing.assert_close(buf, expected, rtol=1e-6, atol=1e-7)
        previous = buf.clone()
    assert seen == [0.5, 0.5, 0.5, 0.9, 0.9, 0.9]
    assert int(model.steps_taken) == 6
    # The step count is state: a model restored from a checkpoint continues with the final momentum.
    torch.save(model.state_dict(), tmp_path / "rbm.pt")
    clone = RBM(model.config)
    clone.load_state_dict(torch.load(tmp_path / "rbm.pt", weights_only=True))
    assert clone.configure_optimizers()["main"].param_groups[0]["momentum"] == 0.9
    assert clone.momentum_at(2) == 0.5 and clone.momentum_at(3) == 0.9


def test_rbm_momentum_switch_zero_starts_final_and_bad_values_are_rejected():
    model = RBM(RBM.Config(data_shape=(4,), data_kind="binary", hidden=2, momentum_switch_steps=0))
    assert model.momentum_at(0) == model.config.momentum_final == 0.9
    from models.base import ConfigError

    with pytest.raises(ConfigError, match="momentum"):
        RBM.Config(data_shape=(4,), data_kind="binary", momentum_final=1.0)
    with pytest.raises(ConfigError, match="momentum_switch_steps"):
        RBM.Config(data_shape=(4,), data_kind="binary", momentum_switch_steps=-1)


# -- RBM: weight cost ----------------------------------------------------------
def _identity_chain(v: torch.Tensor, per_example: bool = True) -> torch.Tensor:
    return v  # negative samples = the data: the CD gradient of every parameter is exactly zero


def test_rbm_weight_decay_shrinks_w_when_the_data_gradient_is_zero():
    lr, wd = 0.1, 2e-4
    model = RBM(RBM.Config(data_shape=(12,), data_kind="binary", hidden=5, lr=lr, momentum=0.0,
                           momentum_final=0.0, weight_decay=wd, init_std=0.5))
    model.training_gibbs_step = _identity_chain  # the negative phase's step
    model.init_from_data(binary_train())
    W0, b0, c0 = model.W.detach().clone(), model.b.detach().clone(), model.c.detach().clone()
    opt = model.configure_optimizers()
    batch = binary_train(32, 12, seed=1)
    for _ in range(3):
        model.training_step(batch, opt)
    torch.testing.assert_close(model.W.detach(), W0 * (1 - lr * wd) ** 3, rtol=1e-6, atol=0)
    assert model.W.abs().sum() < W0.abs().sum()
    assert torch.equal(model.b.detach(), b0) and torch.equal(model.c.detach(), c0)  # no cost on the biases

    # With momentum mu the decay compounds through the velocity: v <- mu v + wd W, W <- W - lr v.
    model = RBM(RBM.Config(data_shape=(12,), data_kind="binary", hidden=5, lr=lr, momentum=0.5,
                           momentum_final=0.9, momentum_switch_steps=2, weight_decay=wd, init_std=0.5))
    model.training_gibbs_step = _identity_chain  # the negative phase's step
    W, v = model.W.detach().clone(), torch.zeros_like(model.W)
    opt = model.configure_optimizers()
    for step in range(4):
        model.training_step(batch, opt)
        v = (0.5 if step < 2 else 0.9) * v + wd * W
        W = W - lr * v
    torch.testing.assert_close(model.W.detach(), W, rtol=1e-6, atol=1e-9)

    # No weight cost, no gradient: nothing moves.
    model = RBM(RBM.Config(data_shape=(12,), data_kind="binary", hidden=5, weight_decay=0.0, init_std=0.5))
    model.training_gibbs_step = _identity_chain  # the negative phase's step
    W0 = model.W.detach().clone()
    model.training_step(batch, model.configure_optimizers())
    assert torch.equal(model.W.detach(), W0)


def test_rbm_cd_k_grows_linearly_to_k_final():
    model = RBM(RBM.Config(data_shape=(4,), data_kind="binary", hidden=2, k=1, k_final=5, k_ramp_steps=8))
    assert [model.k_at(s) for s in (0, 2, 4, 6, 8, 100)] == [1, 2, 3, 4, 5, 5]
    assert RBM(RBM.Config(data_shape=(4,), data_kind="binary", hidden=2, k=3)).k_at(10_000) == 3
    calls = []
    model.training_gibbs_step = lambda v, per_example=True: calls.append(1) or v
    opt = model.configure_optimizers()
    batch = binary_train(8, 4)
    for _ in range(9):
        metrics = model.training_step(batch, opt)
    assert len(calls) == sum(model.k_at(s) for s in range(9)) and metrics["k"] == 5.0


def test_rbm_pcd_runs_with_the_momentum_switch_and_keeps_its_particles_moving():
    train = binary_train(256, 12)
    model = RBM(RBM.Config(data_shape=(12,), data_kind="binary", hidden=5, persistent=True, chains=16,
                           momentum_switch_steps=2, init_std=0.1))
    model.init_from_data(train)
    opt = model.configure_optimizers()
    torch.manual_seed(0)
    start = model.particles.clone()
    for step in range(4):
        metrics = model.training_step(train[32 * step:32 * (step + 1)], opt)
        assert math.isfinite(metrics["loss"])
    assert metrics["momentum"] == 0.9 and not torch.equal(model.particles, start)
    assert model.particles.shape == (16, 12)
    # init_from_data draws the fantasy particles from the training marginals (not p = 0.5).
    model = RBM(RBM.Config(data_shape=(12,), data_kind="binary", hidden=5, persistent=True, chains=400))
    model.init_from_data(train)
    assert (model.particles.mean(0) - train.mean(0)).abs().max() < 0.12
    assert model.particles[:, -1].sum() <= 4  # the always-0 pixel: p = 1e-3


# -- init_from_data: a zero-weight model predicts the training mean -----------
def test_made_init_from_data_predicts_the_training_mean():
    train = binary_train()
    model = MADE(MADE.Config(data_shape=(12,), data_kind="binary", hidden=(16,), num_masks=2, natural_ordering=False))
    model.init_from_data(train)
    zero_weights(model)
    x = binary_train(50, seed=3)
    mean = clamped_mean(train)
    for m in range(2):
        torch.testing.assert_close(torch.sigmoid(model.logits(x, m)), mean.expand(50, -1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.log_likelihood(x), bernoulli_ll(x, mean), rtol=1e-5, atol=1e-4)


def test_rbm_init_from_data_predicts_the_training_mean():
    train = binary_train(400, 8)
    model = RBM(RBM.Config(data_shape=(8,), data_kind="binary", hidden=4))
    model.init_from_data(train)
    with torch.no_grad():
        model.W.zero_()  # W = 0: p(v) = prod_i sigmoid(b_i)^v_i (1 - sigmoid(b_i))^(1 - v_i)
    mean = clamped_mean(train)
    h = torch.bernoulli(torch.full((5, 4), 0.5), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.visible_probs(h), mean.expand(5, -1), rtol=1e-5, atol=1e-6)
    v = markov.binary_configurations(8, 0, 1 << 8, torch.float64, torch.device("cpu"))  # (256, 8)
    exact = -model.free_energy(v).double() - model.exact_log_partition()
    torch.testing.assert_close(exact, bernoulli_ll(v, mean.double()), rtol=1e-6, atol=1e-5)


# (The 'image' decoder, a discretised-logistic mixture, is being reworked elsewhere: not pinned here.)
@pytest.mark.parametrize("kind", ["binary", "points"])
def test_vae_init_from_data_predicts_the_training_mean(kind):
    train = binary_train()
    if kind == "points":  # real vectors
        g = torch.Generator().manual_seed(1)
        train = 3 * (train * 0.6 + 0.2 * torch.rand(train.shape, generator=g)) - 1
    model = VAE(VAE.Config(data_shape=(12,), data_kind=kind, latent_dim=3, hidden=8))
    model.init_from_data(train)
    zero_weights(model)  # the decoder ignores z: what it shows for any z is its output bias
    mean = train.mean(0)
    shown = model.sample(7, torch.Generator().manual_seed(2))  # (7, 12): the decoder's mean for 7 draws of z
    # binary: sigmoid(logit(clamped mean)); points: the mean itself
    torch.testing.assert_close(shown, mean.expand(7, -1), rtol=0, atol=1.01e-3 if kind == "binary" else 1e-5)
    if kind == "binary":
        x = binary_train(20, seed=4)
        z = torch.randn(20, 3, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(model.decoder_log_prob(x, z), bernoulli_ll(x, clamped_mean(train)),
                                   rtol=1e-5, atol=1e-4)


def test_pixelcnn_init_from_data_predicts_the_training_mean_binary():
    train = binary_train(300, 16).view(300, 1, 4, 4)
    model = PixelCNN(PixelCNN.Config(data_shape=(1, 4, 4), data_kind="binary", channels=4, layers=2))
    model.init_from_data(train)
    zero_weights(model)
    x = binary_train(10, 16, seed=5).view(10, 1, 4, 4)
    mean = train.mean()  # one bias shared by every position
    torch.testing.assert_close(torch.sigmoid(model(x)), torch.full((10, 1, 4, 4), mean.item()), rtol=1e-5, atol=1e-6)
    expected = bernoulli_ll(x.flatten(1), mean.expand(16))
    torch.testing.assert_close(model.log_likelihood(x), expected, rtol=1e-5, atol=1e-4)


def test_pixelcnn_init_from_data_predicts_the_level_frequencies():
    levels = 4
    g = torch.Generator().manual_seed(6)
    k = torch.multinomial(torch.tensor([0.1, 0.2, 0.3, 0.4]), 300 * 16, replacement=True, generator=g)
    train = (k.float() / (levels - 1)).view(300, 1, 4, 4)
    model = PixelCNN(PixelCNN.Config(data_shape=(1, 4, 4), data_kind="image", levels=levels, channels=4, layers=2))
    model.init_from_data(train)
    zero_weights(model)
    counts = torch.bincount(k, minlength=levels).double() + 1
    freq = (counts / counts.sum()).float()  # Laplace-smoothed training frequency of each level
    probs = torch.softmax(model(train[:3]), dim=1)  # (3, levels, 4, 4)
    torch.testing.assert_close(probs.permute(0, 2, 3, 1).reshape(-1, levels), freq.expand(48, -1),
                               rtol=1e-5, atol=1e-6)
    x = train[:3]
    expected = freq.log()[torch.round(x * (levels - 1)).long()].sum((1, 2, 3))
    torch.testing.assert_close(model.log_likelihood(x), expected, rtol=1e-5, atol=1e-4)


# -- MADE: weight decay on the weights only ------------------------------------
def test_made_weight_decay_applies_to_weights_not_biases():
    model = MADE(MADE.Config(data_shape=(12,), data_kind="binary", hidden=(16,), weight_decay=1e-4))
    groups = model.configure_optimizers()["main"].param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] == 1e-4 for p in g["params"]}
    assert decayed == {id(layer.weight) for layer in model.layers}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert MADE(MADE.Config(data_shape=(12,), data_kind="binary")).configure_optimizers()["main"] \
        .param_groups[0]["weight_decay"] == 0.0
