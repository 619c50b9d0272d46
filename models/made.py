"""MADE: Masked Autoencoder for Distribution Estimation.

Paper: Germain, Gregor, Murray & Larochelle 2015, "MADE: Masked Autoencoder for
Distribution Estimation" (arXiv:1502.03509). A fully visible belief net: an MLP
over the flattened binary data whose weights are masked so that output d (the
Bernoulli logit of x_d) only sees the inputs before d in an ordering, giving the
exact log p(x) = sum_d log p(x_d | x_<d) in one pass.

Masks follow section 4 of the paper: each input gets a degree (its place in the
ordering), hidden unit k of layer l a degree m^l(k) drawn uniformly from
[min m^{l-1}, D-1] (1-based), connections m^l(k) >= m^{l-1}(k') between hidden
layers and a strict m^0(d) > m^L(k) into the outputs.

Connectivity-agnostic training (section 4.2): with `num_masks` = M > 1 each
training step uses the next of M fixed connectivities (and orderings, unless
`natural_ordering`), each built from its own seed, so the masks are
reproducible and live in the state_dict as buffers. At test time the model is
the ensemble mixture p(x) = (1/M) sum_m p_m(x), so
log_likelihood = logmeanexp_m log p_m(x) is exact for that mixture.

Data: 'binary' only ({0, 1} values of any shape, flattened).

NOTE: the only regulariser besides early stopping is an optional L2 penalty on
the weights (`weight_decay`, Adam's coupled form);
without it a 1-mask MADE of 500 units trained 30 epochs with Adam (lr 5e-3, cosine) ended at
a training loss of 96 and a validation NLL of 102.4 on binarized MNIST (benchmarks/results/recipes.jsonl, 2026-12-01);
with weight_decay 1e-3, 12 epochs end at training 98.5, validation 101.4, test 100.77.
NOTE: the ordering matters more than the regulariser: with `natural_ordering` off (a random
permutation of the pixels, as in the paper's experiments and pytorch-made), lr 1e-3 and weight
decay 1e-4, the same net reaches validation 96.0 after 13 epochs where the raster order is at 102.3,
and 93.49 on the whole test set after 100 epochs (the standard recipe; BENCHMARKS.md, "Standard
budget"). The raster order stays the default: inpainting the bottom half is exact only in it.
NOTE: masks are cycled through M fixed seeds rather than drawn afresh per
minibatch (the paper's scheme, with a finite pool, as its experiments do).
NOTE: sampling draws a mask m uniformly for each sample (from the generator) and
then fills the dimensions in that mask's ordering: exact samples of the same
ensemble mixture whose likelihood is reported (with M = 1: the single mask).
No direct input-to-output connections.
NOTE: `sampler` 'naive' runs the whole network once per dimension (D passes);
'cached' (the default) computes every hidden unit once, as soon as the inputs it
can see are all drawn (a unit of effective degree e, the latest place in the
ordering it depends on, is final after step e), and per step only the one output
logit needed, from the final units of the last layer: about one network pass in
all, and the same samples as 'naive' for the same generator (logits equal to
float rounding, drawn from the same uniforms).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F

from models.base import ConfigError, FamilyConfig, GenerativeModel, logit_of_mean
from models.masked import SAMPLERS, AutoregressiveSampler, MaskedLinear, bernoulli_thresholds


@dataclasses.dataclass
class MADEConfig(FamilyConfig):
    hidden: tuple[int, ...] = (500,)  # hidden layer sizes (the paper's MNIST model: one layer of 500)
    num_masks: int = 1  # connectivities cycled through in training and averaged at test time
    natural_ordering: bool = True  # order x_1..x_D for every mask; else each mask draws a permutation
    lr: float = 1e-3
    weight_decay: float = 0.0  # L2 penalty (Adam's coupled weight_decay) on the weights, not the biases
    sampler: str = "cached"  # 'cached': each unit computed once (~1 pass); 'naive': a full pass per dimension

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must not be negative, got {self.weight_decay}")
        if any(h <= 0 for h in self.hidden):
            raise ConfigError(f"hidden sizes must be positive, got {list(self.hidden)}")
        if self.num_masks < 1:
            raise ConfigError(f"num_masks must be at least 1, got {self.num_masks}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["hidden"] = list(self.hidden)
        return out


def made_degrees(dim: int, hidden: tuple[int, ...], natural: bool, generator: torch.Generator) -> list[torch.Tensor]:
    """0-based degrees: the inputs' places in the ordering (D,), then each hidden layer's (h_l,)."""
    order = torch.arange(dim) if natural else torch.randperm(dim, generator=generator)  # (D,)
    degrees = [order]
    for size in hidden:
        low = int(degrees[-1].min())
        high = max(dim - 1, low + 1)  # exclusive: a unit of degree D-1 would reach no output
        degrees.append(torch.randint(low, high, (size,), generator=generator))  # (h_l,)
    return degrees


def made_masks(degrees: list[torch.Tensor]) -> list[torch.Tensor]:
    """One (out, in) mask per layer: >= between hidden layers, strict > into the outputs."""
    masks = [d_out[:, None] >= d_in[None, :] for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    masks.append(degrees[0][:, None] > degrees[-1][None, :])  # (D, h_L): x_d never reaches output d
    return masks


class MADE(GenerativeModel):
    name = "made"
    branch = "explicit density / tractable / fully visible belief net"
    paper = "Germain et al. 2015, arXiv:1502.03509"
    likelihood_kind = "exact"
    likelihood_method = "exact (mask-ensemble mixture)"
    Config = MADEConfig
    supported_kinds = ("binary",)

    def __init__(self, config: MADEConfig):
        super().__init__(config)
        c = config
        per_mask = []
        for m in range(c.num_masks):
            gen = torch.Generator().manual_seed(1_000_003 * c.seed + m)
            per_mask.append(made_degrees(c.dim, c.hidden, c.natural_ordering, gen))
        masks = [made_masks(degrees) for degrees in per_mask]
        sizes = [c.dim, *c.hidden, c.dim]
        self.layers = torch.nn.ModuleList(
            MaskedLinear(a, b, torch.stack([mk[i] for mk in masks]))  # masks (M, b, a)
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
        )
        self.register_buffer("order", torch.stack([degrees[0] for degrees in per_mask]))  # (M, D): place of x_d
        self.register_buffer("mask_step", torch.zeros((), dtype=torch.long))  # training steps taken

    def logits(self, x: torch.Tensor, mask: int = 0) -> torch.Tensor:
        """Bernoulli logits (n, D) of every x_d given x_<d under connectivity `mask`; x is (n, D)."""
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h, mask)  # (n, size_{i+1})
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h

    def log_prob_mask(self, x: torch.Tensor, mask: int) -> torch.Tensor:
        """log p_m(x) per example (n,) for flattened x (n, D)."""
        return -F.binary_cross_entropy_with_logits(self.logits(x, mask), x, reduction="none").sum(-1)

    @torch.no_grad()
    def init_from_data(self, train: torch.Tensor) -> None:
        self.layers[-1].bias.copy_(logit_of_mean(train.flatten(1)))  # p(x_d | nothing seen) = mean of x_d

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        decayed = [layer.weight for layer in self.layers]
        biases = [layer.bias for layer in self.layers]
        return {"main": torch.optim.Adam([{"params": decayed, "weight_decay": self.config.weight_decay},
                                          {"params": biases, "weight_decay": 0.0}], lr=self.config.lr)}

    def training_step(self, batch: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        mask = int(self.mask_step) % self.config.num_masks  # cycle through the fixed connectivities
        loss = -self.log_prob_mask(batch.flatten(1), mask).mean()
        self.optimize(optimizers["main"], loss)
        self.mask_step += 1
        return {"loss": loss.item(), "mask": float(mask)}

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.to(self.device).flatten(1)  # (n, D)
        per_mask = torch.stack([self.log_prob_mask(flat, m) for m in range(self.config.num_masks)])  # (M, n)
        return (torch.logsumexp(per_mask, 0) - math.log(self.config.num_masks)).cpu()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        c = self.config
        which = torch.randint(c.num_masks, (n,), generator=generator)  # mixture component of each sample
        u = torch.rand((n, c.dim), generator=generator).to(self.device)  # (n, D)
        values = torch.tensor([0.0, 1.0], device=self.device)
        x = torch.zeros(n, c.dim, device=self.device)  # (n, D)
        for m in which.unique().tolist():
            rows = (which == m).nonzero().squeeze(1).to(self.device)
            if c.sampler == "cached":
                x[rows] = self.sample_cached(u[rows], m)
                continue
            sampler = AutoregressiveSampler(order=self.order[m].argsort().tolist())  # D passes

            def two_way(v: torch.Tensor, m: int = m) -> torch.Tensor:
                logit = self.logits(v, m)  # (n_m, D)
                return torch.stack([torch.zeros_like(logit), logit], -1)  # (n_m, D, 2)

            x[rows] = sampler(two_way, u[rows], values)
        return x.view(n, *c.data_shape).cpu()

    def incremental_plan(self, mask: int) -> tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]],
                                                  list[list[int]], torch.Tensor, torch.Tensor]:
        """The masked network of connectivity `mask`, arranged for `sample_cached`.

        The units of each hidden layer are sorted by effective degree e (the latest place in the
        ordering of an input that the unit depends on through any path; e <= its mask degree), so
        the units final before step t (e < t) are a prefix of the layer. Returns the sampling order
        (the dimension drawn at each step); per hidden layer its masked weight as (h_{l-1}, h_l)
        (inputs in data order, units of the layer below in their sorted order) and bias (h_l,), and
        `ready[l][t]`: how many of its units have e < t; the output layer's masked weight (D, h_L, 1)
        and bias (D, 1), row t for the dimension drawn at step t.
        """
        perm = self.order[mask].argsort()  # (D,): the dimension drawn at each step
        steps = torch.arange(self.config.dim, device=perm.device)  # (D,)
        effective, arrangement = self.order[mask], None  # the layer below's e (unsorted) and its sort
        hidden, ready = [], []
        for layer in self.layers[:-1]:
            degree = torch.where(layer.mask[mask].bool(), effective[None, :], -1).amax(1)  # (h_l,); -1: sees no input
            ordered, units = degree.sort(stable=True)  # (h_l,) each
            weight = (layer.weight * layer.mask[mask]).index_select(0, units)  # (h_l, h_{l-1})
            if arrangement is not None:
                weight = weight.index_select(1, arrangement)
            hidden.append((weight.t(), layer.bias.index_select(0, units)))  # (h_{l-1}, h_l), (h_l,)
            ready.append(torch.searchsorted(ordered, steps).tolist())  # [t]: units with e < t
            effective, arrangement = degree, units
        last = self.layers[-1]
        connected = last.mask[mask].bool().index_select(0, perm)  # (D, h_L): row t for the dimension drawn at step t
        if (connected & (effective[None, :] >= steps[:, None])).any():
            raise RuntimeError("MADE masks are not autoregressive: an output sees a unit of a later input")
        out_weight = last.weight.index_select(0, perm) * connected  # (D, h_L)
        if arrangement is not None:
            out_weight = out_weight.index_select(1, arrangement)
        return perm.tolist(), hidden, ready, out_weight.unsqueeze(-1), last.bias.index_select(0, perm).unsqueeze(-1)

    @torch.no_grad()
    def sample_cached(self, u: torch.Tensor, mask: int, known: torch.Tensor | None = None,
                      observed: torch.Tensor | None = None) -> torch.Tensor:
        """Samples (n, D) of connectivity `mask` from uniforms u (n, D), computing each unit once.

        With `known` (n, D) values and an `observed` (n, D) boolean mask, the observed dimensions are
        clamped to their known values as their turn comes, and every other dimension is drawn from
        p(x_d | x_<d) given the values before it, observed or drawn (genzoo/uses/inpaint_samplers.py:
        exact conditional samples when the observed dimensions all come first in the ordering).

        Step t draws the t-th dimension of the ordering: first the units of every hidden layer whose
        effective degree is t - 1 (final now: from the final units of the layer below, a prefix;
        for the first layer from x, whose undrawn entries are 0 and have zero weight), then that
        dimension's logit from the last layer (its units not final yet are 0 and have zero weight).
        The logit equals, to float rounding, the one the naive loop computes at that step, and it is
        drawn by the same inverse CDF of the same uniform.
        """
        perm, hidden, ready, out_weight, out_bias = self.incremental_plan(mask)
        n, dim = u.shape
        x = torch.zeros(dim, n, 1, device=u.device)  # (D, n, 1): x transposed, one row per dimension
        threshold = bernoulli_thresholds(u.t()).unsqueeze(-1)  # (D, n, 1): x_d = 1 where its logit is above
        x_rows, threshold_rows = x.unbind(0), threshold.unbind(0)  # (n, 1) views each
        clamp = None if observed is None else (observed.t().unsqueeze(-1).unbind(0),
                                               known.t().unsqueeze(-1).to(x.dtype).unbind(0))  # (n, 1) rows
        h = [torch.zeros(n, weight.shape[1], device=u.device) for weight, _ in hidden]  # (n, h_l) each
        for t, d in enumerate(perm):
            for i, (weight, bias) in enumerate(hidden):
                start, stop = (ready[i][t - 1] if t else 0), ready[i][t]  # the units final from this step on
                if stop > start:
                    seen = dim if i == 0 else ready[i - 1][t]  # what the layer below has final (a prefix)
                    below = x.view(dim, n).t() if i == 0 else h[i - 1][:, :seen]  # (n, seen)
                    out = h[i][:, start:stop]  # (n, stop - start)
                    torch.addmm(bias[start:stop], below, weight[:seen, start:stop], out=out).relu_()
            top = h[-1] if hidden else x.view(dim, n).t()  # (n, h_L)
            logit = torch.addmm(out_bias[t], top, out_weight[t])  # (n, 1)
            torch.gt(logit, threshold_rows[d], out=x_rows[d])  # the naive loop's inverse-CDF draw, as 0 / 1
            if clamp is not None:
                torch.where(clamp[0][d], clamp[1][d], x_rows[d], out=x_rows[d])
        return x.view(dim, n).t().contiguous()  # (n, D)
