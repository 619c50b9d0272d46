"""Conditional image networks shared by `super-resolve` and `translate`: 28x28 outputs from a 28x28
condition image (the upsampled low-res input, or the edge map).

- UNetGenerator   the pix2pix generator (Isola et al. 2017, "Image-to-Image Translation with
                  Conditional Adversarial Networks", arXiv:1611.07004): an encoder-decoder with skip
                  connections; its noise is dropout in the decoder (kept on at test time), plus an
                  optional noise map at the bottleneck (SRGAN-style sampling, Ledig et al. 2017).
- PatchDiscriminator  the PatchGAN: D(condition, image) -> one logit per overlapping patch.
- ConditionalPredictor  what a trained method keeps: one of the above and the task's `Pairing`.
- ConditionalEps, DiffusionSchedule  a conditional DDPM (Ho et al. 2020, arXiv:2006.11239) with the
                  condition as extra input channels of the noise predictor, as in SR3 (Saharia et al.
                  2021, "Image Super-Resolution via Iterative Refinement", arXiv:2104.07636).

All networks work in [-1, 1] (images x in [0, 1] enter as 2x - 1).
NOTE: pix2pix's U-Net has 8 stride-2 levels for 256x256; here 28 -> 14 -> 7 with a 3x3 bottleneck
(4x4 stride-2 convolutions, LeakyReLU 0.2 down, ReLU up, tanh out, as in the paper). GroupNorm
replaces BatchNorm so that an output never depends on the other images of its batch (pix2pix
normalises with the test batch's statistics).
NOTE: the PatchGAN has three layers (receptive field 18x18 of 28x28, a 7x7 map of logits) for the
paper's 70x70 of 256x256.
NOTE: SR3 conditions on the continuous noise level and uses a larger U-Net with attention; here the
DDPM's integer timestep with a sinusoidal embedding, a three-resolution residual net (genzoo's
models/ddpm.py blocks), the linear schedule rescaled by 1000/T, and the respaced ancestral sampler
with the posterior variance (Nichol & Dhariwal 2021, arXiv:2102.09672) for few sampling steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genzoo.uses.base import Predictor
from models.base import ConfigError
from models.ddpm import ResBlock, timestep_embedding


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


def dropout(h: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout with an explicit generator (seeded, reproducible sampling)."""
    if p <= 0:
        return h
    keep = torch.rand(h.shape, generator=generator, device=h.device) >= p
    return h * keep / (1 - p)


class UNetGenerator(nn.Module):
    """G(condition (n, 1, 28, 28) in [-1, 1]) -> image (n, 1, 28, 28) in [-1, 1].

    `dropout` > 0 drops decoder units (in training; at test time too when `test_dropout`, pix2pix's
    noise); `noise_channels` > 0 concatenates a N(0, 1) map of that many channels at the 7x7 bottleneck.
    """

    def __init__(self, width: int = 32, dropout: float = 0.0, test_dropout: bool = False, noise_channels: int = 0):
        super().__init__()
        w = width
        self.p, self.test_dropout, self.noise_channels = dropout, test_dropout, noise_channels
        act = nn.LeakyReLU(0.2)
        self.e0 = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), act)  # (w, 28, 28)
        self.e1 = nn.Sequential(nn.Conv2d(w, 2 * w, 4, 2, 1), norm(2 * w), act)  # (2w, 14, 14)
        self.e2 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 4, 2, 1), norm(4 * w), act)  # (4w, 7, 7)
        self.mid = nn.Sequential(nn.Conv2d(4 * w + noise_channels, 4 * w, 3, padding=1), norm(4 * w), nn.ReLU())
        self.d2 = nn.Sequential(nn.ConvTranspose2d(8 * w, 2 * w, 4, 2, 1), norm(2 * w), nn.ReLU())  # (2w, 14, 14)
        self.d1 = nn.Sequential(nn.ConvTranspose2d(4 * w, w, 4, 2, 1), norm(w), nn.ReLU())  # (w, 28, 28)
        self.out = nn.Conv2d(2 * w, 1, 3, padding=1)

    @property
    def stochastic(self) -> bool:
        return self.noise_channels > 0 or (self.p > 0 and self.test_dropout)

    def forward(self, c: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        p = self.p if (self.training or self.test_dropout) else 0.0
        h0 = self.e0(c)
        h1 = self.e1(h0)
        h2 = b = self.e2(h1)
        if self.noise_channels:
            z = torch.randn((len(c), self.noise_channels, *h2.shape[-2:]), generator=generator, device=c.device)
            b = torch.cat([h2, z], 1)  # (4w + noise, 7, 7)
        m = dropout(self.mid(b), p, generator)  # (4w, 7, 7)
        u2 = dropout(self.d2(torch.cat([m, h2], 1)), p, generator)  # (2w, 14, 14)
        u1 = self.d1(torch.cat([u2, h1], 1))  # (w, 28, 28)
        return torch.tanh(self.out(torch.cat([u1, h0], 1)))  # (1, 28, 28)


class PatchDiscriminator(nn.Module):
    """D(condition, image), both (n, 1, 28, 28) in [-1, 1] -> logits (n, 1, 7, 7), one per 18x18 patch."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(2, w, 4, 2, 1), nn.LeakyReLU(0.2),  # (w, 14, 14)
            nn.Conv2d(w, 2 * w, 4, 2, 1), norm(2 * w), nn.LeakyReLU(0.2),  # (2w, 7, 7)
            nn.Conv2d(2 * w, 1, 3, padding=1),  # (1, 7, 7)
        )

    def forward(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([c, x], 1))


class ConditionalEps(nn.Module):
    """eps(x_t, t | condition): x_t and the condition as two input channels, (n, 1, 28, 28) -> (n, 1, 28, 28).
    Residual blocks at 28, 14 and 7 pixels (width w, 2w, 2w), skips concatenated on the way up."""

    def __init__(self, width: int = 32):
        super().__init__()
        w, t_dim = width, 2 * width
        self.width = w
        self.t_mlp = nn.Sequential(nn.Linear(w, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.inp = nn.Conv2d(2, w, 3, padding=1)
        self.enc1 = ResBlock(w, w, t_dim)  # 28
        self.down1 = nn.Conv2d(w, 2 * w, 3, 2, 1)
        self.enc2 = ResBlock(2 * w, 2 * w, t_dim)  # 14
        self.down2 = nn.Conv2d(2 * w, 2 * w, 3, 2, 1)
        self.mid = ResBlock(2 * w, 2 * w, t_dim)  # 7
        self.dec2 = ResBlock(4 * w, 2 * w, t_dim)
        self.dec1 = ResBlock(3 * w, w, t_dim)
        self.out = nn.Sequential(norm(w), nn.SiLU(), nn.Conv2d(w, 1, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        temb = self.t_mlp(timestep_embedding(t, self.width))  # (n, 2w)
        h1 = self.enc1(self.inp(torch.cat([x, c], 1)), temb)  # (w, 28, 28)
        h2 = self.enc2(self.down1(h1), temb)  # (2w, 14, 14)
        m = self.mid(self.down2(h2), temb)  # (2w, 7, 7)
        u2 = self.dec2(torch.cat([F.interpolate(m, size=h2.shape[-2:]), h2], 1), temb)  # (2w, 14, 14)
        u1 = self.dec1(torch.cat([F.interpolate(u2, size=h1.shape[-2:]), h1], 1), temb)  # (w, 28, 28)
        return self.out(u1)


class DiffusionSchedule(nn.Module):
    """The forward process q(x_t|x_0) of a linear beta schedule (t = 0..T-1 here) and the sampler."""

    def __init__(self, timesteps: int, beta_1: float = 1e-4, beta_T: float = 0.02):
        super().__init__()
        scale = 1000 / timesteps
        betas = torch.linspace(beta_1 * scale, beta_T * scale, timesteps, dtype=torch.float64)  # (T,)
        self.timesteps = timesteps
        self.register_buffer("alpha_bar", torch.cumprod(1 - betas, 0).float(), persistent=False)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bar[t].view(-1, 1, 1, 1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def loss(self, net: ConditionalEps, x0: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """L_simple (Ho et al. eq. 14): || eps - eps(x_t, t | c) ||^2, t uniform."""
        t = torch.randint(0, self.timesteps, (len(x0),), device=x0.device)
        eps = torch.randn_like(x0)
        return F.mse_loss(net(self.q_sample(x0, t, eps), t, c), eps)

    @torch.no_grad()
    def sample(self, net: ConditionalEps, c: torch.Tensor, steps: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """x_T ~ N(0, I), then `steps` respaced reverse steps (the last one returns the predicted x_0)."""
        ts = sorted(set(torch.linspace(0, self.timesteps - 1, steps).round().long().tolist()), reverse=True)
        x = torch.randn(c.shape, generator=generator, device=c.device)
        for i, t in enumerate(ts):
            ab_t = self.alpha_bar[t]
            ab_s = self.alpha_bar[ts[i + 1]] if i + 1 < len(ts) else ab_t.new_tensor(1.0)
            eps = net(x, torch.full((len(c),), t, device=c.device, dtype=torch.long), c)
            x0 = ((x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()).clamp(-1, 1)
            if i + 1 == len(ts):
                return x0
            beta = 1 - ab_t / ab_s  # the respaced beta
            mean = ab_s.sqrt() * beta / (1 - ab_t) * x0 + (1 - beta).sqrt() * (1 - ab_s) / (1 - ab_t) * x
            var = beta * (1 - ab_s) / (1 - ab_t)  # posterior variance beta_tilde
            x = mean + var.sqrt() * torch.randn(x.shape, generator=generator, device=x.device)
        return x


@dataclasses.dataclass(frozen=True)
class Pairing:
    """How a task makes its input from a digit (n, 1, 28, 28) in [0, 1], and what it accepts."""

    task: str
    input_shape: tuple[int, int, int]  # of one input, e.g. (1, 7, 7)
    make_input: Callable[[torch.Tensor], torch.Tensor]  # digits -> inputs
    lift: Callable[[torch.Tensor], torch.Tensor]  # inputs -> the (n, 1, 28, 28) condition in [0, 1]
    check: Callable[[np.ndarray], torch.Tensor]  # a user's array -> inputs, or a ValueError saying why
    consistency: Callable[[torch.Tensor, torch.Tensor], float]  # (outputs, inputs) -> distance of make_input(outputs)


class ConditionalPredictor(Predictor):
    """A trained U-Net generator (config kind 'unet') or conditional DDPM ('ddpm'); subclasses set `pairing`."""

    pairing: ClassVar[Pairing]
    BATCH = 500

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        c = self.config
        if c["kind"] == "unet":
            self.net = UNetGenerator(c["width"], c["dropout"], c["test_dropout"], c["noise_channels"])
        elif c["kind"] == "ddpm":
            self.net = ConditionalEps(c["width"])
            self.schedule = DiffusionSchedule(c["timesteps"], c["beta_1"], c["beta_T"])
        else:
            raise ConfigError(f"predictor kind must be 'unet' or 'ddpm', got {c['kind']!r}")

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def forward(self, c: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Condition (n, 1, 28, 28) in [-1, 1] -> output in [-1, 1] (train or eval mode as set)."""
        if self.config["kind"] == "unet":
            return self.net(c, generator)
        return self.schedule.sample(self.net, c, self.config["sample_steps"], generator)

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Task inputs (n, *input_shape) -> outputs (n, 1, 28, 28) in [0, 1]; `seed` picks the draw."""
        was = self.training
        self.eval()
        gen = torch.Generator(self.device).manual_seed(seed)
        c = 2 * self.pairing.lift(inputs.to(self.device)) - 1  # (n, 1, 28, 28) in [-1, 1]
        out = torch.cat([self(c[i:i + self.BATCH], gen) for i in range(0, len(c), self.BATCH)])
        self.train(was)
        return ((out + 1) / 2).clamp(0, 1)

    def predict(self, x: np.ndarray, seed: int = 0) -> np.ndarray:
        return self.generate(self.pairing.check(x), seed).cpu().numpy()
