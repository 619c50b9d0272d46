"""Bernoulli-Bernoulli restricted Boltzmann machine.

Paper: Hinton 2002, "Training products of experts by minimizing contrastive
divergence" (Neural Computation; no arXiv id) for CD-k; Tieleman 2008,
"Training restricted Boltzmann machines using approximations to the
likelihood gradient" (ICML) for persistent CD; Salakhutdinov & Murray 2008,
"On the quantitative analysis of deep belief networks" (ICML) for the AIS
estimate of log Z that `log_likelihood` reports. Energy
E(v, h) = -b.v - c.h - v W h, so p(v) = exp(-F(v)) / Z with free energy
F(v) = -b.v - sum_j softplus(c_j + (v W)_j).

Training: the gradient of the mean negative log-likelihood,
  -d log p / dW = <v p(h|v)>_model - <v p(h|v)>_data (likewise for b, c),
is estimated with CD-k (negative samples = k block-Gibbs steps from the batch)
or PCD-k (k steps from persistent fantasy particles, a registered buffer so
they survive save/load), written into p.grad, averaged over data-parallel
workers and applied by SGD with momentum, so the generic training loop runs it
(and its learning-rate schedule, warm-up and gradient averaging apply as for any family).

The optimisation recipe follows Hinton 2010, "A Practical Guide to Training
Restricted Boltzmann Machines" (UTML TR 2010-003): W ~ N(0, 0.01^2), hidden
biases 0, visible biases log(p_i / (1 - p_i)) of the training mean (section 8,
set by `init_from_data` before the first step, which also draws PCD's fantasy
particles from that independent-Bernoulli model); momentum `momentum` (0.5) for the
first `momentum_switch_steps` optimiser steps, then `momentum_final` (0.9)
(section 9); an L2 weight cost `weight_decay` (2e-4) on W only, not on the
biases (section 10). The step count lives in the `steps_taken` buffer, so both
schedules resume with a checkpoint. Optionally the negative phase grows from k
to `k_final` Gibbs steps, linearly over `k_ramp_steps` steps (the guide's advice
to use CD-n with a larger n once the weights have grown).

NOTE: the momentum switch counts optimiser steps, not epochs: the guide's "5
epochs" is 2,500 steps of 100 on the 50,000 binarized-MNIST training images, the
default 1,000 suits the CPU budgets; recipes set it per budget. The momentum
applies to PCD as to CD (the fantasy particles move with k steps per update
either way), and the learning-rate schedule of the training loop (cosine or
step decay, as Tieleman 2008 decays PCD's rate) multiplies config.lr for both.
NOTE: PyTorch's SGD momentum is v <- mu v + g, p <- p - lr v, the guide's
Delta <- mu Delta - lr g; identical for a constant lr.
NOTE: the "loss" metric is the one-step reconstruction error
sum_i (v_i - p(v_i = 1 | h))^2 with h ~ p(h | v) (Hinton's practical guide,
UTML TR 2010-003), per example; it is NOT a likelihood. "free_energy_gap"
(mean F(data) - mean F(negative samples)) is reported beside it.
NOTE: `log_likelihood` uses AIS for log Z with a generator seeded by
config.seed, so it is deterministic for given weights; the estimate is cached
and recomputed only when W, b, c or the base rates change.
NOTE: AIS is unbiased for Z, so log Z_AIS is biased low, and on a PCD-trained RBM whose
modes the annealing chains miss it can be low by many nats while its standard error looks
small (2026-12-04, BENCHMARKS.md "The RBM's log Z"). So log Z is also bounded from below
with certainty (markov.log_partition_lower_bound: the free energies of the distinct visible
or hidden states that `bound_chains` Gibbs chains, from the fantasy particles and the base
rates, and a greedy descent of the free energy find), and the likelihood uses the larger of the two; `likelihood_notes` reports both
and warns when AIS fell below the bound or when its weights rest on fewer than
MIN_EFFECTIVE_AIS_RUNS effective runs (Kish's R / (1 + R stderr^2)). The result is still an
estimate, and optimistic wherever both miss mass.
NOTE: the AIS base-rate model takes its visible biases from the smoothed mean
of all training batches seen ((sum + 1) / (count + 2), running buffers), or
zeros with ais_base='zeros' or before any training; any base rate gives an
unbiased Z estimate, a good one only lowers its variance.
NOTE: data-parallel workers: the base-rate counts are summed over all workers, and the negative
phase draws its noise through `step_noise` (CD's chains: each worker its examples' stride of one
draw; PCD's fantasy particles, held alike by every worker: the whole draw), so N workers take the
steps one worker takes with the same global batch.
NOTE: `sample` returns binary visible states (not probabilities) after
`sample_burn_in` block-Gibbs steps of independent chains, started from the
base-rate model.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.distributed as dist

from models.base import ConfigError, FamilyConfig, GenerativeModel, average_gradients, logit_of_mean
from models import markov


MIN_EFFECTIVE_AIS_RUNS = 10  # below this many effective AIS runs the estimate is flagged (one run dominating: ~1)


@dataclasses.dataclass
class RBMConfig(FamilyConfig):
    hidden: int = 128
    k: int = 1  # Gibbs steps per negative phase (CD-k or PCD-k)
    persistent: bool = False  # PCD: negative chains persist across updates
    chains: int = 100  # number of persistent fantasy particles (PCD only)
    k_final: int = 0  # CD-k growing over training: k rises linearly to k_final (0: k throughout) ...
    k_ramp_steps: int = 0  # ... over this many optimiser steps (0: k_final from the first step)
    lr: float = 0.05
    momentum: float = 0.5  # SGD momentum for the first momentum_switch_steps optimiser steps ...
    momentum_final: float = 0.9  # ... and this one afterwards (Hinton's guide, section 9: 0.5, then 0.9)
    momentum_switch_steps: int = 1000  # (0: momentum_final from the first step)
    weight_decay: float = 2e-4  # L2 weight cost on W only: dW -= lr * weight_decay * W (the guide's section 10)
    init_std: float = 0.01  # W ~ N(0, init_std^2); biases start at zero
    ais_runs: int = 100
    ais_temperatures: int = 1000  # K: betas 0 = beta_0 < ... < beta_K = 1
    ais_schedule: str = "linear"  # 'linear' or 'piecewise' (Salakhutdinov & Murray's spacing)
    ais_base: str = "data"  # base-rate visible biases: 'data' (training mean) or 'zeros'
    bound_chains: int = 500  # the certain lower bound on log Z: chains searching for low free energy ...
    bound_steps: int = 1000  # ... for this many Gibbs steps each (0 chains or 0 steps: no bound)
    sample_burn_in: int = 1000  # block-Gibbs steps before a sample is returned

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bound_chains < 0 or self.bound_steps < 0:
            raise ConfigError(f"bound_chains and bound_steps must not be negative, got {self.bound_chains} and "
                              f"{self.bound_steps}")
        for key in ("hidden", "k", "chains", "ais_temperatures"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.ais_runs < 2:
            raise ConfigError(f"ais_runs must be at least 2, got {self.ais_runs}")
        if self.sample_burn_in < 0:
            raise ConfigError(f"sample_burn_in must be non-negative, got {self.sample_burn_in}")
        if not 0 <= self.momentum < 1 or not 0 <= self.momentum_final < 1:
            raise ConfigError(f"momentum and momentum_final must be in [0, 1), got {self.momentum} and {self.momentum_final}")
        if self.weight_decay < 0 or self.init_std < 0:
            raise ConfigError("need weight_decay >= 0 and init_std >= 0")
        for key in ("momentum_switch_steps", "k_final", "k_ramp_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must not be negative, got {getattr(self, key)}")
        if self.ais_schedule not in ("linear", "piecewise"):
            raise ConfigError(f"ais_schedule must be 'linear' or 'piecewise', got {self.ais_schedule!r}")
        if self.ais_base not in ("data", "zeros"):
            raise ConfigError(f"ais_base must be 'data' or 'zeros', got {self.ais_base!r}")


class RBM(GenerativeModel):
    name = "rbm"
    branch = "explicit density / approximate / Markov chain (Boltzmann machine)"
    paper = "Hinton 2002 (CD); Tieleman 2008 (PCD); Salakhutdinov & Murray 2008 (AIS)"
    likelihood_kind = "estimate"
    likelihood_method = "AIS"
    supported_kinds = ("binary",)
    Config = RBMConfig

    def __init__(self, config: RBMConfig):
        super().__init__(config)
        c = config
        g = torch.Generator().manual_seed(c.seed)
        self.W = torch.nn.Parameter(c.init_std * torch.randn(c.dim, c.hidden, generator=g))  # (nv, nh)
        self.b = torch.nn.Parameter(torch.zeros(c.dim))  # visible biases (nv,)
        self.c = torch.nn.Parameter(torch.zeros(c.hidden))  # hidden biases (nh,)
        particles = torch.bernoulli(torch.full((c.chains if c.persistent else 0, c.dim), 0.5), generator=g)
        self.register_buffer("particles", particles)  # (chains, nv) PCD fantasy particles
        self.register_buffer("data_sum", torch.zeros(c.dim, dtype=torch.float64))  # for the base rates
        self.register_buffer("data_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("steps_taken", torch.zeros((), dtype=torch.long))  # drives the momentum and k schedules
        self._log_z_cache: tuple[list[torch.Tensor], dict[str, float]] | None = None

    # -- the model ------------------------------------------------------
    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) for v of shape (n, *data_shape) or (n, nv): (n,)."""
        return markov.free_energy(v.flatten(1).to(self.W.dtype), self.W, self.b, self.c)

    def hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(v @ self.W + self.c)  # (n, nh)

    def visible_probs(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h @ self.W.T + self.b)  # (n, nv)

    def gibbs_step(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One block-Gibbs sweep v -> h ~ p(h|v) -> v' ~ p(v|h); v: (n, nv) binary."""
        h = markov.bernoulli(self.hidden_probs(v), generator)
        return markov.bernoulli(self.visible_probs(h), generator)

    def training_gibbs_step(self, v: torch.Tensor, per_example: bool) -> torch.Tensor:
        """`gibbs_step` with its uniforms from `step_noise`, so data-parallel workers take one worker's steps."""
        ph = self.hidden_probs(v)
        h = (self.step_noise(ph.shape, uniform=True, per_example=per_example).to(ph.dtype) < ph).to(ph.dtype)
        pv = self.visible_probs(h)
        return (self.step_noise(pv.shape, uniform=True, per_example=per_example).to(pv.dtype) < pv).to(pv.dtype)

    def sampler(self, burn_in: int | None = None, thin: int = 1) -> markov.MarkovChain:
        """The block-Gibbs chain used by `sample` (burn-in from the config unless given)."""
        return markov.MarkovChain(self.gibbs_step, self.config.sample_burn_in if burn_in is None else burn_in, thin)

    def base_bias(self) -> torch.Tensor:
        """Visible biases of the base-rate model: logit of the smoothed training mean, or zeros."""
        if self.config.ais_base == "zeros":
            return torch.zeros_like(self.data_sum)
        mean = (self.data_sum + 1) / (self.data_count + 2)  # (nv,) Laplace-smoothed
        return torch.logit(mean)

    # -- training -------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        groups = [{"params": [self.W], "weight_decay": c.weight_decay},
                  {"params": [self.b, self.c], "weight_decay": 0.0}]
        return {"main": torch.optim.SGD(groups, lr=c.lr, momentum=self.momentum_at(int(self.steps_taken)))}

    def momentum_at(self, step: int) -> float:
        """SGD momentum of optimiser step `step` (0-based): config.momentum, then momentum_final."""
        c = self.config
        return c.momentum if step < c.momentum_switch_steps else c.momentum_final

    def k_at(self, step: int) -> int:
        """Gibbs steps of the negative phase at optimiser step `step`: k, or rising linearly to k_final."""
        c = self.config
        if c.k_final <= 0 or c.k_final == c.k:
            return c.k
        if step >= c.k_ramp_steps:
            return c.k_final
        return int(round(c.k + (c.k_final - c.k) * step / c.k_ramp_steps))

    @torch.no_grad()
    def init_from_data(self, train: torch.Tensor) -> None:
        self.b.copy_(logit_of_mean(train.flatten(1)))  # Hinton's guide, section 8: log(p_i / (1 - p_i))
        if self.config.persistent:  # PCD's fantasy particles start at the data marginals, not at p = 0.5
            g = torch.Generator().manual_seed(self.config.seed + 1)
            self.particles.copy_(markov.bernoulli(torch.sigmoid(self.b).expand_as(self.particles).cpu(), g))

    @torch.no_grad()
    def training_step(self, batch: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        v0 = batch.flatten(1).to(self.W.dtype)  # (n, nv)
        counts = torch.cat([v0.sum(0).double(), torch.tensor([float(v0.shape[0])], dtype=torch.float64,
                                                                device=v0.device)])  # (nv + 1,)
        if dist.is_available() and dist.is_initialized():  # the base rates count every worker's examples
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        self.data_sum += counts[:-1]
        self.data_count += counts[-1]
        ph0 = self.hidden_probs(v0)  # (n, nh)
        step = int(self.steps_taken)
        persistent = self.config.persistent
        vk = self.particles if persistent else v0  # (m, nv) chain start
        for _ in range(self.k_at(step)):  # CD's chains are per example, PCD's the same on every worker
            vk = self.training_gibbs_step(vk, per_example=not persistent)
        phk = self.hidden_probs(vk)  # (m, nh)
        if self.config.persistent:
            self.particles.copy_(vk)
        # p.grad = -(d mean log-likelihood / d p) = model statistics - data statistics.
        grads = {
            self.W: vk.T @ phk / vk.shape[0] - v0.T @ ph0 / v0.shape[0],  # (nv, nh)
            self.b: vk.mean(0) - v0.mean(0),  # (nv,)
            self.c: phk.mean(0) - ph0.mean(0),  # (nh,)
        }
        opt = optimizers["main"]
        opt.zero_grad(set_to_none=True)
        for p, g in grads.items():
            p.grad = g
        average_gradients(p for group in opt.param_groups for p in group["params"])
        for group in opt.param_groups:  # the momentum schedule (the lr schedule is the training loop's)
            group["momentum"] = self.momentum_at(step)
        opt.step()
        self.steps_taken += 1
        recon = self.visible_probs(markov.bernoulli(ph0, None))  # (n, nv)
        loss = ((v0 - recon) ** 2).sum(-1).mean()
        gap = self.free_energy(v0).mean() - self.free_energy(vk).mean()
        return {"loss": loss.item(), "free_energy_gap": gap.item(), "momentum": self.momentum_at(step),
                "k": float(self.k_at(step))}

    # -- partition function and likelihood ------------------------------
    def exact_log_partition(self) -> float:
        """log Z by enumerating the smaller layer; raises ValueError above 2^20 terms."""
        return markov.exact_log_partition(self.W.detach(), self.b.detach(), self.c.detach()).item()

    def ais_log_partition(self, runs: int | None = None, betas: torch.Tensor | None = None,
                          generator: torch.Generator | None = None) -> tuple[float, float]:
        """(AIS estimate of log Z, delta-method standard error); defaults from the config."""
        c = self.config
        betas = markov.beta_schedule(c.ais_temperatures, c.ais_schedule) if betas is None else betas
        return markov.ais_log_partition(self.W.detach(), self.b.detach(), self.c.detach(), self.base_bias(),
                                        betas, c.ais_runs if runs is None else runs, generator)

    def log_partition_lower_bound(self, generator: torch.Generator | None = None, chains: int | None = None,
                                  steps: int | None = None) -> float:
        """A certain lower bound on log Z (markov.log_partition_lower_bound), from `chains` chains of `steps`
        Gibbs steps (defaults: bound_chains, bound_steps): the PCD fantasy particles first (they sit where the
        model puts its mass), then base-rate draws; -inf when either is 0."""
        c = self.config
        chains = c.bound_chains if chains is None else chains
        steps = c.bound_steps if steps is None else steps
        if chains == 0 or steps == 0:
            return -math.inf
        starts = self.particles[:chains]
        extra = chains - len(starts)
        if extra:
            probs = torch.sigmoid(self.base_bias()).expand(extra, -1).to(self.device, self.W.dtype)
            starts = torch.cat([starts.to(self.W.dtype), markov.bernoulli(probs, generator)])  # (bound_chains, nv)
        return markov.log_partition_lower_bound(self.W.detach(), self.b.detach(), self.c.detach(), starts,
                                                steps, generator)

    def log_partition_estimates(self) -> dict[str, float]:
        """Cached for the current weights, with generators seeded by config.seed: the AIS estimate of log Z
        ('ais', its delta-method 'ais_stderr'), the certain lower bound ('bound') and the log Z the
        likelihood uses ('log_z': the larger of the two, since log Z is at least the bound)."""
        key = [t.detach().clone() for t in (self.W, self.b, self.c, self.base_bias())]
        cache = self._log_z_cache
        if cache is None or any(a.shape != k.shape or a.device != k.device or not torch.equal(a, k)
                                for a, k in zip(cache[0], key)):
            ais, stderr = self.ais_log_partition(generator=torch.Generator().manual_seed(self.config.seed))
            bound = self.log_partition_lower_bound(torch.Generator().manual_seed(self.config.seed))
            self._log_z_cache = cache = (key, {"ais": ais, "ais_stderr": stderr, "bound": bound,
                                               "log_z": max(ais, bound)})
        return dict(cache[1])

    def log_partition(self) -> tuple[float, float]:
        """(log Z, the AIS standard error): the AIS estimate, raised to the certain lower bound when below it."""
        est = self.log_partition_estimates()
        return est["log_z"], est["ais_stderr"]

    def likelihood_notes(self) -> dict[str, float | str]:
        """log Z's estimates as eval metrics, and a warning when AIS fell below the floor or rests on a few runs."""
        est = self.log_partition_estimates()
        runs = self.config.ais_runs
        effective = runs / (1 + runs * est["ais_stderr"] ** 2)  # AIS runs' effective sample size, from the delta method
        notes: dict[str, float | str] = {"log_z_ais": est["ais"], "log_z_ais_stderr": est["ais_stderr"],
                                         "log_z_ais_effective_runs": effective}
        if math.isfinite(est["bound"]):
            notes["log_z_lower_bound"] = est["bound"]
        problems = []
        if est["bound"] > est["ais"]:
            problems.append(
                f"the AIS estimate of log Z ({est['ais']:.2f}) is {est['bound'] - est['ais']:.2f} nats below a certain "
                f"lower bound ({est['bound']:.2f}): its chains missed modes of this model, so the NLL uses the bound and "
                f"is still optimistic (more rbm.ais_temperatures may not cure it; a lower training lr did, BENCHMARKS.md "
                f"\"The RBM's log Z\")")
        if effective < MIN_EFFECTIVE_AIS_RUNS:
            problems.append(f"the AIS weights rest on about {effective:.1f} of {runs} runs, so log Z may be far too low")
        if problems:
            notes["likelihood_warning"] = "rbm: " + "; ".join(problems)
        return notes

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """-F(x) - log Z per example, in nats, log Z from log_partition (an estimate, never below the bound)."""
        log_z, _ = self.log_partition()
        return (-self.free_energy(x.to(self.device)).double() - log_z).float().cpu()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        init = markov.bernoulli(torch.sigmoid(self.base_bias()).expand(n, -1).to(self.device, self.W.dtype),
                                generator)  # (n, nv)
        v = self.sampler().run(init, n, generator)  # (n, nv) binary states
        return v.view(n, *self.config.data_shape).cpu()
