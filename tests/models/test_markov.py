"""The mathematics of the Markov-chain families (RBM, GSN) and their chain machinery.

- RBM: exp(-F(v)) / Z sums to 1 over every visible configuration; F(v) is
  -log sum_h exp(-E(v, h)); log Z by enumerating either layer agrees; AIS lands
  within 0.1 nats of the exact log Z, and the free-energy search bounds log Z from below
  (raising a failed AIS estimate to it); the block-Gibbs sampler draws from the
  exact distribution (total variation); CD-1 and PCD beat the independent
  Bernoulli baseline on exact test log-likelihood; PCD particles survive save/load.
- GSN: the corruption processes have the stated statistics; walkback training
  lowers the reconstruction loss; chain samples of a model trained on a ring of
  8 Gaussians land on the ring and cover several modes, unlike an untrained one.
- MarkovChain's burn-in/thinning schedule; seeds reproduce samples.
"""

from __future__ import annotations

import math

import pytest
import torch

from models import markov
from models.base import ConfigError
from models.gsn import GSN
from models.rbm import RBM


pytestmark = pytest.mark.usefixtures("one_thread")


def random_rbm(nv: int, nh: int, seed: int, std: float = 1.0, **config) -> RBM:
    model = RBM(RBM.Config(data_shape=(nv,), data_kind="binary", hidden=nh, seed=seed, **config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.W.copy_(std * torch.randn(nv, nh, generator=g))
        model.b.copy_(0.5 * torch.randn(nv, generator=g))
        model.c.copy_(0.5 * torch.randn(nh, generator=g))
    return model


def all_binary(n: int) -> torch.Tensor:
    return markov.binary_configurations(n, 0, 1 << n, torch.float64, torch.device("cpu"))  # (2^n, n)


def exact_log_probs(model: RBM, v: torch.Tensor) -> torch.Tensor:
    W, b, c = (t.detach().double() for t in (model.W, model.b, model.c))
    return -markov.free_energy(v.double(), W, b, c) - markov.exact_log_partition(W, b, c)


# -- RBM: exact quantities ---------------------------------------------------
def test_rbm_probabilities_sum_to_one_and_free_energy_marginalises_energy():
    model = random_rbm(10, 4, seed=0)
    v = all_binary(10)  # (1024, 10)
    log_p = exact_log_probs(model, v)
    assert abs(log_p.exp().sum().item() - 1.0) < 1e-4
    # -F(v) = log sum_h exp(-E(v, h)) with E(v, h) = -b.v - c.h - v W h, by brute force over h.
    W, b, c = (t.detach().double() for t in (model.W, model.b, model.c))
    h = all_binary(4)  # (16, 4)
    neg_energy = (v @ b)[:, None] + (h @ c)[None, :] + v @ W @ h.T  # (1024, 16)
    assert torch.allclose(-markov.free_energy(v, W, b, c), torch.logsumexp(neg_energy, 1), atol=1e-9)
    assert torch.allclose(-model.free_energy(v.float()).double(), torch.logsumexp(neg_energy, 1), atol=1e-4)


def test_exact_log_partition_agrees_over_either_layer_and_refuses_large_models():
    model = random_rbm(10, 4, seed=1)
    W, b, c = (t.detach() for t in (model.W, model.b, model.c))
    over_h = markov.exact_log_partition(W, b, c, over="hidden").item()
    over_v = markov.exact_log_partition(W, b, c, over="visible", chunk=100).item()  # several chunks
    assert abs(over_h - over_v) < 1e-9 and model.exact_log_partition() == pytest.approx(over_h, abs=1e-12)
    with pytest.raises(ValueError, match="2\\^21"):
        RBM(RBM.Config(data_shape=(22,), data_kind="binary", hidden=21)).exact_log_partition()


def test_ais_estimate_is_within_a_tenth_of_a_nat_of_exact_log_partition():
    model = random_rbm(12, 8, seed=2, std=1.0, ais_runs=100, ais_temperatures=1000)
    exact = model.exact_log_partition()
    for seed in range(3):
        est, stderr = model.ais_log_partition(generator=torch.Generator().manual_seed(seed))
        assert abs(est - exact) < 0.1, (est, exact)
        assert 0 < stderr < 0.05
    # A data base rate works as well as zeros; log_likelihood = -F - log Z_AIS, cached per weights.
    model.data_sum.copy_(torch.linspace(1, 9, 12, dtype=torch.float64))
    model.data_count.fill_(10)
    x = all_binary(12)[::97].float()
    ll = model.log_likelihood(x)
    assert torch.allclose(ll.double(), exact_log_probs(model, x.double()), atol=0.1)
    assert model.log_partition() == model.log_partition()  # cached: same estimate
    with torch.no_grad():
        model.c.add_(0.3)
    assert abs(model.log_partition()[0] - model.exact_log_partition()) < 0.1  # recomputed for new weights


def test_free_energy_bound_is_below_exact_log_z_and_equals_it_over_every_state():
    model = random_rbm(12, 8, seed=4, std=2.0)
    W, b, c = (t.detach().double() for t in (model.W, model.b, model.c))
    exact = model.exact_log_partition()  # enumerates the 2^8 hidden states, the bound sums over visible ones
    every = markov.log_partition_lower_bound(W, b, c, all_binary(12), gibbs_steps=0, ascent_steps=0)
    assert every == pytest.approx(exact, abs=1e-8)
    for seed in range(3):
        starts = all_binary(12)[torch.randperm(4096, generator=torch.Generator().manual_seed(seed))[:16]]
        bound = markov.log_partition_lower_bound(W, b, c, starts, 20, torch.Generator().manual_seed(seed))
        assert exact - 5.0 < bound <= exact + 1e-9, (bound, exact)  # certain, and the search finds the heavy states
    with pytest.raises(ValueError, match="gibbs_steps >= 0"):
        markov.log_partition_lower_bound(W, b, c, starts, -1)
    # Many visible units, few hidden ones (exact log Z by the 2^10 hidden states): the hidden states found
    # carry the bound, a visible search alone would be far below it.
    wide = random_rbm(300, 10, seed=5, std=0.5)
    W, b, c = (t.detach().double() for t in (wide.W, wide.b, wide.c))
    exact = wide.exact_log_partition()
    starts = torch.bernoulli(torch.full((64, 300), 0.5, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    bound = markov.log_partition_lower_bound(W, b, c, starts, 50, torch.Generator().manual_seed(0))
    assert exact - 1.0 < bound <= exact + 1e-9, (bound, exact)


def test_rbm_log_z_is_raised_to_the_bound_when_ais_falls_below_it_and_says_so():
    """One-temperature AIS with two runs on a peaked RBM misses its modes by ~19 nats; the likelihood then uses
    the certain bound (still at most the exact log Z) and the notes carry both values and a warning."""
    model = random_rbm(12, 8, seed=4, std=2.0, ais_runs=2, ais_temperatures=1, bound_chains=32, bound_steps=20)
    exact = model.exact_log_partition()
    est = model.log_partition_estimates()
    assert est["ais"] < exact - 10 and est["ais"] < est["bound"] <= exact + 1e-9
    assert model.log_partition()[0] == est["log_z"] == est["bound"]
    x = all_binary(12)[::97].float()
    assert (model.log_likelihood(x).double() >= exact_log_probs(model, x.double()) - 1e-5).all()  # optimistic, less so
    notes = model.likelihood_notes()
    assert notes["log_z_ais"] == est["ais"] and notes["log_z_lower_bound"] == est["bound"]
    assert "below a certain lower bound" in notes["likelihood_warning"]
    assert "rest on about" in notes["likelihood_warning"] and notes["log_z_ais_effective_runs"] < 2  # 2 runs, one counts
    # A good AIS estimate stands (it is above the bound) and no warning is raised; the bound can be turned off.
    good = random_rbm(12, 8, seed=2, std=1.0, ais_runs=100, ais_temperatures=1000)
    assert good.log_partition()[0] == good.log_partition_estimates()["ais"] and "likelihood_warning" not in good.likelihood_notes()
    assert good.likelihood_notes()["log_z_ais_effective_runs"] > 50
    off = random_rbm(12, 8, seed=4, std=2.0, ais_runs=2, ais_temperatures=1, bound_steps=0)
    assert off.log_partition()[0] == off.log_partition_estimates()["ais"] and "log_z_lower_bound" not in off.likelihood_notes()
    with pytest.raises(ConfigError, match="bound_chains and bound_steps"):
        random_rbm(12, 8, seed=4, bound_chains=-1)


def test_beta_schedules_run_from_zero_to_one():
    for kind in ("linear", "piecewise"):
        betas = markov.beta_schedule(290, kind)
        assert len(betas) == 291 and betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()
    piecewise = markov.beta_schedule(14500, "piecewise")
    assert (piecewise < 0.5).sum() == 500 and (piecewise >= 0.9).sum() == 10001


# -- RBM: sampler and training ---------------------------------------------
def total_variation(samples: torch.Tensor, log_p: torch.Tensor) -> float:
    index = (samples.long() * (1 << torch.arange(samples.shape[1]))).sum(1)  # bit 0 first, like all_binary
    empirical = torch.bincount(index, minlength=len(log_p)).double() / len(samples)
    return 0.5 * (empirical - log_p.exp()).abs().sum().item()


def test_block_gibbs_samples_follow_the_exact_distribution():
    model = random_rbm(6, 4, seed=3, std=1.5, sample_burn_in=50)
    log_p = exact_log_probs(model, all_binary(6))
    samples = model.sample(20000, torch.Generator().manual_seed(0))
    assert set(samples.unique().tolist()) <= {0.0, 1.0}
    tv_chain = total_variation(samples, log_p)
    # One long chain with thinning visits the same distribution.
    long_run = model.sampler(burn_in=50, thin=2).run(torch.zeros(100, 6), 20000, torch.Generator().manual_seed(1))
    tv_long = total_variation(long_run, log_p)
    # Without burn-in the samples are the base-rate starts: clearly off, so the bound is meaningful.
    tv_start = total_variation(model.sampler(burn_in=0).run(torch.zeros(20000, 6).bernoulli_(0.5), 20000), log_p)
    assert tv_chain < 0.03 and tv_long < 0.04 and tv_start > 0.2, (tv_chain, tv_long, tv_start)


def prototypes_data(n: int, seed: int, flip: float = 0.05) -> torch.Tensor:
    """Four 10-bit prototypes with 5% of the bits flipped: strongly dependent bits."""
    protos = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
                           [1, 0, 1, 0, 1, 0, 1, 0, 1, 0], [1, 1, 0, 0, 1, 1, 0, 0, 1, 1]], dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    x = protos[torch.randint(0, 4, (n,), generator=g)]
    return (x + (torch.rand(x.shape, generator=g) < flip).float()) % 2  # (n, 10)


@pytest.mark.parametrize("persistent", [False, True], ids=["CD-1", "PCD-1"])
def test_contrastive_divergence_beats_independent_bernoulli(persistent):
    train, test = prototypes_data(2000, seed=0), prototypes_data(1000, seed=1)
    torch.manual_seed(0)
    model = RBM(RBM.Config(data_shape=(10,), data_kind="binary", hidden=8, k=1, persistent=persistent,
                           chains=64, lr=0.05, momentum=0.5, init_std=0.1))
    opt = model.configure_optimizers()
    g = torch.Generator().manual_seed(2)
    for _ in range(600):
        metrics = model.training_step(train[torch.randint(0, len(train), (32,), generator=g)], opt)
        assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["free_energy_gap"])
    mean = (train.sum(0) + 1) / (len(train) + 2)
    baseline = (test * mean.log() + (1 - test) * (1 - mean).log()).sum(1).mean().item()  # about -6.9 nats
    rbm_ll = exact_log_probs(model, test.double()).mean().item()
    assert rbm_ll > baseline + 1.0, (rbm_ll, baseline)
    # The AIS estimate the model reports agrees with the exact value.
    assert abs(model.log_likelihood(test).mean().item() - rbm_ll) < 0.1


def test_rbm_sampling_is_reproducible_pure_and_survives_save_load(tmp_path):
    model = RBM(RBM.Config(data_shape=(1, 4, 4), data_kind="binary", hidden=6, persistent=True, chains=8,
                           sample_burn_in=20))
    model.training_step(prototypes_data(16, seed=0)[:, :8].repeat(1, 2).view(16, 1, 4, 4), model.configure_optimizers())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a, b = (model.sample(10, torch.Generator().manual_seed(7)) for _ in range(2))
    assert a.shape == (10, 1, 4, 4) and torch.equal(a, b)
    assert not torch.equal(a, model.sample(10, torch.Generator().manual_seed(8)))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    torch.save(model.state_dict(), tmp_path / "rbm.pt")
    clone = RBM(model.config)
    clone.load_state_dict(torch.load(tmp_path / "rbm.pt", weights_only=True))
    assert torch.equal(clone.particles, model.particles) and clone.particles.abs().sum() > 0
    assert torch.equal(clone.sample(10, torch.Generator().manual_seed(7)), a)


# -- GSN -----------------------------------------------------------------
def ring(n: int, g: torch.Generator, std: float = 0.03) -> torch.Tensor:
    angle = 2 * math.pi * torch.randint(0, 8, (n,), generator=g) / 8
    return torch.stack([angle.cos(), angle.sin()], 1) + std * torch.randn(n, 2, generator=g)  # (n, 2)


def ring_stats(samples: torch.Tensor) -> tuple[float, list[int]]:
    """Fraction of samples with | |x| - 1 | < 0.15, and how many of those sit at each of the 8 modes."""
    on_ring = (samples.norm(dim=1) - 1).abs() < 0.15
    mode = torch.round(torch.atan2(samples[:, 1], samples[:, 0]) / (2 * math.pi / 8)).long() % 8
    return on_ring.float().mean().item(), torch.bincount(mode[on_ring], minlength=8).tolist()


def test_gsn_corruption_statistics():
    binary = GSN(GSN.Config(data_shape=(1000,), data_kind="binary", salt_pepper=0.4, hidden=4))
    x = torch.ones(20, 1000)
    changed = (binary.corrupt(x, torch.Generator().manual_seed(0)) != x).float().mean().item()
    assert abs(changed - 0.2) < 0.01  # a fair coin replaces 40% of the units: half of those change
    points = GSN(GSN.Config(data_shape=(1000,), data_kind="points", noise_std=0.3, hidden=4))
    noise = points.corrupt(torch.zeros(20, 1000), torch.Generator().manual_seed(0))
    assert abs(noise.std().item() - 0.3) < 0.01 and abs(noise.mean().item()) < 0.01


def test_gsn_walkback_training_reduces_loss_and_chain_samples_land_on_the_ring():
    torch.manual_seed(0)
    config = GSN.Config(data_shape=(2,), data_kind="points", hidden=128, walkback=3, noise_std=0.1, burn_in=50)
    model, untrained = GSN(config), GSN(config)
    untrained.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(0)
    held_out = ring(512, g)
    loss_before = model.walkback_loss(held_out, torch.Generator().manual_seed(1)).mean().item()
    opt = model.configure_optimizers()
    for _ in range(1000):
        model.training_step(ring(128, g), opt)
    loss_after = model.walkback_loss(held_out, torch.Generator().manual_seed(1)).mean().item()
    assert loss_after < loss_before - 3.0, (loss_before, loss_after)
    for buffer in ("data_count", "data_sum", "data_sqsum"):  # same chain starts for both models
        getattr(untrained, buffer).copy_(getattr(model, buffer))
    on_ring, modes = ring_stats(model.sample(1000, torch.Generator().manual_seed(2)))
    untrained_on_ring, _ = ring_stats(untrained.sample(1000, torch.Generator().manual_seed(2)))
    assert on_ring > 0.9 and untrained_on_ring < 0.3, (on_ring, untrained_on_ring)
    assert sum(count >= 50 for count in modes) >= 6, modes  # many modes, not one
    # A few long thinned chains stay on the ring too.
    model.config.chains, model.config.thin = 10, 5
    on_ring, modes = ring_stats(model.sample(1000, torch.Generator().manual_seed(3)))
    assert on_ring > 0.9 and sum(count > 0 for count in modes) >= 2, (on_ring, modes)


def test_gsn_binary_chain_visits_every_prototype():
    protos = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
                           [1, 0, 1, 0, 1, 0, 1, 0, 1, 0], [1, 1, 0, 0, 1, 1, 0, 0, 1, 1]], dtype=torch.float32)

    def nearest(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (samples[:, None, :] != protos[None]).sum(-1).min(1)  # Hamming distance, prototype index

    torch.manual_seed(0)
    config = GSN.Config(data_shape=(10,), data_kind="binary", hidden=64, walkback=3, salt_pepper=0.15, burn_in=50)
    model, untrained = GSN(config), GSN(config)
    untrained.load_state_dict(model.state_dict())
    train, g = prototypes_data(2000, seed=0), torch.Generator().manual_seed(2)
    opt = model.configure_optimizers()
    for _ in range(1000):
        model.training_step(train[torch.randint(0, len(train), (32,), generator=g)], opt)
    for buffer in ("data_count", "data_sum", "data_sqsum"):
        getattr(untrained, buffer).copy_(getattr(model, buffer))
    distance, which = nearest(model.sample(2000, torch.Generator().manual_seed(0)))
    untrained_distance, _ = nearest(untrained.sample(2000, torch.Generator().manual_seed(0)))
    # Data: about 91% within one flip of a prototype; the factorised reconstruction blurs that somewhat.
    close, untrained_close = (distance <= 1).float().mean().item(), (untrained_distance <= 1).float().mean().item()
    assert close > 0.5 and untrained_close < 0.15, (close, untrained_close)
    assert (torch.bincount(which[distance <= 1], minlength=4) > 150).all()


@pytest.mark.parametrize("kind,shape", [("binary", (1, 4, 4)), ("image", (1, 4, 4)), ("points", (2,))])
def test_gsn_sampling_reproducible_and_pure(kind, shape):
    torch.manual_seed(0)
    model = GSN(GSN.Config(data_shape=shape, data_kind=kind, hidden=16, burn_in=5, thin=2, chains=3))
    x = torch.rand(8, *shape).round() if kind != "points" else torch.randn(8, *shape)
    model.training_step(x, model.configure_optimizers())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    a, b = (model.sample(7, torch.Generator().manual_seed(4)) for _ in range(2))
    assert a.shape == (7, *shape) and torch.equal(a, b)
    assert not torch.equal(a, model.sample(7, torch.Generator().manual_seed(5)))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    if kind == "binary":
        assert set(a.unique().tolist()) <= {0.0, 1.0}
    elif kind == "image":
        assert a.min() >= 0 and a.max() <= 1


def test_markov_chain_burn_in_and_thinning_schedule():
    chain = markov.MarkovChain(lambda x, g: x + 1, burn_in=2, thin=3)
    out = chain.run(torch.zeros(3), 7)
    assert out.tolist() == [2, 2, 2, 5, 5, 5, 8] and chain.steps_for(7, 3) == 8
    with pytest.raises(ValueError):
        markov.MarkovChain(lambda x, g: x, burn_in=0, thin=0)
