"""MMD kernels, the GMMN family (plain and +AE) and the VAE's IWAE-k bound: the mathematics, on tiny data."""

from __future__ import annotations

import math

import pytest
import torch

from models.base import ConfigError
from models.gmmn import GMMN, GMMNConfig
from models.kernels import mixture_kernel, mmd, mmd2
from models.vae import VAE, VAEConfig

BWS = (0.5, 1.0, 2.0)


pytestmark = pytest.mark.usefixtures("one_thread")


# -- MMD --------------------------------------------------------------------------------
def test_mixture_kernel_matches_definition():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    d2 = torch.cdist(x, y) ** 2
    expected = sum(torch.exp(-d2 / (2 * s**2)) for s in BWS)
    torch.testing.assert_close(mixture_kernel(x, y, BWS), expected)
    assert torch.all(mixture_kernel(x, x, BWS).diagonal() == len(BWS))  # k(x, x) = number of kernels


def test_mixture_kernel_gradients_match_the_definitions():
    # The kernel's backward pass is written out (models/kernels.py): check it against autograd through the
    # definition, for x against itself, x against y with both needing gradients, and against a fixed y.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(6, 6, generator=g, dtype=torch.float64)

    def by_definition(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sum(torch.exp(-d2 / (2 * s**2)) for s in BWS)

    for ours, reference, inputs in (
        (lambda: mixture_kernel(x, x, BWS), lambda: by_definition(x, x), (x,)),
        (lambda: mixture_kernel(x, y, BWS), lambda: by_definition(x, y), (x, y)),
        (lambda: mixture_kernel(x, y.detach(), BWS), lambda: by_definition(x, y.detach()), (x,)),
    ):
        k = ours()
        w = weights[: k.shape[0], : k.shape[1]]
        got = torch.autograd.grad((k * w).sum(), inputs)
        want = torch.autograd.grad((reference() * w).sum(), inputs)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda a, b: mixture_kernel(a, b, BWS), (x, y))


def test_mmd_hand_computed():
    # x = {0, 1}, y = {0, 2}; kernel sum over s in {1, 2}: k(d) = exp(-d^2/2) + exp(-d^2/8).
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    k = lambda d: math.exp(-(d**2) / 2) + math.exp(-(d**2) / 8)  # noqa: E731
    kxx = [[k(0), k(1)], [k(1), k(0)]]
    kyy = [[k(0), k(2)], [k(2), k(0)]]
    kxy = [[k(0), k(2)], [k(1), k(1)]]
    mean = lambda m: sum(map(sum, m)) / 4  # noqa: E731
    biased = mean(kxx) + mean(kyy) - 2 * mean(kxy)
    unbiased = k(1) + k(2) - 2 * mean(kxy)  # off-diagonal means of 2x2 matrices
    assert mmd2(x, y, (1.0, 2.0)).item() == pytest.approx(biased, rel=1e-12)
    assert mmd2(x, y, (1.0, 2.0), unbiased=True).item() == pytest.approx(unbiased, rel=1e-12)
    # closed form of the single-kernel case, s = 1: biased = (1 - e^-1/2) / 2, unbiased = (e^-2 - 1) / 2
    assert mmd2(x, y, (1.0,)).item() == pytest.approx((1 - math.exp(-0.5)) / 2, rel=1e-12)
    assert mmd2(x, y, (1.0,), unbiased=True).item() == pytest.approx((math.exp(-2) - 1) / 2, rel=1e-12)
    assert mmd(x, y, (1.0,)).item() == pytest.approx(math.sqrt((1 - math.exp(-0.5)) / 2), rel=1e-6)


def test_mmd_symmetric_and_zero_on_identical_samples():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 3, generator=g), torch.randn(30, 3, generator=g) + 0.5
    for unbiased in (False, True):
        torch.testing.assert_close(mmd2(x, y, BWS, unbiased=unbiased), mmd2(y, x, BWS, unbiased=unbiased))
    assert abs(mmd2(x, x, BWS).item()) < 1e-5


def test_mmd_null_and_shifted():
    g = torch.Generator().manual_seed(2)
    null_u, null_b, shift_u = [], [], []
    for _ in range(100):
        x, y = torch.randn(50, 2, generator=g), torch.randn(50, 2, generator=g)
        null_u.append(mmd2(x, y, BWS, unbiased=True).item())
        null_b.append(mmd2(x, y, BWS).item())
        shift_u.append(mmd2(x, y + torch.tensor([1.0, 0.0]), BWS, unbiased=True).item())
    null_u, shift_u = torch.tensor(null_u), torch.tensor(shift_u)
    se = null_u.std() / math.sqrt(len(null_u))
    assert abs(null_u.mean()) < 3 * se  # unbiased: mean zero under the null
    assert (null_u < 0).any()  # ... so it does go negative
    assert min(null_b) >= 0  # biased: a squared RKHS norm
    assert shift_u.mean() > 5 * null_u.std()  # a unit shift of the mean is clearly positive
    assert (shift_u > torch.quantile(null_u, 0.95)).float().mean() > 0.9  # and a 5% test detects it


# -- GMMN ---------------------------------------------------------------------------------
def ring(n: int, g: torch.Generator, std: float = 0.05) -> torch.Tensor:
    angle = torch.randint(0, 8, (n,), generator=g).float() * 2 * math.pi / 8
    return torch.stack([angle.cos(), angle.sin()], 1) + std * torch.randn(n, 2, generator=g)  # (n, 2)


def modes_hit(samples: torch.Tensor, std: float = 0.05) -> int:
    angle = torch.arange(8).float() * 2 * math.pi / 8
    centres = torch.stack([angle.cos(), angle.sin()], 1)  # (8, 2)
    return int(((torch.cdist(centres, samples) < 3 * std).sum(1) >= 1).sum())


def test_gmmn_learns_ring_of_gaussians():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = GMMN(GMMNConfig(data_shape=(2,), data_kind="points"))
    opts = model.configure_optimizers()
    held_out = ring(500, g)
    before = model.sample(500, torch.Generator().manual_seed(1))
    mmd_before = mmd2(before, held_out, model.config.bandwidths).item()
    for _ in range(200):
        out = model.training_step(ring(128, g), opts)
        assert math.isfinite(out["loss"])
    after = model.sample(500, torch.Generator().manual_seed(1))
    mmd_after = mmd2(after, held_out, model.config.bandwidths).item()
    assert modes_hit(before) <= 1
    assert modes_hit(after) >= 6
    assert mmd_after < 0.2 * mmd_before


@pytest.mark.parametrize("autoencoder", [False, True])
@pytest.mark.parametrize("kind", ["binary", "image"])
def test_gmmn_step_reaches_every_parameter(autoencoder, kind):
    torch.manual_seed(0)
    model = GMMN(GMMNConfig(data_shape=(1, 8, 8), data_kind=kind, autoencoder=autoencoder, code_dim=8))
    batch = (torch.rand(16, 1, 8, 8) < 0.3).float() if kind == "binary" else torch.randint(0, 17, (16, 1, 8, 8)) / 16
    opts = model.configure_optimizers()
    assert set(opts) == ({"generator", "autoencoder"} if autoencoder else {"generator"})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model.training_step(batch, opts)
    assert math.isfinite(out["loss"]) and set(out) >= ({"loss", "mmd", "recon"} if autoencoder else {"loss", "mmd"})
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert not torch.equal(p.detach(), before[name]), name
    if autoencoder:  # moments are matched in code space: the generator emits codes in [0, 1]
        assert model.generator(model.draw_noise(4)).shape == (4, 8)
    s = model.sample(10, torch.Generator().manual_seed(0))
    assert s.shape == (10, 1, 8, 8) and s.min() >= 0 and s.max() <= 1


def test_gmmn_ae_loss_is_mmd_of_codes():
    """The generator's gradient is that of sqrt(MMD_b^2)(generated codes, encoded data), encoder detached."""
    torch.manual_seed(0)
    model = GMMN(GMMNConfig(data_shape=(1, 8, 8), data_kind="binary", autoencoder=True, code_dim=8))
    batch = (torch.rand(16, 1, 8, 8) < 0.3).float()
    opts = model.configure_optimizers()
    for opt in opts.values():  # lr 0: the step leaves the weights, so the gradients can be recomputed
        opt.param_groups[0]["lr"] = 0.0
    torch.manual_seed(5)
    model.training_step(batch, opts)  # the AE step draws no randomness; the noise is the first draw
    got = [p.grad.clone() for p in model.generator.parameters()]
    torch.manual_seed(5)
    h = torch.rand(16, model.config.latent_dim) * 2 - 1
    model.zero_grad()
    mmd(model.generator(h), model.encode(batch).detach(), model.config.bandwidths).backward()
    for a, p in zip(got, model.generator.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_gmmn_config_bandwidths():
    cfg = GMMNConfig.from_dict({"data_shape": [2], "data_kind": "points", "bandwidths": [1, 0.5]})
    assert cfg.bandwidths == (1.0, 0.5)
    for bad in ([], [0.0], [-1.0], ["a"], [True], 1.0, [float("inf")]):
        with pytest.raises(ConfigError, match="bandwidths"):
            GMMNConfig(data_shape=(2,), data_kind="points", bandwidths=bad)
    with pytest.raises(ConfigError, match="prior"):
        GMMNConfig(data_shape=(2,), data_kind="points", prior="laplace")


@pytest.mark.parametrize("cfg", [dict(prior="uniform"), dict(prior="gaussian"), dict(autoencoder=True)])
def test_gmmn_sampling_reproducible(cfg):
    model = GMMN(GMMNConfig(data_shape=(2,), data_kind="points", **cfg))
    a = model.sample(8, torch.Generator().manual_seed(3))
    b = model.sample(8, torch.Generator().manual_seed(3))
    c = model.sample(8, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.sample(4).shape == (4, 2)
    if cfg.get("prior") == "uniform":  # the generator input is U[-1, 1]
        h = model.draw_noise(10000, torch.Generator().manual_seed(0))
        assert h.min() >= -1 and h.max() <= 1 and abs(h.mean()) < 0.02


# -- IWAE ---------------------------------------------------------------------------------
def small_vae(kind: str = "binary", shape=(1, 4, 4), latent: int = 2, **kw) -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(data_shape=shape, data_kind=kind, levels=17, latent_dim=latent, hidden=32, **kw))


def sharpen(model: VAE) -> VAE:
    """Make p(x|z) depend strongly on z, so q(z|x) is a poor proposal and the IWAE gaps are large."""
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3.0)
        if model.config.data_kind == "points":  # images get their scales from the decoder; Bernoulli has none
            model.log_scale.fill_(-2.5)
        if model.config.data_kind == "image":  # the decoder's log-scale outputs (the last third): fixed at -2.5
            last, scales = model.decoder[-1], slice(2 * model.config.mixture * model.config.dim, None)
            last.weight[scales] = 0.0
            last.bias[scales] = -2.5
    return model


def data(kind: str, n: int = 32, shape=(1, 4, 4)) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if kind == "binary":
        return (torch.rand(n, *shape, generator=g) < 0.3).float()
    return torch.randint(0, 17, (n, *shape), generator=g) / 16


@pytest.mark.parametrize("kind", ["binary", "image"])
def test_iwae_grows_with_k_and_iwae1_is_elbo_in_expectation(kind):
    model, x = sharpen(small_vae(kind)), data(kind)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # each bound averaged over repeated draws, then over the batch of 32
        elbo = torch.stack([model.elbo(x, g) for _ in range(200)]).mean(0)  # (n,)
        iwae1 = torch.stack([model.iwae_bound(x, 1, g) for _ in range(200)]).mean(0)
        iwae5 = torch.stack([model.iwae_bound(x, 5, g) for _ in range(20)]).mean(0)
        iwae50 = torch.stack([model.iwae_bound(x, 50, g) for _ in range(5)]).mean(0)
    # IWAE-1 = single-sample ELBO (Monte Carlo KL instead of analytic): equal in expectation
    assert abs(iwae1.mean() - elbo.mean()) < 0.02 * elbo.mean().abs()
    assert elbo.mean() + 1.0 < iwae5.mean() < iwae50.mean() - 0.3
    if kind == "image":  # discrete probability: at most 0 nats
        assert (iwae50 < 0).all()


def test_iwae_chunking_does_not_change_the_value():
    for kind in ("binary", "image"):
        model, x = small_vae(kind), data(kind, n=8)
        with torch.no_grad():
            whole = model.iwae_bound(x, 60, torch.Generator().manual_seed(1), batch_k=60)
            chunked = model.iwae_bound(x, 60, torch.Generator().manual_seed(1), batch_k=7)
            single = model.iwae_bound(x, 60, torch.Generator().manual_seed(1), batch_k=1)
        torch.testing.assert_close(whole, chunked, rtol=0, atol=1e-4)
        torch.testing.assert_close(whole, single, rtol=0, atol=1e-4)


def test_iwae_converges_to_exact_log_likelihood():
    """1-D latent, 4 binary pixels: log p(x) by quadrature over z; IWAE-k climbs to it as k grows."""
    model, x = small_vae("binary", shape=(4,), latent=1), data("binary", n=16, shape=(4,))
    with torch.no_grad():
        for p in model.decoder.parameters():  # make p(x|z) depend strongly on z
            p.mul_(6.0)
        z = torch.linspace(-10, 10, 4001)[:, None]  # (Z, 1)
        log_px_z = torch.stack([model.decoder_log_prob(xi.expand(len(z), 4), z) for xi in x])  # (n, Z)
        log_prior = -0.5 * z[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)  # (Z,)
        exact = torch.logsumexp(log_px_z + log_prior, 1) + math.log(z[1, 0] - z[0, 0])  # (n,)
        g = torch.Generator().manual_seed(0)
        bounds = {k: model.iwae_bound(x, k, g) for k in (1, 10, 100, 5000)}
    gaps = [(exact - bounds[k]).mean().item() for k in (1, 10, 100, 5000)]
    assert gaps[0] > gaps[1] > gaps[2] > 0  # a lower bound that tightens with k
    assert abs(gaps[3]) < 0.05 and (exact - bounds[5000]).abs().max() < 0.3  # IWAE-5000 ~ log p(x)
    assert gaps[0] > 3.0  # while the ELBO-like IWAE-1 is far below


def test_vae_log_likelihood_uses_iwae_k():
    x = data("binary", n=16)
    plain, iw = small_vae(), small_vae(iwae_k=50)
    iw.load_state_dict(plain.state_dict())
    torch.manual_seed(0)
    a = plain.log_likelihood(x)
    torch.manual_seed(0)
    b = plain.elbo(x)
    torch.testing.assert_close(a, b)  # iwae_k = 1 keeps the old behaviour
    torch.manual_seed(0)
    c = iw.log_likelihood(x)
    assert c.shape == (16,) and c.mean() > a.mean()
    with pytest.raises(ConfigError, match="iwae_k"):
        VAEConfig(data_shape=(4,), data_kind="binary", iwae_k=0)


def test_iwae_training_objective_is_the_k_sample_bound_and_trains():
    """train_k = k: the step's loss is minus the IWAE-k bound of the batch (same draws), its gradient moves
    the weights, and a few steps raise the bound; train_k = 1 keeps the ELBO."""
    x = data("binary", n=16)
    model = small_vae(train_k=5, lr=0.01)
    model.init_from_data(x)
    opt = model.configure_optimizers()
    torch.manual_seed(3)
    with torch.no_grad():
        expected = -model.iwae_bound(x, 5, batch_k=5).mean()
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(3)
    loss = model.training_step(x, opt)["loss"]
    torch.testing.assert_close(loss, expected)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        start = model.iwae_bound(x, 50, g).mean()
    for _ in range(200):
        model.training_step(x, opt)
    with torch.no_grad():  # 16 patterns memorised: up to -log 16 = -2.8 nats
        assert model.iwae_bound(x, 50, torch.Generator().manual_seed(0)).mean() > start + 1.0
    plain = small_vae()
    plain.load_state_dict(model.state_dict())
    torch.manual_seed(4)
    with torch.no_grad():
        elbo = -plain.elbo(x).mean()
    torch.manual_seed(4)
    torch.testing.assert_close(plain.training_step(x, plain.configure_optimizers())["loss"], elbo)
    with pytest.raises(ConfigError, match="train_k"):
        VAEConfig(data_shape=(4,), data_kind="binary", train_k=0)
    with pytest.raises(ConfigError, match="kl_warmup_steps"):
        VAEConfig(data_shape=(4,), data_kind="binary", train_k=5, kl_warmup_steps=10)


def test_vae_sampling_reproducible():
    model = small_vae("image")
    a, b = model.sample(6, torch.Generator().manual_seed(2)), model.sample(6, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and a.shape == (6, 1, 4, 4)
