"""Missing entries of a table (breast-cancer): GAIN, column means and scikit-learn's IterativeImputer.

Protocol (GAIN's, Yoon, Jordon & van der Schaar 2018, "GAIN: Missing Data Imputation using Generative
Adversarial Nets", ICML, arXiv:1806.02920; reference code github.com/jsyoon0823/GAIN): the features
min-max scaled to [0, 1] (the dataset does it), each entry missing completely at random with
probability `miss_rate` (0.2), drawn from numpy.random.default_rng(mask_seed) for the train split and
mask_seed + 1 for the test split. A method is fitted on the train split with its missing entries only
(it never sees their values) and scored by the RMSE over the missing entries:
"<mask>.rmse" on the test split (imputed by the fitted method), "<mask>.rmse_fit" on the train split it
was fitted on (the reference code's protocol: it imputes the very table it trains on).

GAIN (the reference code's choices): generator G([x~, m]) and discriminator D([x^, h]) are MLPs
2d -> d -> d -> d with ReLU and a sigmoid output, weights N(0, 2 / fan_in), zero biases; x~ has the
missing entries replaced by U(0, 0.01) noise; x^ = m x~ + (1 - m) G; the hint h = b * m, b ~
Bernoulli(hint_rate); per iteration a batch of `batch_size` rows, first a D step on
-mean(m log D + (1 - m) log(1 - D)), then a G step on -mean((1 - m) log D) + alpha mean((m x - m G)^2) /
mean(m); Adam with lr 1e-3 (TensorFlow's default); 10,000 iterations.
NOTE: the reference code's hint h = b * m (0 for the entries it hides and the missing ones alike) is
used, not the paper's h = b m + 0.5 (1 - b).
NOTE: the reference code re-normalises the table by its observed min and max before training; the
dataset here is already min-max scaled (on the whole table), so that step is skipped.

IterativeImputer: scikit-learn's default (BayesianRidge, 10 rounds, mean start), values clipped to
[0, 1]. Its fitted imputation sequence is linear, so the predictor holds it as tensors (the feature
imputed at each step, its coefficients on the other features and the intercept) and replays
`transform` exactly (tests/uses/test_inpaint.py checks it against scikit-learn's).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from genzoo.uses.base import Predictor, UseConfig
from models.base import ConfigError
from models.nets import mlp


@dataclasses.dataclass
class TableConfig(UseConfig):
    miss_rate: float = 0.2  # each entry missing completely at random with this probability
    mask_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.miss_rate < 1:
            raise ConfigError(f"miss_rate must be in (0, 1), got {self.miss_rate}")


@dataclasses.dataclass
class GAINConfig(TableConfig):
    iterations: int = 10000
    batch_size: int = 128
    hint_rate: float = 0.9
    alpha: float = 100.0
    lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 1 or self.batch_size < 1:
            raise ConfigError("iterations and batch_size must be at least 1")
        if not 0 <= self.hint_rate <= 1 or self.alpha < 0 or self.lr <= 0:
            raise ConfigError("need hint_rate in [0, 1], alpha >= 0 and lr > 0")


@dataclasses.dataclass
class IterativeConfig(TableConfig):
    max_iter: int = 10  # imputation rounds at most (scikit-learn's default; it stops earlier at its tolerance)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_iter < 1:
            raise ConfigError(f"max_iter must be at least 1, got {self.max_iter}")


def mcar(shape: tuple[int, int], rate: float, seed: int) -> np.ndarray:
    """Boolean mask (True = missing), each entry missing with probability `rate`."""
    return np.random.default_rng(seed).random(shape) < rate


def check_table(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A predictor's input (n, dim) with NaN where missing -> (values with 0 there, missing mask)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected rows of {dim} features (shape (n, {dim})) with NaN where missing, got {x.shape}")
    missing = np.isnan(x)
    if not np.isfinite(x[~missing]).all():
        raise ValueError("the observed entries must be finite numbers (NaN marks a missing one)")
    return np.where(missing, 0.0, x), missing


class MeanTable(Predictor):
    """predict(x (n, d), NaN where missing) -> (n, d): missing entries replaced by the training column means."""

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.register_buffer("means", torch.zeros(config["dim"], dtype=torch.float64))

    def predict(self, x: np.ndarray) -> np.ndarray:
        values, missing = check_table(x, self.config["dim"])
        return np.where(missing, self.means.numpy()[None], values)


def fit_mean(x: np.ndarray, missing: np.ndarray, cfg: TableConfig, log: Callable = print,
             progress: Callable = lambda m: None) -> MeanTable:
    p = MeanTable({"dim": x.shape[1], "settings": cfg.to_dict()})
    p.means.copy_(torch.from_numpy(np.nanmean(np.where(missing, np.nan, x), 0)))
    return p


class IterativeTable(Predictor):
    """predict(x (n, d), NaN where missing) -> (n, d): scikit-learn IterativeImputer's transform, replayed:
    missing entries start at the column means, then each fitted step s imputes feature feat[s] of the
    rows missing it as clip(x @ coef[s] + intercept[s], 0, 1)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        d, s = config["dim"], config["steps"]
        self.register_buffer("means", torch.zeros(d, dtype=torch.float64))
        self.register_buffer("feat", torch.zeros(s, dtype=torch.long))
        self.register_buffer("coef", torch.zeros(s, d, dtype=torch.float64))  # 0 for the imputed feature itself
        self.register_buffer("intercept", torch.zeros(s, dtype=torch.float64))

    def predict(self, x: np.ndarray) -> np.ndarray:
        values, missing = check_table(x, self.config["dim"])
        out = np.where(missing, self.means.numpy()[None], values)
        for f, coef, b in zip(self.feat.tolist(), self.coef.numpy(), self.intercept.numpy()):
            rows = missing[:, f]
            if rows.any():
                out[rows, f] = np.clip(out[rows] @ coef + b, 0.0, 1.0)
        return out


def fit_iterative(x: np.ndarray, missing: np.ndarray, cfg: IterativeConfig, log: Callable = print,
                  progress: Callable = lambda m: None) -> IterativeTable:
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer

    imputer = IterativeImputer(max_iter=cfg.max_iter, min_value=0.0, max_value=1.0, random_state=cfg.seed)
    imputer.fit(np.where(missing, np.nan, x))
    log(f"IterativeImputer: {imputer.n_iter_} rounds")
    seq = imputer.imputation_sequence_
    p = IterativeTable({"dim": x.shape[1], "steps": len(seq), "settings": cfg.to_dict()})
    p.means.copy_(torch.from_numpy(imputer.initial_imputer_.statistics_))
    for i, step in enumerate(seq):
        p.feat[i] = int(step.feat_idx)
        p.coef[i, torch.as_tensor(step.neighbor_feat_idx)] = torch.from_numpy(np.asarray(step.estimator.coef_, float))
        p.intercept[i] = float(step.estimator.intercept_)
    return p


class GAINTable(Predictor):
    """predict(x (n, d), NaN where missing) -> (n, d): missing entries replaced by the trained GAIN
    generator's output G([x~, m]), x~ with U(0, 0.01) noise drawn from a generator seeded by the config
    seed (the same input gives the same output)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        d = config["dim"]
        self.generator = gain_net(d)

    def predict(self, x: np.ndarray) -> np.ndarray:
        values, missing = check_table(x, self.config["dim"])
        g = torch.Generator().manual_seed(self.config["settings"]["seed"])
        v, m = torch.from_numpy(values).float(), torch.from_numpy(~missing).float()
        with torch.no_grad():
            out = self.generator(torch.cat([noisy(v, m, g), m], 1)).double().numpy()
        return np.where(missing, out, values)


def gain_net(d: int) -> nn.Sequential:
    """2d -> d -> d -> d, ReLU, sigmoid output; weights N(0, 2 / fan_in) as the reference's xavier_init."""
    net = mlp([2 * d, d, d, d], out_act=nn.Sigmoid())
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=(2.0 / layer.in_features) ** 0.5)
            nn.init.zeros_(layer.bias)
    return net


def noisy(v: torch.Tensor, m: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """x~: observed entries kept (m = 1), missing ones U(0, 0.01)."""
    return m * v + (1 - m) * 0.01 * torch.rand(v.shape, generator=g)


def fit_gain(x: np.ndarray, missing: np.ndarray, cfg: GAINConfig, log: Callable = print,
             progress: Callable = lambda m: None) -> GAINTable:
    n, d = x.shape
    torch.manual_seed(cfg.seed)
    p = GAINTable({"dim": d, "settings": cfg.to_dict()})
    gen, disc = p.generator, gain_net(d)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr, foreach=True)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, foreach=True)
    values = torch.from_numpy(np.where(missing, 0.0, x)).float()
    mask = torch.from_numpy(~missing).float()  # 1 = observed
    g = torch.Generator().manual_seed(cfg.seed)
    batch, chunk = min(cfg.batch_size, n), 100  # random draws for `chunk` iterations at a time
    for it in range(cfg.iterations):
        if it % chunk == 0:
            rows = torch.rand(chunk, n, generator=g).argsort(1)[:, :batch]  # (chunk, batch): a batch without replacement each
            hints = torch.rand(chunk, batch, d, generator=g) < cfg.hint_rate
            noise = 0.01 * torch.rand(chunk, batch, d, generator=g)
        v, m = values[rows[it % chunk]], mask[rows[it % chunk]]
        h = m * hints[it % chunk]
        xt = m * v + (1 - m) * noise[it % chunk]  # x~: missing entries U(0, 0.01)
        inp = torch.cat([xt, m], 1)
        fake = gen(inp)  # (batch, d); G does not change in the D step, so its G step reuses this output
        prob = disc(torch.cat([m * xt + (1 - m) * fake.detach(), h], 1))
        loss_d = -(m * torch.log(prob + 1e-8) + (1 - m) * torch.log(1 - prob + 1e-8)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        prob = disc(torch.cat([m * xt + (1 - m) * fake, h], 1))  # the updated D, as the reference's G step
        mse = ((m * xt - m * fake) ** 2).mean() / m.mean()
        loss_g = -((1 - m) * torch.log(prob + 1e-8)).mean() + cfg.alpha * mse
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if (it + 1) % max(1, cfg.iterations // 10) == 0 or it + 1 == cfg.iterations:
            if not (torch.isfinite(loss_d) and torch.isfinite(loss_g)):
                raise RuntimeError(f"GAIN loss became non-finite by iteration {it + 1}")
            log(f"gain {it + 1}/{cfg.iterations}: loss_d={loss_d.item():.4f} loss_g={loss_g.item():.4f} mse={mse.item():.5f}")
            progress({"loss_d": loss_d.item(), "loss_g": loss_g.item(), "mse": mse.item()})
    return p.eval()


def rmse(imputed: np.ndarray, truth: np.ndarray, missing: np.ndarray) -> float:
    """Root mean squared error over the missing entries."""
    return float(np.sqrt(((imputed - truth)[missing] ** 2).mean()))


def scatter_picture(imputed: np.ndarray, truth: np.ndarray, missing: np.ndarray, size: int = 64) -> np.ndarray:
    """A (size, size) image in [0, 1]: the 2-D histogram of (true, imputed) over the missing entries,
    true value left to right, imputed value bottom to top (a good imputer fills the diagonal)."""
    hist, _, _ = np.histogram2d(truth[missing], imputed[missing], bins=size, range=[[0, 1], [0, 1]])
    img = np.log1p(hist.T[::-1])  # rows: imputed value, high at the top
    return (1 - img / max(img.max(), 1e-12)).astype(np.float32)  # dark where many entries fall


def evaluate_table(fit: Callable, data, cfg: TableConfig, log: Callable = print,
                   progress: Callable = lambda m: None) -> tuple[dict[str, float], Predictor, dict[str, np.ndarray]]:
    """Fit on the train split's observed entries, score the RMSE of the missing ones (train and test)."""
    name = f"mcar{int(round(100 * cfg.miss_rate))}"
    train, test = (np.asarray(data.arrays[s], dtype=np.float64) for s in ("train", "test"))
    m_train, m_test = mcar(train.shape, cfg.miss_rate, cfg.mask_seed), mcar(test.shape, cfg.miss_rate, cfg.mask_seed + 1)
    predictor = fit(train, m_train, cfg, log, progress)
    out = {}
    for split, x, m in (("fit", train, m_train), ("test", test, m_test)):
        imputed = predictor.predict(np.where(m, np.nan, x))
        if not np.array_equal(imputed[~m], x[~m]):
            raise RuntimeError("an imputation changed an observed entry")
        out[split] = imputed
    metrics = {f"{name}.rmse": rmse(out["test"], test, m_test), f"{name}.rmse_fit": rmse(out["fit"], train, m_train)}
    log(f"{name}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics, predictor, {f"{name}_test": scatter_picture(out["test"], test, m_test)}
