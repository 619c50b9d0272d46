"""GAN options beyond the contract: PacGAN packing (Lin et al. 2018), the MLP players' depth and
generator BatchNorm, and the 2-D points recipe (params.yaml `recipes.gan.points`) against the old one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from data import sources
from genzoo.config import TrainConfig
from genzoo.evaluation.metrics import mode_statistics
from genzoo.training import fit
from models.base import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def build(shape, kind="points", **values) -> models.GenerativeModel:
    torch.manual_seed(0)
    return models.build("gan", {"data_shape": list(shape), "data_kind": kind, **values})


def data(shape, n, kind="points"):
    g = torch.Generator().manual_seed(0)
    return torch.randn((n, *shape), generator=g) if kind == "points" else torch.rand((n, *shape), generator=g)


@pytest.mark.parametrize("shape,kind", [((2,), "points"), ((1, 8, 8), "image"), ((3, 8, 8), "image"),
                                        ((1, 6, 6), "image")])
@pytest.mark.parametrize("pack", [2, 4])
def test_pack_keeps_the_contract(shape, kind, pack):
    model = build(shape, kind, pack=pack, hidden=32, width=8, latent_dim=4)
    first = next(model.discriminator.parameters())  # the first layer sees `pack` samples side by side
    dim = int(np.prod(shape))
    assert first.shape[1] == (pack * shape[0] if len(shape) == 3 and shape[1] % 4 == 0 else pack * dim)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = model.training_step(data(shape, 16, kind), model.configure_optimizers())
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    s = model.sample(5, torch.Generator().manual_seed(1))  # sampling does not pack: any n
    assert s.shape == (5, *shape) and torch.equal(s, model.sample(5, torch.Generator().manual_seed(1)))
    assert model.critic(data(shape, 4 * pack, kind)).shape == (4,)


def test_a_pack_is_consecutive_samples_and_only_them():
    model = build((2,), pack=2, hidden=16)
    x = data((2,), 6)
    y = x.clone()
    y[3] += 1.0  # second member of the second pack
    a, b = model.critic(x), model.critic(y)
    assert a[0] == b[0] and a[2] == b[2] and a[1] != b[1]


def test_batch_not_a_multiple_of_pack_drops_the_rest_and_too_small_a_batch_is_refused():
    model = build((2,), pack=4, hidden=16)
    opts = model.configure_optimizers()
    assert np.isfinite(model.training_step(data((2,), 10), opts)["loss"])  # 8 samples used: 2 packs
    with pytest.raises(ConfigError, match="pack=4 needs at least 4 samples"):
        model.training_step(data((2,), 3), opts)
    with pytest.raises(ValueError, match="multiple of pack=4"):
        model.critic(data((2,), 6))
    for bad in ({"pack": 0}, {"depth": 0}, {"beta1": 1.0}):
        with pytest.raises(ConfigError):
            build((2,), **bad)


def test_depth_and_generator_batchnorm_and_image_players_unchanged():
    deep = build((2,), hidden=24, depth=4, g_batchnorm=True)
    linears = [m for m in deep.generator if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 5 and sum(isinstance(m, torch.nn.BatchNorm1d) for m in deep.generator) == 4
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in deep.discriminator)
    default = build((2,))  # defaults: the old 2 x 256 players, no BatchNorm
    assert [m.out_features for m in default.generator if isinstance(m, torch.nn.Linear)] == [256, 256, 2]
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in default.generator)
    conv = build((1, 8, 8), "image", pack=1)
    assert type(conv.discriminator).__name__ == "ConvDiscriminator" and conv.discriminator.net[0].in_channels == 1


def test_mlp_players_on_images_with_discriminator_dropout():
    """`players: mlp` gives an image the MLP players the conv stack would replace; `d_dropout` drops only in
    the discriminator and only while training."""
    model = build((1, 8, 8), "image", players="mlp", hidden=32, d_dropout=0.5, latent_dim=4)
    assert type(model.discriminator).__name__ == "Sequential" and model.discriminator[0].in_features == 64
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.discriminator) == 2
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.generator)
    x = data((1, 8, 8), 16, "image")
    model.init_from_data(x)  # the generator's sigmoid outputs start at the pixel means
    assert torch.allclose(torch.sigmoid(model.generator[-2].bias), x.flatten(1).mean(0).clamp(1e-3, 1 - 1e-3),
                          atol=1e-3)
    model.eval()
    assert torch.equal(model.critic(x), model.critic(x))  # no dropout in eval mode
    model.train()
    assert not torch.equal(model.critic(x), model.critic(x))
    assert np.isfinite(model.training_step(x, model.configure_optimizers())["loss"])
    assert model.sample(3, torch.Generator().manual_seed(1)).shape == (3, 1, 8, 8)
    for bad in ({"players": "maxout"}, {"d_dropout": 1.0}):
        with pytest.raises(ConfigError):
            build((1, 8, 8), "image", **bad)


@pytest.mark.parametrize("shape,kind,pack", [((2,), "points", 1), ((2,), "points", 2), ((1, 8, 8), "image", 2)])
def test_r1_penalty_is_the_squared_input_gradient_of_real_logits(shape, kind, pack):
    """R1 (Mescheder et al. 2018): the mean over packs of ||d logit / d x||^2 on real data, checked against
    central finite differences of the critic in float64; the discriminator's loss adds r1 / 2 times it."""
    model = build(shape, kind, pack=pack, hidden=16, width=8, latent_dim=4, r1=2.0).double().eval()  # eval: no dropout
    x = data(shape, 3 * pack, kind).double()
    real = x.clone().requires_grad_(True)
    penalty = model.r1_penalty(real, model.critic(real)).item()
    eps, flat = 1e-6, x.reshape(len(x), -1)
    squares = torch.zeros(len(x) // pack, dtype=torch.float64)  # per pack
    with torch.no_grad():
        for j in range(flat.shape[0]):
            for i in range(flat.shape[1]):
                up, down = flat.clone(), flat.clone()
                up[j, i] += eps
                down[j, i] -= eps
                diff = (model.critic(up.view_as(x)) - model.critic(down.view_as(x))) / (2 * eps)  # (packs,)
                assert torch.count_nonzero(diff.abs() > 1e-9) <= 1  # only sample j's pack moves
                squares[j // pack] += diff[j // pack] ** 2
    assert penalty == pytest.approx(squares.mean().item(), rel=1e-5) and penalty > 0
    assert build((2,), r1=0.5).config.r1 == 0.5
    with pytest.raises(ConfigError, match="r1 must not be negative"):
        build((2,), r1=-1.0)


def test_r1_training_step_reports_the_penalty_and_trains():
    model = build((2,), hidden=16, latent_dim=2, r1=1.0)
    opts = model.configure_optimizers()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = model.training_step(data((2,), 32), opts)
    assert metrics["r1_penalty"] > 0 and all(np.isfinite(float(v)) for v in metrics.values())
    assert all(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    plain = build((2,), hidden=16, latent_dim=2)
    assert "r1_penalty" not in plain.training_step(data((2,), 32), plain.configure_optimizers())


def test_sampling_uses_batchnorm_running_statistics():
    """Samples come from eval mode: each is a function of its own noise (no batch statistics), the running
    statistics are those the training steps left, and sampling leaves the model in the mode it found."""
    model = build((2,), hidden=16, depth=2, g_batchnorm=True, latent_dim=2)
    opts = model.configure_optimizers()
    for _ in range(20):
        model.training_step(data((2,), 64), opts)
    bn = next(m for m in model.generator if isinstance(m, torch.nn.BatchNorm1d))
    assert bn.num_batches_tracked.item() == 20 and not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.eval()
        expected, first = model.generate(z), model.generate(z[:1])  # no batch statistics: row 0 alone is row 0
        model.train()
    assert torch.allclose(first[0], expected[0], atol=1e-6)
    assert torch.allclose(model.sample(50, torch.Generator().manual_seed(2)), expected)
    assert model.sample(1).shape == (1, 2) and model.training  # a batch of one samples; the mode is restored


# -- the 2-D recipe -----------------------------------------------------------------------------------------
# (model settings, train settings): the defaults before the points recipe, and params.yaml `recipes.gan.points`
OLD = ({"lr": 2e-4, "hidden": 256}, {"batch_size": 128, "schedule": "constant"})
NEW = ({"lr": 5e-4, "hidden": 400, "depth": 4, "latent_dim": 2},
       {"batch_size": 100, "schedule": "cosine", "min_lr_ratio": 0.01})


def ring8_modes(model_values: dict, train_values: dict, steps: int) -> dict:
    x, _ = sources.ring8(4000, seed=0)
    torch.manual_seed(0)
    model = models.build("gan", {"data_shape": [2], "data_kind": "points", **model_values})
    cfg = TrainConfig(epochs=1, steps_per_epoch=steps, val_examples=0, **train_values)
    fit(model, torch.as_tensor(x, dtype=torch.float32), cfg, log=lambda _: None)
    samples = model.sample(2500, torch.Generator().manual_seed(1234)).numpy()
    return mode_statistics(samples, sources.mode_centers("ring8"), 0.01)


def test_new_points_recipe_beats_the_old_one_on_ring8_at_a_tiny_budget():
    steps = 1000  # measured 2026-12-02: old 0 modes, new 8 (at 400 steps both 1: too close to call)
    old, new = ring8_modes(*OLD, steps), ring8_modes(*NEW, steps)
    assert new["modes_captured"] > old["modes_captured"], (old, new)
