"""Markov-chain machinery shared by the Boltzmann-machine and GSN families.

- `bernoulli`, `gaussian`: draws whose randomness comes from a CPU
  `torch.Generator` when one is given (so a seed gives the same chain on any
  device) and from the tensor's own device RNG otherwise (training);
- `MarkovChain`: x_{t+1} ~ T(. | x_t) run in parallel chains with explicit
  burn-in and thinning;
- binary RBM maths on raw tensors (W: (nv, nh), visible bias b: (nv,), hidden
  bias c: (nh,)): free energy, the exact log partition function by enumeration
  and its annealed-importance-sampling estimate (Salakhutdinov & Murray 2008,
  "On the quantitative analysis of deep belief networks", ICML; AIS itself is
  Neal 2001, "Annealed importance sampling", arXiv:physics/9803008).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

MAX_ENUMERATION_BITS = 20


# -- random draws ----------------------------------------------------------
def uniform(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U[0, 1) of like's shape, dtype and device (drawn on the CPU when a generator is given)."""
    if generator is None:
        return torch.rand_like(like)
    return torch.rand(like.shape, generator=generator, dtype=like.dtype).to(like.device)


def bernoulli(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Binary states with P(1) = probs, same dtype as probs."""
    return (uniform(probs, generator) < probs).to(probs.dtype)


def gaussian(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of like's shape, dtype and device."""
    if generator is None:
        return torch.randn_like(like)
    return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)


# -- chains ----------------------------------------------------------------
Transition = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


class MarkovChain:
    """Parallel chains x_{t+1} ~ transition(x_t): `burn_in` steps, then a state every `thin` steps.

    `run(init, n)` starts len(init) chains at `init`, discards the first
    `burn_in` transitions, and then records the state of every chain after each
    `thin` further transitions until n states are collected. Sample i comes from
    chain i % chains, recorded at round i // chains (ordered by round).
    """

    def __init__(self, transition: Transition, burn_in: int, thin: int = 1):
        if burn_in < 0 or thin < 1:
            raise ValueError(f"need burn_in >= 0 and thin >= 1, got burn_in={burn_in}, thin={thin}")
        self.transition, self.burn_in, self.thin = transition, burn_in, thin

    def steps_for(self, n: int, chains: int) -> int:
        """Transitions the run takes to collect n states from `chains` chains."""
        return self.burn_in + (math.ceil(n / chains) - 1) * self.thin

    @torch.no_grad()
    def run(self, init: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        state = init  # (chains, ...)
        for _ in range(self.burn_in):
            state = self.transition(state, generator)
        kept = [state]
        while sum(len(s) for s in kept) < n:
            for _ in range(self.thin):
                state = self.transition(state, generator)
            kept.append(state)
        return torch.cat(kept)[:n]  # (n, ...)


# -- binary RBM maths --------------------------------------------------------
def free_energy(v: torch.Tensor, W: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """F(v) = -b.v - sum_j softplus(c_j + (v W)_j), so p(v) = exp(-F(v)) / Z. v: (n, nv) -> (n,)."""
    return -(v @ b) - F.softplus(v @ W + c).sum(-1)


def binary_configurations(n_bits: int, start: int, stop: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Rows start..stop-1 of the 2^n_bits binary configurations, bit 0 first: (stop - start, n_bits)."""
    idx = torch.arange(start, stop, device=device).unsqueeze(1)  # (m, 1)
    return ((idx >> torch.arange(n_bits, device=device)) & 1).to(dtype)  # (m, n_bits)


def exact_log_partition(W: torch.Tensor, b: torch.Tensor, c: torch.Tensor, over: str = "smaller",
                        chunk: int = 1 << 14) -> torch.Tensor:
    """log Z by summing over every configuration of one layer (float64).

    Over the hidden layer: log Z = logsumexp_h [c.h + sum_i softplus(b_i + (W h)_i)];
    over the visible layer: log Z = logsumexp_v [-F(v)]. `over` is 'hidden',
    'visible' or 'smaller' (the default: whichever has fewer units).
    """
    W, b, c = W.double(), b.double(), c.double()
    nv, nh = W.shape
    if over == "smaller":
        over = "hidden" if nh <= nv else "visible"
    if over not in ("hidden", "visible"):
        raise ValueError(f"over must be 'hidden', 'visible' or 'smaller', got {over!r}")
    bits = nh if over == "hidden" else nv
    if bits > MAX_ENUMERATION_BITS:
        raise ValueError(
            f"exact log Z needs 2^{bits} terms (enumerating the {over} layer); refusing above "
            f"2^{MAX_ENUMERATION_BITS}: use the AIS estimate instead"
        )
    parts = []
    for start in range(0, 1 << bits, chunk):
        s = binary_configurations(bits, start, min(start + chunk, 1 << bits), W.dtype, W.device)  # (m, bits)
        if over == "hidden":
            parts.append(s @ c + F.softplus(s @ W.T + b).sum(-1))  # (m,)
        else:
            parts.append(-free_energy(s, W, b, c))  # (m,)
    return torch.logsumexp(torch.cat(parts), 0)


def beta_schedule(temperatures: int, kind: str = "linear") -> torch.Tensor:
    """temperatures + 1 inverse temperatures 0 = beta_0 < ... < beta_K = 1 (float64).

    'linear': evenly spaced. 'piecewise': Salakhutdinov & Murray's spacing
    (500 betas in [0, 0.5), 4000 in [0.5, 0.9), 10000 in [0.9, 1]) scaled to K.
    """
    if temperatures < 1:
        raise ValueError(f"AIS needs at least one temperature, got {temperatures}")
    if kind == "linear":
        return torch.linspace(0.0, 1.0, temperatures + 1, dtype=torch.float64)
    if kind == "piecewise":
        n1 = max(1, round(temperatures * 500 / 14500))
        n2 = max(1, round(temperatures * 4000 / 14500))
        n3 = max(1, temperatures - n1 - n2)
        return torch.cat([
            torch.linspace(0.0, 0.5, n1 + 1, dtype=torch.float64)[:-1],
            torch.linspace(0.5, 0.9, n2 + 1, dtype=torch.float64)[:-1],
            torch.linspace(0.9, 1.0, n3 + 1, dtype=torch.float64),
        ])
    raise ValueError(f"beta schedule must be 'linear' or 'piecewise', got {kind!r}")


@torch.no_grad()
def ais_log_partition(W: torch.Tensor, b: torch.Tensor, c: torch.Tensor, base_bias: torch.Tensor,
                      betas: torch.Tensor, runs: int,
                      generator: torch.Generator | None = None) -> tuple[float, float]:
    """AIS estimate of log Z of the RBM (W, b, c), and its standard error.

    Intermediate distributions (Salakhutdinov & Murray 2008, eq. 14-15), from
    the base-rate model A (independent visible units with biases `base_bias`,
    no weights, zero hidden biases, so Z_A = 2^nh prod_i (1 + e^{bA_i})) to the
    RBM B:  log f_k(v) = (1 - beta_k) bA.v + beta_k b.v
                         + sum_j softplus(beta_k (v W + c)_j).
    Each run draws v_0 ~ A, accumulates log w += log f_k(v_{k-1}) - log f_{k-1}(v_{k-1})
    and moves v with one block-Gibbs step that leaves f_k invariant.
    log Z_B ~ log Z_A + log mean_r w_r. The standard error is the delta-method
    one of log mean w: sd(w) / (sqrt(runs) mean(w)) (it understates the error
    when the weights are heavy-tailed, as AIS weights often are).
    The chains run in W's dtype (float32 matmuls are several times faster);
    each step's log-weight increment is a sum of small per-unit differences and
    is accumulated in float64.
    """
    if runs < 2:
        raise ValueError(f"AIS needs at least 2 runs for a standard error, got {runs}")
    base = base_bias.to(W.dtype)
    nv, nh = W.shape
    betas = [float(x) for x in betas]
    if betas[0] != 0.0 or betas[-1] != 1.0 or any(q <= p for p, q in zip(betas[:-1], betas[1:])):
        raise ValueError("AIS betas must increase strictly from 0 to 1")
    log_z_base = nh * math.log(2.0) + F.softplus(base_bias.double()).sum().item()
    v = bernoulli(torch.sigmoid(base).expand(runs, nv).contiguous(), generator)  # (runs, nv)
    log_w = torch.zeros(runs, dtype=torch.float64, device=W.device)
    for k in range(1, len(betas)):
        prev, beta = betas[k - 1], betas[k]
        act = v @ W + c  # (runs, nh)
        step = (beta - prev) * (v @ (b - base)) + (F.softplus(beta * act) - F.softplus(prev * act)).sum(-1)  # (runs,)
        log_w += step.double()
        if k < len(betas) - 1:
            h = bernoulli(torch.sigmoid(beta * act), generator)  # (runs, nh)
            v = bernoulli(torch.sigmoid((1 - beta) * base + beta * (h @ W.T + b)), generator)  # (runs, nv)
    log_mean_w = torch.logsumexp(log_w, 0) - math.log(runs)
    w = torch.exp(log_w - log_w.max())  # (runs,) rescaled weights
    stderr = (w.std() / (math.sqrt(runs) * w.mean())).item()
    return log_z_base + log_mean_w.item(), stderr


@torch.no_grad()
def log_partition_lower_bound(W: torch.Tensor, b: torch.Tensor, c: torch.Tensor, starts: torch.Tensor,
                              gibbs_steps: int, generator: torch.Generator | None = None,
                              ascent_steps: int = 50) -> float:
    """A certain lower bound on log Z of the RBM (W, b, c), from the states a search for low free energy finds.

    Z = sum_v exp(-F(v)) = sum_h exp(-G(h)), with the hidden free energy G(h) = -c.h - sum_i
    softplus(b_i + (W h)_i); every term is positive, so the sum over any set of distinct states of one
    layer is at most Z, and a hidden state's term already sums over every visible state. The bound is
    the larger of the two sums, over the visible and over the hidden states found: block-Gibbs chains at
    beta = 1 from `starts` (n, nv) for `gibbs_steps` steps, each chain's lowest-free-energy state of each
    layer (checked every 10 steps) improved by greedy ascent (v <- 1[b + W sigma(c + v W) > 0], and
    likewise for h, kept only where the free energy falls) for at most `ascent_steps` rounds; the
    chains' last states count too. It needs no annealing, so it checks AIS from the other side: an AIS
    estimate below it is wrong by at least the difference (Salakhutdinov & Murray's estimate is biased
    low when its chains miss a mode, and its standard error cannot show that). Chains run in W's dtype,
    free energies in float64.
    """
    if gibbs_steps < 0 or ascent_steps < 0:
        raise ValueError(f"need gibbs_steps >= 0 and ascent_steps >= 0, got {gibbs_steps} and {ascent_steps}")
    W64, b64, c64 = W.double(), b.double(), c.double()
    layers = {  # layer -> (-free energy of its states, the greedy proposal from a state)
        "visible": (lambda v: -free_energy(v.double(), W64, b64, c64),
                    lambda v: (torch.sigmoid(v @ W + c) @ W.T + b) > 0),
        "hidden": (lambda h: -free_energy(h.double(), W64.T, c64, b64),
                   lambda h: (torch.sigmoid(h @ W.T + b) @ W + c) > 0),
    }
    v = starts.to(W.dtype)  # (n, nv)
    h = bernoulli(torch.sigmoid(v @ W + c), generator)  # (n, nh)
    best = {"visible": (v, layers["visible"][0](v)), "hidden": (h, layers["hidden"][0](h))}
    for step in range(1, gibbs_steps + 1):
        v = bernoulli(torch.sigmoid(h @ W.T + b), generator)  # (n, nv)
        h = bernoulli(torch.sigmoid(v @ W + c), generator)  # (n, nh)
        if step % 10 == 0 or step == gibbs_steps:
            for name, state in (("visible", v), ("hidden", h)):
                kept, kept_value = best[name]
                value = layers[name][0](state)
                better = value > kept_value
                best[name] = (torch.where(better.unsqueeze(1), state, kept), torch.maximum(value, kept_value))
    bounds = []
    for name, last in (("visible", v), ("hidden", h)):
        neg_free, propose = layers[name]
        x, value = best[name]
        for _ in range(ascent_steps):
            proposal = propose(x).to(W.dtype)
            proposed = neg_free(proposal)
            better = proposed > value  # (n,)
            if not better.any():
                break
            x, value = torch.where(better.unsqueeze(1), proposal, x), torch.maximum(proposed, value)
        distinct = torch.unique(torch.cat([last, x]), dim=0)  # (m, units)
        bounds.append(torch.logsumexp(neg_free(distinct), 0).item())
    return max(bounds)
