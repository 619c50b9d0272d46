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
a training loss of 96 and a validation NLL of 102.4 on binarized MNIST (benchmarks/results/recipes.jsonl, 2026-12-01).
NOTE: masks are cycled through M fixed seeds rather than drawn afresh per
minibatch (the paper's scheme, with a finite pool, as its experiments do).
NOTE: sampling draws a mask m uniformly for each sample (from the generator) and
then fills the dimensions in that mask's ordering, one network pass per
dimension: exact samples of the same ensemble mixture whose likelihood is
reported (with M = 1: the single mask). No direct input-to-output connections.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F

from models.base import ConfigError, FamilyConfig, GenerativeModel, logit_of_mean
from models.masked import AutoregressiveSampler, MaskedLinear


@dataclasses.dataclass
class MADEConfig(FamilyConfig):
    hidden: tuple[int, ...] = (500,)  # hidden layer sizes (the paper's MNIST model: one layer of 500)
    num_masks: int = 1  # connectivities cycled through in training and averaged at test time
    natural_ordering: bool = True  # order x_1..x_D for every mask; else each mask draws a permutation
    lr: float = 1e-3
    weight_decay: float = 0.0  # L2 penalty (Adam's coupled weight_decay) on the weights, not the biases

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must not be negative, got {self.weight_decay}")
        if any(h <= 0 for h in self.hidden):
            raise ConfigError(f"hidden sizes must be positive, got {list(self.hidden)}")
        if self.num_masks < 1:
            raise ConfigError(f"num_masks must be at least 1, got {self.num_masks}")

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
            sampler = AutoregressiveSampler(order=self.order[m].argsort().tolist())  # D passes

            def two_way(v: torch.Tensor, m: int = m) -> torch.Tensor:
                logit = self.logits(v, m)  # (n_m, D)
                return torch.stack([torch.zeros_like(logit), logit], -1)  # (n_m, D, 2)

            x[rows] = sampler(two_way, u[rows], values)
        return x.view(n, *c.data_shape).cpu()
