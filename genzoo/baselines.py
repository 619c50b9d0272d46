"""The trivial baseline of every dataset: a fully factorised model fitted to the training split in
closed form, evaluated with the same protocol as the families, so the comparison table says for
every model whether it learned more than the marginals.

- binary data: independent Bernoulli per dimension (Laplace-smoothed means); exact log p(x);
- images with discrete levels: an independent categorical per pixel over the levels (Laplace-
  smoothed counts); exact log P(x) of the discrete image;
- real vectors (points): one Gaussian with the data's mean and full covariance; a density.

A family "beats the baseline" (`beats_baseline`) on its primary measure: the test NLL where it has
a likelihood, else the modes captured and then the KL on mode-counted data, else the energy distance
to the test rows on vector data, else the FID.
"""

from __future__ import annotations

import math

import numpy as np
import torch

NAME = "baseline"  # the `family` of baseline rows in the report
BRANCH = "trivial baseline (independent marginals)"  # their `branch`
METHOD = "exact (independent marginals)"


class FactorisedBaseline:
    """Fitted once from the training split; `log_likelihood` and `sample` as a family's."""

    name = NAME
    likelihood_kind = "exact"
    likelihood_method = METHOD

    def __init__(self, train: torch.Tensor, kind: str, levels: int):
        self.kind, self.levels = kind, levels
        self.shape = tuple(train.shape[1:])
        flat = train.flatten(1).double()  # (n, D)
        n = flat.shape[0]
        if kind == "binary":
            self.p = (flat.sum(0) + 1) / (n + 2)  # (D,)
        elif kind == "image":
            k = torch.round(flat * (levels - 1)).long()  # (n, D) level indices
            counts = torch.zeros(flat.shape[1], levels, dtype=torch.float64)
            counts.scatter_add_(1, k.T, torch.ones_like(k.T, dtype=torch.float64))  # (D, levels)
            self.log_probs = ((counts + 1) / (n + levels)).log()  # (D, levels)
        else:
            self.mean = flat.mean(0)  # (D,)
            cov = torch.cov(flat.T).reshape(flat.shape[1], flat.shape[1]) + 1e-6 * torch.eye(flat.shape[1])
            self.dist = torch.distributions.MultivariateNormal(self.mean, covariance_matrix=cov)

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).double()  # (n, D)
        if self.kind == "binary":
            return (flat * self.p.log() + (1 - flat) * (1 - self.p).log()).sum(1)
        if self.kind == "image":
            k = torch.round(flat * (self.levels - 1)).long()  # (n, D)
            return self.log_probs.T.gather(0, k).sum(1)
        return self.dist.log_prob(flat)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.kind == "binary":
            x = torch.bernoulli(self.p.expand(n, -1), generator=generator)
        elif self.kind == "image":
            k = torch.multinomial(self.log_probs.exp(), n, replacement=True, generator=generator).T  # (n, D)
            x = k.double() / (self.levels - 1)
        else:
            z = torch.randn((n, self.mean.shape[0]), generator=generator, dtype=torch.float64)
            x = self.mean + z @ self.dist.scale_tril.T
        return x.float().view(n, *self.shape)


def beats_baseline(row: dict, baseline: dict) -> bool | None:
    """Whether a result row is better than its dataset's baseline row on the row's primary measure
    (None when neither row has a measure they share)."""
    def finite(key: str, r: dict) -> bool:
        v = r.get(key)
        return isinstance(v, (int, float)) and math.isfinite(v)

    if finite("test_nll", row) and finite("test_nll", baseline):
        return row["test_nll"] < baseline["test_nll"]
    if finite("modes_captured", row) and finite("modes_captured", baseline):
        if row["modes_captured"] != baseline["modes_captured"]:
            return row["modes_captured"] > baseline["modes_captured"]
        if finite("high_quality_fraction", row) and finite("high_quality_fraction", baseline):
            return row["high_quality_fraction"] > baseline["high_quality_fraction"]
    if finite("energy_distance", row) and finite("energy_distance", baseline):
        return row["energy_distance"] < baseline["energy_distance"]
    if finite("fid", row) and finite("fid", baseline):
        return row["fid"] < baseline["fid"]
    return None


def class_shares(labels: np.ndarray, classes: int) -> dict[str, float]:
    """How the evaluator labels a set of samples: classes hit, the largest and smallest share."""
    share = np.bincount(labels, minlength=classes) / max(1, len(labels))
    return {"classes_hit": int((share > 0).sum()), "classes_total": classes,
            "max_class_share": float(share.max()), "min_class_share": float(share.min())}
