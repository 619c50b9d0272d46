"""RealNVP normalizing flow.

Paper: Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP"
(arXiv:1605.08803). An invertible map f: x -> z built from affine coupling
layers y = b*x + (1-b)*(x*exp(s(b*x)) + t(b*x)) (eq. 9), whose Jacobian is
triangular, so log p(x) = log N(f(x); 0, I) + sum of s over the changed units
(eq. 3) is exact.

- images (C, H, W): the multi-scale architecture of section 3.6: per scale,
  checkerboard-masked couplings, a squeeze (2x2 space -> 4x channels),
  channel-masked couplings, then half of the channels are factored out as
  latents; the last scale has one more checkerboard coupling and no squeeze.
  Conditioners are small ResNets; s = scale * tanh(.) as in the paper.
- points and other flat shapes: alternating masked couplings with MLP
  conditioners.
- discrete data ('image' with `levels`, 'binary' as 2 levels): uniform
  dequantisation u = (k + U[0,1))/levels and the logit transform
  logit(alpha + (1 - 2 alpha) u) with its log-det (section 4.1). The reported
  log-likelihood is log p(u) - D log(levels): exact for the dequantised density,
  in expectation a lower bound on the probability of the discrete data (Jensen;
  Theis et al. 2016, arXiv:1511.01844, section 3.1). One dequantisation sample
  per call, so it is a stochastic estimate of that bound.

NOTE: no batch normalisation (its running statistics would make evaluation
change buffers, and it makes the density batch-dependent); no weight
normalisation or L2 penalty.
NOTE: small defaults for CPU (3 couplings per scale, 2 scales, width 64, one
residual block per conditioner); the paper uses 3 scales and 8 residual blocks.
NOTE: the logit box is bounded, so the flow's density on [0, 1]^D is a
sub-probability density (mass beyond it is lost, as in the paper); the sampler
puts such values in the edge bins.
NOTE: the squeeze is torch's pixel_unshuffle and the factored-out half is the
first half of the channels, a fixed ordering rather than the paper's.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.base import ConfigError, FamilyConfig, GenerativeModel, dequantize
from models.nets import mlp


@dataclasses.dataclass
class RealNVPConfig(FamilyConfig):
    hidden: int = 64  # conditioner width: MLP units, or conv channels for images
    n_couplings: int = 6  # couplings of the flat (MLP) flow
    couplings_per_scale: int = 3  # images: checkerboard and channel couplings per scale (+1 checkerboard last)
    n_blocks: int = 1  # residual blocks per conv conditioner
    n_scales: int = 2  # images: scales of the multi-scale architecture (n_scales - 1 squeezes)
    alpha: float = 0.05  # logit transform of dequantised data: logit(alpha + (1 - 2 alpha) u)
    lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("hidden", "n_couplings", "couplings_per_scale", "n_scales"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}' must be at least 1, got {getattr(self, key)}")
        if self.n_blocks < 0:
            raise ConfigError(f"config key 'n_blocks' must be non-negative, got {self.n_blocks}")
        if not 0 <= self.alpha < 0.5:
            raise ConfigError(f"config key 'alpha' must be in [0, 0.5), got {self.alpha}")
        if self.is_image:
            step = 2 ** (self.n_scales - 1)
            if self.data_shape[1] % step or self.data_shape[2] % step:
                raise ConfigError(
                    f"n_scales={self.n_scales} squeezes the image {self.n_scales - 1} times: height and width "
                    f"must be divisible by {step}, got data_shape {list(self.data_shape)}"
                )


def bits_per_dim(log_likelihood: torch.Tensor, dim: int) -> torch.Tensor:
    """Nats per example -> bits per dimension (-ll / (D ln 2))."""
    return -log_likelihood / (dim * math.log(2))


class MaskedCoupling(nn.Module):
    """Affine coupling with a binary mask b (1 = conditioning unit, left unchanged).

    y = x * exp(s) + t with s, t = net(b * x) zeroed where b = 1, so
    log|det dy/dx| = sum of s. The mask broadcasts against one example:
    (D,) for vectors, (1, H, W) checkerboard or (C, 1, 1) channel masks.
    """

    def __init__(self, mask: torch.Tensor, net: nn.Module, scale_shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = net
        self.scale = nn.Parameter(torch.ones(scale_shape))

    def _shift_scale(self, x_masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(x_masked).chunk(2, dim=1)  # (n, *shape) each
        keep = 1 - self.mask
        return self.scale * torch.tanh(s) * keep, t * keep

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._shift_scale(x * self.mask)
        return x * torch.exp(s) + t, s.flatten(1).sum(1)  # (n, *shape), (n,)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        s, t = self._shift_scale(y * self.mask)  # b*y = b*x: the same s, t
        return (y - t) * torch.exp(-s)


class ResNet(nn.Module):
    """3x3 conv in, `blocks` residual blocks (ReLU-conv-ReLU-conv), ReLU-conv out; shape-preserving."""

    def __init__(self, c_in: int, c_out: int, hidden: int, blocks: int):
        super().__init__()
        self.inp = nn.Conv2d(c_in, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1))
            for _ in range(blocks)
        )
        self.out = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, c_out, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)  # (n, hidden, H, W)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)  # (n, c_out, H, W)


def checkerboard(h: int, w: int, parity: int) -> torch.Tensor:
    return ((torch.arange(h)[:, None] + torch.arange(w)[None, :] + parity) % 2).float()[None]  # (1, H, W)


def channel_mask(c: int, parity: int) -> torch.Tensor:
    mask = (torch.arange(c) < c // 2).float()
    return (mask if parity == 0 else 1 - mask)[:, None, None]  # (C, 1, 1)


class Scale(nn.Module):
    """One scale of the multi-scale flow on (C, H, W); holds the next scale in `inner`."""

    def __init__(self, shape: tuple[int, int, int], config: RealNVPConfig, scales_left: int):
        super().__init__()
        c, h, w = shape
        k, last = config.couplings_per_scale, scales_left == 1
        self.checker = nn.ModuleList(
            MaskedCoupling(checkerboard(h, w, i % 2), ResNet(c, 2 * c, config.hidden, config.n_blocks), (c, 1, 1))
            for i in range(k + int(last))
        )
        self.channel = nn.ModuleList()
        self.inner: Scale | None = None
        if not last:
            self.channel.extend(
                MaskedCoupling(channel_mask(4 * c, i % 2), ResNet(4 * c, 8 * c, config.hidden, config.n_blocks), (4 * c, 1, 1))
                for i in range(k)
            )
            self.inner = Scale((2 * c, h // 2, w // 2), config, scales_left - 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.checker:
            x, ld = layer(x)
            logdet = logdet + ld
        if self.inner is None:
            return x, logdet
        x = F.pixel_unshuffle(x, 2)  # squeeze: (n, 4C, H/2, W/2)
        for layer in self.channel:
            x, ld = layer(x)
            logdet = logdet + ld
        z_out, h = x.chunk(2, dim=1)  # factor out half: (n, 2C, H/2, W/2) each
        h, ld = self.inner(h)
        return F.pixel_shuffle(torch.cat([z_out, h], 1), 2), logdet + ld  # (n, C, H, W)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        if self.inner is not None:
            z_out, h = F.pixel_unshuffle(z, 2).chunk(2, dim=1)  # (n, 2C, H/2, W/2) each
            z = torch.cat([z_out, self.inner.inverse(h)], 1)  # (n, 4C, H/2, W/2)
            for layer in reversed(self.channel):
                z = layer.inverse(z)
            z = F.pixel_shuffle(z, 2)  # (n, C, H, W)
        for layer in reversed(self.checker):
            z = layer.inverse(z)
        return z


class FlatFlow(nn.Module):
    """Alternating masked affine couplings with MLP conditioners on (n, D) vectors."""

    def __init__(self, dim: int, hidden: int, n_couplings: int):
        super().__init__()
        self.layers = nn.ModuleList(
            MaskedCoupling(((torch.arange(dim) + i) % 2).float(), mlp([dim, hidden, hidden, 2 * dim]), (dim,))
            for i in range(n_couplings)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z


class RealNVP(GenerativeModel):
    name = "realnvp"
    branch = "explicit density / tractable / nonlinear ICA (normalizing flow)"
    paper = "Dinh, Sohl-Dickstein & Bengio 2017, arXiv:1605.08803"
    likelihood_kind = "exact"
    likelihood_method = "change of variables (discrete data: dequantised density - D log levels)"
    Config = RealNVPConfig

    def __init__(self, config: RealNVPConfig):
        super().__init__(config)
        c = config
        if c.is_image:
            self.flow: nn.Module = Scale(c.data_shape, c, c.n_scales)
        else:
            self.flow = FlatFlow(c.dim, c.hidden, c.n_couplings)

    @property
    def levels(self) -> int | None:
        """Number of discrete values per dimension, None for real-valued points."""
        return {"points": None, "binary": 2}.get(self.config.data_kind, self.config.levels)

    # -- the flow: x (model space) <-> z ----------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (n, *data_shape) in the flow's space -> z of the same shape, log|det dz/dx| (n,)."""
        if self.config.is_image:
            return self.flow(x)
        z, logdet = self.flow(x.flatten(1))  # (n, D), (n,)
        return z.view_as(x), logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        if self.config.is_image:
            return self.flow.inverse(z)
        return self.flow.inverse(z.flatten(1)).view_as(z)

    # -- densities ---------------------------------------------------------
    def logit(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantised u in [0, 1) -> logit(alpha + (1 - 2 alpha) u) and its log-det (n,)."""
        a = self.config.alpha
        y = a + (1 - 2 * a) * u
        logdet = (math.log(1 - 2 * a) - torch.log(y) - torch.log1p(-y)).flatten(1).sum(1)
        return torch.log(y) - torch.log1p(-y), logdet

    def log_density(self, u: torch.Tensor) -> torch.Tensor:
        """Exact log density (nats, (n,)) of points, or of dequantised data on [0, 1]^D."""
        logdet = u.new_zeros(u.shape[0])
        if self.levels is not None:
            u, logdet = self.logit(u)
        z, ld = self(u)
        log_prior = -0.5 * (z**2).flatten(1).sum(1) - 0.5 * self.config.dim * math.log(2 * math.pi)
        return log_prior + logdet + ld

    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Points: exact log density. Discrete data: log p(dequantised x) - D log(levels), a one-sample
        estimate of a lower bound on log P(x) (exact for the dequantised density)."""
        with torch.no_grad():
            x = x.to(self.device)
            if self.levels is None:
                return self.log_density(x).cpu()
            u = dequantize(x, self.levels, generator)
            return (self.log_density(u) - self.config.dim * math.log(self.levels)).cpu()

    def bits_per_dim(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return bits_per_dim(self.log_likelihood(x, generator), self.config.dim)

    # -- training and sampling -------------------------------------------
    def training_step(self, batch: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        x = batch if self.levels is None else dequantize(batch, self.levels)
        ll = self.log_density(x)
        if self.levels is not None:
            ll = ll - self.config.dim * math.log(self.levels)
        loss = -ll.mean()
        self.optimize(optimizers["main"], loss)
        return {"loss": loss.detach(), "bits_per_dim": loss.detach() / (self.config.dim * math.log(2))}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = self.noise((n, *self.config.data_shape), generator)
        return self.to_data(self.inverse(z)).cpu()  # (n, *data_shape)

    def to_data(self, y: torch.Tensor) -> torch.Tensor:
        """Flow-space values -> the data's value set (points: unchanged; discrete: the bin of u)."""
        if self.levels is None:
            return y
        a, levels = self.config.alpha, self.levels
        u = (torch.sigmoid(y) - a) / (1 - 2 * a)  # undo the logit transform: dequantised scale [0, 1]
        k = torch.floor(u * levels).clamp(0, levels - 1)  # the bin u falls in (outside [0, 1]: the edge bin)
        return k / (levels - 1)
