"""The regression baseline of the inpainting task: an MLP per mask, trained with MSE to predict the
missing pixels from the observed ones.

The network sees [x * observed, observed] (2D inputs: the observed values, 0 elsewhere, and the
mask itself) and outputs D sigmoid values; the loss is the mean squared error over the missing
pixels. One network per mask kind of the config, trained on the train split with masks of that
kind (fixed for bottom and centre, a fresh random one per image and step for random50 / random80).
It predicts the conditional mean, so its completions are blurred and deterministic (diversity 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genzoo.uses.base import Predictor
from genzoo.uses.inpaint_common import InpaintConfig, check_images, make_mask
from models.base import ConfigError
from models.nets import mlp


@dataclasses.dataclass
class RegressionConfig(InpaintConfig):
    hidden: int = 512
    steps: int = 2000  # optimiser steps per mask
    train_batch: int = 128
    lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden < 1 or self.steps < 1 or self.train_batch < 1 or self.lr <= 0:
            raise ConfigError("hidden, steps and train_batch must be at least 1 and lr positive")


class RegressionInpainter(Predictor):
    """One MLP per mask kind.

    predict(x (n, 1, H, W) floats in [0, 1], NaN where missing) -> (n, 1, H, W): each image is
    completed by the network of the mask kind whose pattern it has (bottom, centre), else by the one
    whose missing fraction is closest to the image's; observed pixels unchanged."""

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        d = int(np.prod(config["shape"]))
        self.nets = nn.ModuleDict({m: mlp([2 * d, config["hidden"], config["hidden"], d]) for m in config["masks"]})

    def net_for(self, missing: torch.Tensor) -> list[str]:
        """The mask kind of each row of missing (n, 1, H, W)."""
        shape, names = tuple(self.config["shape"]), list(self.nets)
        fixed = {m: torch.from_numpy(make_mask(m, 1, shape)[0]) for m in names if m in ("bottom", "centre")}
        rates = {m: float(make_mask(m, 1, shape).mean()) for m in names}
        # a pattern of neither fixed mask goes to a random-mask network (the bottom half's rate is 0.5 too)
        others = [m for m in names if m not in fixed] or names
        out = []
        for row in missing:
            match = [m for m, pattern in fixed.items() if torch.equal(row, pattern)]
            out.append(match[0] if match else min(others, key=lambda m: abs(rates[m] - float(row.float().mean()))))
        return out

    def forward_net(self, name: str, values: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        obs = (~missing).flatten(1).float()
        inp = torch.cat([values.flatten(1) * obs, obs], 1)  # (n, 2D)
        return torch.sigmoid(self.nets[name](inp)).view_as(values)

    @torch.no_grad()
    def complete(self, values: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        dev = next(self.parameters()).device
        values, missing = values.to(dev), missing.to(dev)
        out = values.clone()
        kinds = self.net_for(missing.cpu())
        for name in set(kinds):
            rows = torch.tensor([i for i, k in enumerate(kinds) if k == name], device=dev)
            pred = self.forward_net(name, values[rows], missing[rows])
            out[rows] = torch.where(missing[rows], pred, values[rows])
        return out.cpu()

    def predict(self, x: np.ndarray) -> np.ndarray:
        values, missing = check_images(x, tuple(self.config["shape"]))
        return self.complete(values, missing).numpy()


def train_regression(data, cfg: RegressionConfig, device: torch.device, log: Callable = print,
                     progress: Callable = lambda m: None) -> RegressionInpainter:
    """One network per mask of cfg.masks on the train split."""
    torch.manual_seed(cfg.seed)
    shape = tuple(data.shape)
    model = RegressionInpainter({"shape": list(shape), "hidden": cfg.hidden, "masks": list(cfg.masks),
                                 "settings": cfg.to_dict()}).to(device)
    train = data.tensor("train")  # (N, 1, H, W)
    rng = np.random.default_rng(cfg.seed)
    for name in cfg.masks:
        opt = torch.optim.Adam(model.nets[name].parameters(), lr=cfg.lr)
        fixed = None if name.startswith("random") else torch.from_numpy(make_mask(name, 1, shape)).to(device)
        for step in range(cfg.steps):
            idx = torch.from_numpy(rng.integers(0, len(train), cfg.train_batch))
            x = train[idx].to(device)
            miss = fixed.expand_as(x) if fixed is not None else torch.from_numpy(
                make_mask(name, len(x), shape, int(rng.integers(2**31)))).to(device)
            pred = model.forward_net(name, x, miss)
            loss = F.mse_loss(pred[miss], x[miss])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not torch.isfinite(loss):
                raise RuntimeError(f"regression loss became non-finite for mask {name} at step {step + 1}")
            if (step + 1) % max(1, cfg.steps // 5) == 0:
                log(f"regression {name} step {step + 1}/{cfg.steps}: mse={loss.item():.4f}")
                progress({f"{name}.train_mse": loss.item()})
    return model.eval()

