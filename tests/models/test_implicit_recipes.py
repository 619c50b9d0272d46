"""The paper-like options the implicit families' recipes rely on (fast, deterministic).

- GSN (Bengio et al. 2014, arXiv:1306.1091): salt-and-pepper corruption of images replaces about
  the configured fraction of pixels by fair coins; Gaussian noise in the hidden pre-activations is
  used in training and sampling and absent from the deterministic path (`noisy=False`, `denoise`);
- GMMN (Li et al. 2015, arXiv:1502.02761): on 784-dimensional MNIST-like data, length-scales of 1
  and below give a kernel (and a loss gradient) of ~0 between distinct points, while the recipe's
  2..80 give a real gradient.
"""

from __future__ import annotations

import pytest
import torch

from models.base import ConfigError
from models.gmmn import GMMN, GMMNConfig
from models.gsn import GSN, GSNConfig
from models.kernels import mixture_kernel, mmd

DEAD = (0.05, 0.1, 0.2, 0.5, 1.0)  # the small end of the default set
RECIPE = (2.0, 5.0, 10.0, 20.0, 40.0, 80.0)  # Li et al.'s reference code


def gsn(kind: str = "image", shape=(1, 28, 28), **kw) -> GSN:
    torch.manual_seed(0)
    return GSN(GSNConfig(data_shape=shape, data_kind=kind, hidden=32, **kw))


# -- GSN corruption --------------------------------------------------------------------------
def test_salt_and_pepper_replaces_about_the_configured_fraction_of_grey_pixels():
    model = gsn(corruption="salt_pepper", salt_pepper=0.4)
    x = torch.full((200, 784), 0.5)  # grey: every replaced pixel becomes 0 or 1, so it shows
    out = model.corrupt(x, torch.Generator().manual_seed(1))
    replaced = out != 0.5
    assert abs(replaced.float().mean().item() - 0.4) < 0.01  # 156,800 pixels: sd of the share ~0.0012
    assert set(out[replaced].unique().tolist()) == {0.0, 1.0}  # salt and pepper only
    assert abs(out[replaced].mean().item() - 0.5) < 0.01  # a fair coin
    assert torch.equal(out[~replaced], x[~replaced])  # the others are untouched


def test_salt_and_pepper_on_binary_flips_half_the_replaced_units():
    model = gsn("binary", (1, 28, 28), salt_pepper=0.4)  # corruption 'auto' is salt-and-pepper on binary
    x = (torch.rand(200, 784, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    out = model.corrupt(x, torch.Generator().manual_seed(3))
    assert abs((out != x).float().mean().item() - 0.2) < 0.01  # a replaced unit keeps its value half the time


def test_auto_corruption_keeps_gaussian_noise_on_images_and_points():
    for kind, shape in (("image", (1, 8, 8)), ("points", (2,))):
        model = gsn(kind, shape, noise_std=0.1)
        assert model.config.corruption_kind == "gaussian"
        x = torch.full((4000, model.config.dim), 0.5)
        noise = model.corrupt(x, torch.Generator().manual_seed(4)) - x
        assert abs(noise.std().item() - 0.1) < 0.005


def test_gsn_corruption_and_hidden_noise_are_checked():
    with pytest.raises(ConfigError, match="salt_pepper"):
        GSNConfig(data_shape=(2,), data_kind="points", corruption="salt_pepper")
    with pytest.raises(ConfigError, match="corruption"):
        GSNConfig(data_shape=(4,), data_kind="image", corruption="masking")
    with pytest.raises(ConfigError, match="hidden_noise"):
        GSNConfig(data_shape=(4,), data_kind="image", hidden_noise=-1.0)


# -- GSN hidden noise ----------------------------------------------------------------------
def test_hidden_noise_is_off_in_the_deterministic_path_and_on_in_training_and_sampling():
    model = gsn(corruption="salt_pepper", salt_pepper=0.4, hidden_noise=2.0)
    x = torch.rand(16, 784, generator=torch.Generator().manual_seed(5))
    quiet = [model.reconstruction(x, noisy=False)[0] for _ in range(2)]
    assert torch.equal(quiet[0], quiet[1])  # noisy=False: a function of x~ alone
    assert torch.equal(model.denoise(x), torch.sigmoid(quiet[0]))
    noisy = [model.reconstruction(x, generator=torch.Generator().manual_seed(s))[0] for s in (6, 7)]
    assert not torch.allclose(noisy[0], noisy[1])  # training / chain path: the hidden noise is there
    assert (noisy[0] - quiet[0]).abs().mean() > 0.1
    # one seeded chain step is reproducible, and differs from the step of a model without hidden noise
    step = [model.transition(x, torch.Generator().manual_seed(8)) for _ in range(2)]
    assert torch.equal(step[0], step[1])
    plain = gsn(corruption="salt_pepper", salt_pepper=0.4)
    plain.load_state_dict(model.state_dict())
    assert not torch.allclose(plain.transition(x, torch.Generator().manual_seed(8)), step[0])


def test_without_hidden_noise_the_noisy_path_is_the_deterministic_one():
    model = gsn(corruption="salt_pepper")  # hidden_noise 0 (the default): the old behaviour
    x = torch.rand(8, 784, generator=torch.Generator().manual_seed(9))
    assert torch.equal(model.reconstruction(x)[0], model.reconstruction(x, noisy=False)[0])


def test_walkback_loss_with_hidden_noise_reaches_every_parameter():
    model = gsn(corruption="salt_pepper", salt_pepper=0.4, hidden_noise=2.0)
    x = (torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(10)) < 0.2).float()
    model.walkback_loss(x, torch.Generator().manual_seed(11)).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# -- GMMN bandwidths on 784-d data ---------------------------------------------------------
def mnist_like(n: int, seed: int) -> torch.Tensor:
    """Sparse 'ink' images: 784 pixels, ~13% on (MNIST's mean); squared distances ~ 100-200."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 784, generator=g) < 0.13).float() * torch.rand(n, 784, generator=g).add(0.5).clamp(max=1)


def test_dead_bandwidths_see_only_the_diagonal_on_784_dimensional_data():
    x = mnist_like(64, 0)
    k = mixture_kernel(x, x, DEAD)
    off = k[~torch.eye(64, dtype=torch.bool)]
    assert off.max() < 1e-20  # e^{-d^2/2} with d^2 > 50: nothing between distinct images
    assert torch.allclose(k.diagonal(), torch.full((64,), float(len(DEAD))))
    live = mixture_kernel(x, x, RECIPE)[~torch.eye(64, dtype=torch.bool)]
    assert live.min() > 1.0  # s = 10..80 alone give > 3 * e^{-1.5}


def test_gmmn_loss_gradient_is_zero_with_dead_bandwidths_and_real_with_the_recipe():
    data, fake0 = mnist_like(64, 1), mnist_like(64, 2)  # generated: other images of the same kind
    grads = {}
    for name, bws in (("dead", DEAD), ("recipe", RECIPE)):
        fake = fake0.clone().requires_grad_(True)
        loss = mmd(fake, data, bws)
        loss.backward()
        grads[name] = fake.grad.norm().item()
        if name == "dead":  # known answer: MMD_b^2 = S/n + S/m from the two diagonals, a constant
            assert loss.item() == pytest.approx((2 * len(DEAD) / 64) ** 0.5, rel=1e-5)
    assert grads["dead"] < 1e-12
    assert grads["recipe"] > 1e-3


def test_gmmn_generator_is_pulled_towards_the_data_only_with_live_bandwidths():
    """The data term -2 mean K(fake, data) of the loss: with length-scales <= 1 it has no gradient
    for an (untrained) generator; with the recipe's it does. (Between the near-identical samples of
    an untrained generator small length-scales are alive: they only push samples apart.)"""
    data = mnist_like(64, 3)
    norms = {}
    for name, bws in (("dead", DEAD), ("recipe", RECIPE)):
        torch.manual_seed(0)
        model = GMMN(GMMNConfig(data_shape=(1, 28, 28), data_kind="image", bandwidths=bws, hidden=(32, 32)))
        model.init_from_data(data.view(64, 1, 28, 28))
        fake = model.generator(model.draw_noise(64, torch.Generator().manual_seed(4)))
        (-2 * mixture_kernel(fake, data, bws).mean()).backward()
        norms[name] = sum(p.grad.norm() ** 2 for p in model.generator.parameters()).sqrt().item()
    assert norms["dead"] < 1e-10
    assert norms["recipe"] > 1e-3
