"""Mathematics of the RealNVP flow and the DDPM diffusion model.

RealNVP: invertibility, log-determinants against the autograd Jacobian, a
density that integrates to one, the discrete-data likelihood against the
sampler, and a brief fit of a ring that beats a Gaussian.
DDPM: the closed-form q(x_t|x_0) against the simulated forward chain, the
discretised decoder's normalisation, the sampler against Algorithm 2, the
variational bound against a known log-likelihood (Gaussian data with the
exact optimal noise predictor), and a brief fit of a ring that beats a Gaussian.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.base import dequantize
from models.ddpm import DDPM, AncestralSampler, DDPMConfig, discretized_gaussian_log_prob
from models.realnvp import RealNVP, RealNVPConfig


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; one thread is faster for these tiny nets
    yield
    torch.set_num_threads(threads)


def ring(n: int, generator: torch.Generator) -> torch.Tensor:
    """Points on a circle of radius 2 with radial noise 0.1: (n, 2)."""
    angle = torch.rand(n, generator=generator) * 2 * math.pi
    radius = 2 + 0.1 * torch.randn(n, generator=generator)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], 1)


def gaussian_fit_ll(train: torch.Tensor, test: torch.Tensor) -> float:
    """Mean test log-likelihood (nats) of the maximum-likelihood Gaussian of `train`."""
    return torch.distributions.MultivariateNormal(train.mean(0), torch.cov(train.T)).log_prob(test).mean().item()


def fit(model, data: torch.Tensor, steps: int, batch: int = 256, seed: int = 0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = model.configure_optimizers()
    for _ in range(steps):
        model.training_step(data[torch.randint(0, len(data), (batch,), generator=g)], opt)
    return model


@pytest.fixture(scope="module")
def ring_data():
    g = torch.Generator().manual_seed(0)
    train, test = ring(4096, g), ring(1000, g)
    return train, test, gaussian_fit_ll(train, test)


# --------------------------------------------------------------------- RealNVP
def realnvp(seed: int = 0, **kw) -> RealNVP:
    torch.manual_seed(seed)
    return RealNVP(RealNVPConfig(**kw))


@pytest.fixture(scope="module")
def trained_flow(ring_data):
    torch.set_num_threads(1)
    return fit(realnvp(data_shape=(2,), data_kind="points", lr=3e-3), ring_data[0], steps=200)


@pytest.mark.parametrize("kw", [
    dict(data_shape=(2,), data_kind="points"),
    dict(data_shape=(3,), data_kind="points"),
    dict(data_shape=(1, 8, 8), data_kind="image", levels=17),
    dict(data_shape=(1, 8, 8), data_kind="image", levels=17, n_scales=3),
    dict(data_shape=(1, 28, 28), data_kind="image", n_scales=3, hidden=8),
])
def test_realnvp_inverse_undoes_forward(kw):
    model = realnvp(**kw).double()
    x = torch.randn(8, *kw["data_shape"], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z, logdet = model(x)
    assert z.shape == x.shape and logdet.shape == (8,)
    assert (z - x).abs().max() > 0.1  # the map is not the identity, so the check can fail
    torch.testing.assert_close(model.inverse(z), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", [
    dict(data_shape=(2,), data_kind="points"),
    dict(data_shape=(3,), data_kind="points"),
    dict(data_shape=(1, 4, 4), data_kind="image", levels=17, hidden=8),
])
def test_realnvp_logdet_matches_autograd_jacobian(kw):
    model = realnvp(**kw).double()
    shape = kw["data_shape"]
    for i in range(3):
        x = torch.randn(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        jac = torch.autograd.functional.jacobian(lambda v: model(v.view(1, *shape))[0].flatten(), x.flatten())
        sign, logabs = torch.linalg.slogdet(jac)  # (D, D) -> log|det|
        logdet = model(x)[1][0]
        assert sign != 0 and abs(logdet) > 0.05  # a non-trivial volume change
        torch.testing.assert_close(logdet, logabs, atol=1e-8, rtol=1e-8)


def test_realnvp_logit_transform_logdet():
    model = realnvp(data_shape=(1, 2, 2), data_kind="image", levels=17, n_scales=1).double()
    u = torch.rand(1, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    jac = torch.autograd.functional.jacobian(lambda v: model.logit(v.view(1, 1, 2, 2))[0].flatten(), u.flatten())
    torch.testing.assert_close(model.logit(u)[1][0], torch.linalg.slogdet(jac)[1], atol=1e-10, rtol=1e-10)


def test_realnvp_density_integrates_to_one(trained_flow):
    xs = torch.linspace(-5, 5, 401)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="ij"), -1).view(-1, 2)  # (401^2, 2)
    cell = (xs[1] - xs[0]) ** 2
    for model in (trained_flow, realnvp(data_shape=(2,), data_kind="points", seed=3)):
        mass = (model.log_likelihood(grid).double().exp().sum() * cell).item()
        assert abs(mass - 1) < 0.02, mass


def test_realnvp_fits_a_ring_better_than_a_gaussian(ring_data, trained_flow):
    _, test, gauss = ring_data
    flow_ll = trained_flow.log_likelihood(test).mean().item()
    assert flow_ll > gauss + 0.8, (flow_ll, gauss)  # the ring's entropy is about -1.65 nats, a Gaussian's -3.5


def test_realnvp_discrete_bound_agrees_with_sampling():
    # Binary data of shape (2,): the probability of a configuration is the flow's mass in its dequantisation bin,
    # estimated by averaging exp(log_likelihood) over dequantisation draws; sampling the flow measures the same
    # masses. A wide logit margin (alpha = 0.3) leaves much of the mass outside [0, 1]^2, so the sum is well below 1.
    model = realnvp(data_shape=(2,), data_kind="binary", alpha=0.3, seed=1).double()
    configs = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    probs = torch.stack([model.log_likelihood(c.expand(20000, 2), g).exp().mean() for c in configs])  # (4,)
    with torch.no_grad():
        y = model.inverse(torch.randn(40000, 2, generator=g, dtype=torch.float64))
    u = (torch.sigmoid(y) - 0.3) / (1 - 2 * 0.3)  # the sampler's dequantised values
    inside = ((u >= 0) & (u < 1)).all(1)
    bins = (torch.floor(u[inside] * 2) * torch.tensor([2.0, 1.0], dtype=torch.float64)).sum(1).long()
    freqs = torch.bincount(bins, minlength=4).double() / len(u)  # (4,) in the order of `configs`
    assert 0.05 < probs.sum() < 0.8
    torch.testing.assert_close(probs, freqs, atol=0.01, rtol=0)


def test_realnvp_discrete_round_trip_recovers_the_data():
    model = realnvp(data_shape=(1, 8, 8), data_kind="image", levels=17, hidden=16)
    x = torch.randint(0, 17, (4, 1, 8, 8), generator=torch.Generator().manual_seed(0)).float() / 16
    y, _ = model.logit(dequantize(x, 17, torch.Generator().manual_seed(1)))
    with torch.no_grad():
        back = model.to_data(model.inverse(model(y)[0]))
    torch.testing.assert_close(back, x)
    assert model.bits_per_dim(x).shape == (4,)


# ------------------------------------------------------------------------ DDPM
def ddpm(seed: int = 0, **kw) -> DDPM:
    torch.manual_seed(seed)
    return DDPM(DDPMConfig(**kw))


class GaussianOracle(nn.Module):
    """The exact E[eps | x_t] when x_0 ~ N(m, diag(s^2)): the optimal noise predictor."""

    def __init__(self, m: torch.Tensor, s: torch.Tensor, alpha_bar: torch.Tensor):
        super().__init__()
        self.m, self.s, self.alpha_bar = m, s, alpha_bar

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bar[t - 1].view(-1, 1)
        return (1 - ab).sqrt() * (x - ab.sqrt() * self.m) / (ab * self.s**2 + 1 - ab)


def test_ddpm_forward_process_matches_closed_form():
    model = ddpm(data_shape=(2,), data_kind="points")
    assert model.alpha_bar[-1] < 1e-3  # x_T is close to N(0, I) with the rescaled schedule
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.5, -0.7]).expand(40000, 2)
    x = x0.clone()
    for t in range(1, model.config.timesteps + 1):  # the chain q(x_t | x_{t-1}) step by step
        beta = model.betas[t - 1]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(x.shape, generator=g)
        if t in (1, 10, 50):
            ab = model.alpha_bar[t - 1]
            direct = model.q_sample(x0, torch.full((40000,), t), torch.randn(x.shape, generator=g))
            for draws in (x, direct):
                torch.testing.assert_close(draws.mean(0), ab.sqrt() * x0[0], atol=0.02, rtol=0)
                torch.testing.assert_close(draws.var(0), (1 - ab).expand(2), atol=0.02, rtol=0.03)


def test_discretized_decoder_sums_to_one():
    levels = 17
    values = torch.linspace(-1, 1, levels)[:, None]  # (levels, 1): every pixel value
    mean = torch.tensor([[-1.3, -0.2, 0.0, 0.55, 0.97, 4.0]])
    std = torch.tensor([[0.01, 0.1, 0.3, 0.05, 1.0, 0.2]])
    total = discretized_gaussian_log_prob(values, mean, std, levels).exp().sum(0)  # (6,)
    torch.testing.assert_close(total, torch.ones(6), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw", [
    dict(data_shape=(2,), data_kind="points"),
    dict(data_shape=(1, 8, 8), data_kind="image", levels=17, timesteps=40, width=8),
    dict(data_shape=(1, 8, 8), data_kind="binary", timesteps=40, width=8),
])
def test_ddpm_bound_terms_are_finite_kls(kw):
    model = ddpm(**kw)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, *kw["data_shape"], generator=g)
    if kw["data_kind"] != "points":
        levels = kw.get("levels", 2)
        x = torch.randint(0, levels, x.shape, generator=g).float() / (levels - 1)
    terms = model.vlb_terms(x, generator=torch.Generator().manual_seed(1))
    assert terms.shape == (5, model.config.timesteps + 1) and torch.isfinite(terms).all()
    assert (terms[:, 1:] >= -1e-6).all()  # L_1 .. L_{T-1} and L_T are KL divergences
    if kw["data_kind"] != "points":
        assert (terms[:, 0] >= 0).all()  # -log of a discrete probability
    ll = model.log_likelihood(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(ll, -terms.sum(1))


@pytest.mark.parametrize("sigma2", ["beta", "beta_tilde"])
def test_ddpm_bound_terms_match_gaussian_kls_from_the_definitions(sigma2):
    # Recompute every term from eqs. 5-7 and 11 with torch.distributions, drawing the same x_t.
    model = ddpm(data_shape=(2,), data_kind="points", timesteps=30, sigma2=sigma2)
    x0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(0)).double()
    terms = model.vlb_terms(x0.float(), generator=torch.Generator().manual_seed(1)).double()  # (5, 31)
    eps = torch.randn(30 * 5, 2, generator=torch.Generator().manual_seed(1)).view(30, 5, 2).double()  # its draws
    normal, betas, ab = torch.distributions.Normal, model.betas.double(), model.alpha_bar.double()
    for t in range(1, 31):
        beta, ab_t = betas[t - 1], ab[t - 1]
        ab_prev = ab[t - 2] if t > 1 else torch.tensor(1.0, dtype=torch.float64)
        xt = ab_t.sqrt() * x0 + (1 - ab_t).sqrt() * eps[t - 1]
        with torch.no_grad():
            eps_hat = model.net(xt.float(), torch.full((5,), t)).double()
        mu = (xt - beta / (1 - ab_t).sqrt() * eps_hat) / (1 - beta).sqrt()  # eq. 11
        post_var = beta * (1 - ab_prev) / (1 - ab_t)  # eq. 7
        std = (beta if sigma2 == "beta" or t == 1 else post_var).sqrt()
        if t == 1:
            expected = -normal(mu, std).log_prob(x0).sum(1)
        else:
            post_mean = (ab_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - ab_prev) * xt) / (1 - ab_t)
            expected = torch.distributions.kl_divergence(normal(post_mean, post_var.sqrt()), normal(mu, std)).sum(1)
        torch.testing.assert_close(terms[:, t - 1], expected, atol=5e-4, rtol=5e-4)
    prior = torch.distributions.kl_divergence(normal(ab[-1].sqrt() * x0, (1 - ab[-1]).sqrt()), normal(0.0, 1.0))
    torch.testing.assert_close(terms[:, -1], prior.sum(1), atol=1e-6, rtol=1e-4)


def test_ddpm_bound_is_below_and_close_to_the_true_log_likelihood():
    # x_0 ~ N(m, diag(s^2)) and the network replaced by the optimal predictor E[eps | x_t]: the bound must stay
    # below E log p_data (E log p_model <= E log p_data by Gibbs), and with the exact predictor it is tight.
    model = ddpm(data_shape=(2,), data_kind="points")
    m, s = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 1.5])
    model.net = GaussianOracle(m, s, model.alpha_bar)
    g = torch.Generator().manual_seed(0)
    x = m + s * torch.randn(20000, 2, generator=g)
    true = torch.distributions.Normal(m, s).log_prob(x).sum(1)
    gap = true - model.log_likelihood(x, g)
    stderr = gap.std().item() / math.sqrt(len(x))
    assert -3 * stderr < gap.mean().item() < 0.15, (gap.mean().item(), stderr)
    # the stochastic estimate over 10 of the T timesteps is unbiased for the same bound
    subset = ddpm(data_shape=(2,), data_kind="points", vlb_timesteps=10)
    subset.net = model.net
    gap10 = true - subset.log_likelihood(x, g)
    stderr10 = gap10.std().item() / math.sqrt(len(x))
    assert abs(gap10.mean().item() - gap.mean().item()) < 3 * (stderr10 + stderr)
    # a wrong predictor gives a much worse bound
    model.net = GaussianOracle(torch.zeros(2), torch.ones(2), model.alpha_bar)
    assert (true - model.log_likelihood(x, g)).mean() > 0.5


def test_ddpm_sampler_is_algorithm_2():
    # For points (no clipping) the x_0-parameterised posterior step equals eq. 11 + sigma_t z, noise-free at t = 1.
    model = ddpm(data_shape=(2,), data_kind="points", timesteps=30)
    model.net = GaussianOracle(torch.tensor([1.0, -0.5]), torch.tensor([0.5, 1.5]), model.alpha_bar)
    out = AncestralSampler(model, 30)(64, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g)
    for t in range(30, 0, -1):
        beta, ab = model.betas[t - 1], model.alpha_bar[t - 1]
        eps = model.net(x, torch.full((64,), t))
        x = (x - beta / (1 - ab).sqrt() * eps) / (1 - beta).sqrt()
        if t > 1:
            x = x + beta.sqrt() * torch.randn(64, 2, generator=g)
    torch.testing.assert_close(out, x, atol=1e-4, rtol=1e-4)


def test_ddpm_training_improves_the_bound_past_a_gaussian(ring_data):
    train, test, gauss = ring_data
    model = ddpm(data_shape=(2,), data_kind="points", lr=3e-3)
    before = model.log_likelihood(test, torch.Generator().manual_seed(1)).mean().item()
    fit(model, train, steps=800)
    after = model.log_likelihood(test, torch.Generator().manual_seed(1)).mean().item()
    assert after > before + 5, (before, after)
    assert after > gauss + 0.5, (after, gauss)  # a lower bound that beats the exact Gaussian log-likelihood


# ------------------------------------------------------------------------ both
@pytest.mark.parametrize("make", [
    lambda kw: realnvp(hidden=16, **kw),
    lambda kw: ddpm(timesteps=25, width=8, **kw),
    lambda kw: ddpm(timesteps=25, width=8, sample_steps=7, **kw),
], ids=["realnvp", "ddpm", "ddpm-7-steps"])
@pytest.mark.parametrize("kw", [
    dict(data_shape=(2,), data_kind="points"),
    dict(data_shape=(1, 8, 8), data_kind="image", levels=17),
    dict(data_shape=(1, 8, 8), data_kind="binary"),
], ids=["points", "image", "binary"])
def test_sampling_is_reproducible_and_on_the_data_values(make, kw):
    model = make(kw)
    a = model.sample(6, torch.Generator().manual_seed(5))
    b = model.sample(6, torch.Generator().manual_seed(5))
    c = model.sample(6, torch.Generator().manual_seed(6))
    assert a.shape == (6, *kw["data_shape"]) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)
    assert model.sample(2).shape == (2, *kw["data_shape"])  # generator=None works
    if kw["data_kind"] != "points":
        levels = kw.get("levels", 2)
        k = a * (levels - 1)
        assert a.min() >= 0 and a.max() <= 1
        torch.testing.assert_close(k, k.round(), atol=1e-5, rtol=0)  # on the grid k / (levels - 1)
