"""Small building blocks shared by families: MLPs and DCGAN-style conv stacks."""

from __future__ import annotations

import math

import torch
from torch import nn


def mlp(sizes: list[int], act: type[nn.Module] = nn.ReLU, out_act: nn.Module | None = None,
        norm: type[nn.Module] | None = None, dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of the given sizes with `act` between them (after `norm(width)`, e.g. BatchNorm1d, if given;
    followed by Dropout(`dropout`) if it is above 0)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            if norm is not None:
                layers.append(norm(b))
            layers.append(act())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


def conv_fits(shape: tuple[int, ...]) -> bool:
    """DCGAN stacks halve the image twice: (C, H, W) with H and W divisible by 4."""
    return len(shape) == 3 and shape[1] % 4 == 0 and shape[2] % 4 == 0


class ConvGenerator(nn.Module):
    """z -> (C, H, W) in [0, 1]: linear to (2w, H/4, W/4), then two stride-2 transposed convs (DCGAN)."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], width: int = 64):
        super().__init__()
        c, h, w = shape
        self.start = (2 * width, h // 4, w // 4)
        self.fc = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start)), nn.BatchNorm1d(math.prod(self.start)), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),  # (w, H/2, W/2)
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, c, 4, 2, 1),  # (C, H, W)
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, *self.start))


class ConvDiscriminator(nn.Module):
    """(C, H, W) -> logit: two stride-2 convs with LeakyReLU (DCGAN), then linear."""

    def __init__(self, shape: tuple[int, int, int], width: int = 64):
        super().__init__()
        c, h, w = shape
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 4, 2, 1),  # (w, H/2, W/2)
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),  # (2w, H/4, W/4)
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(2 * width * (h // 4) * (w // 4), 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
