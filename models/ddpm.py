"""Denoising diffusion probabilistic model.

Paper: Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models"
(arXiv:2006.11239). A fixed forward process q(x_t|x_{t-1}) = N(sqrt(1-beta_t)
x_{t-1}, beta_t I) with a linear beta schedule, so q(x_t|x_0) = N(sqrt(abar_t)
x_0, (1-abar_t) I); a learned reverse process p(x_{t-1}|x_t) = N(mu(x_t, t),
sigma_t^2 I) with mu parameterised by a noise predictor eps(x_t, t) (eq. 11).
Training uses L_simple = E ||eps - eps(sqrt(abar_t) x_0 + sqrt(1-abar_t) eps, t)||^2
(eq. 14, averaged over dimensions); the reported likelihood is minus the
variational bound L_vlb = L_T + sum_{t=2}^T L_{t-1} + L_0 (eq. 5), in nats per
example, summed over all T terms (each with one x_t ~ q(x_t|x_0)).

- image / binary data are scaled to [-1, 1] (binary as a 2-level image) and L_0
  is the discretised Gaussian decoder of section 3.3, so -L_vlb bounds the
  probability of the discrete data;
- points use a Gaussian decoder N(x_0; mu(x_1, 1), beta_1 I), a bound on the
  density; they are used unscaled, so the data should be of order one.

NOTE: T = 100 by default (the paper uses 1000) and the paper's schedule
beta in [1e-4, 0.02] is rescaled by 1000/T (as in Nichol & Dhariwal 2021,
arXiv:2102.09672) so that abar_T stays near zero.
NOTE: sigma_t^2 = beta_t by default ('beta_tilde' selectable; at t = 1 it is
always beta_1, as beta_tilde_1 = 0).
NOTE: a two-resolution U-Net-ish conv net with GroupNorm and sinusoidal time
embedding (no attention, no dropout) for images; an MLP with the time
embedding for flat data. lr 1e-3 (the paper: 2e-4), no EMA of the weights.
NOTE: the sampler clips the predicted x_0 to [-1, 1] for image data (as the
paper's code does) and returns the mode of the final discretised decoder:
image samples on the data's levels, binary samples in {0, 1}. With
`sample_steps` < T it walks an evenly spaced subsequence of timesteps with the
respaced betas 1 - abar_t / abar_s (Nichol & Dhariwal 2021).
NOTE: `vlb_timesteps` = k > 0 replaces the sum over t = 1..T by T/k times the
sum over k timesteps drawn without replacement for each example (an unbiased
estimate of the bound).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.base import ConfigError, FamilyConfig, GenerativeModel
from models.nets import mlp


@dataclasses.dataclass
class DDPMConfig(FamilyConfig):
    timesteps: int = 100  # T
    beta_1: float = 1e-4  # first and last beta at T = 1000; rescaled by 1000 / T
    beta_T: float = 0.02
    sigma2: str = "beta"  # reverse-process variance: 'beta' or 'beta_tilde'
    hidden: int = 128  # MLP width (points, flat data)
    width: int = 32  # U-Net base channels (images)
    sample_steps: int = 0  # reverse steps of the sampler; 0 = T
    vlb_timesteps: int = 0  # 0 = all T terms of L_vlb; k > 0 = unbiased estimate from k timesteps
    eval_rows: int = 4096  # rows per network call when evaluating L_vlb
    lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.timesteps < 2:
            raise ConfigError(f"config key 'timesteps' must be at least 2, got {self.timesteps}")
        scale = 1000 / self.timesteps
        if not 0 < self.beta_1 <= self.beta_T or self.beta_T * scale >= 1:
            raise ConfigError(
                f"need 0 < beta_1 <= beta_T and beta_T * 1000 / timesteps < 1, got beta_1={self.beta_1}, "
                f"beta_T={self.beta_T}, timesteps={self.timesteps}"
            )
        if self.sigma2 not in ("beta", "beta_tilde"):
            raise ConfigError(f"config key 'sigma2' must be 'beta' or 'beta_tilde', got {self.sigma2!r}")
        if not 0 <= self.sample_steps <= self.timesteps or not 0 <= self.vlb_timesteps <= self.timesteps:
            raise ConfigError("config keys 'sample_steps' and 'vlb_timesteps' must lie in [0, timesteps]")
        if self.hidden < 1 or self.width < 1 or self.eval_rows < 1:
            raise ConfigError("config keys 'hidden', 'width' and 'eval_rows' must be positive")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (n,) -> (n, dim) (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (n, half)
    return torch.cat([args.sin(), args.cos(), args.new_zeros(len(t), dim - 2 * half)], -1)  # (n, dim)


class EpsMLP(nn.Module):
    """eps(x_t, t) for flat data: an MLP on [x_t, embedding(t)]."""

    def __init__(self, dim: int, hidden: int, emb: int = 32):
        super().__init__()
        self.emb = emb
        self.net = mlp([dim + emb, hidden, hidden, hidden, dim], act=nn.SiLU)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x.flatten(1), timestep_embedding(t, self.emb)], -1)).view_as(x)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(math.gcd(8, c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(math.gcd(8, c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.temb(temb)[:, :, None, None]  # (n, c_out, H, W)
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class UNet(nn.Module):
    """eps(x_t, t) for (C, H, W): ResBlock at full resolution, stride-2 down, ResBlock, up, skip concat, ResBlock."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        w, t_dim = width, 2 * width
        self.width = w
        self.t_mlp = nn.Sequential(nn.Linear(w, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.inp = nn.Conv2d(channels, w, 3, padding=1)
        self.enc = ResBlock(w, w, t_dim)
        self.down = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.mid = ResBlock(2 * w, 2 * w, t_dim)
        self.up = nn.Conv2d(2 * w, w, 3, padding=1)
        self.dec = ResBlock(2 * w, w, t_dim)
        self.out = nn.Sequential(nn.GroupNorm(math.gcd(8, w), w), nn.SiLU(), nn.Conv2d(w, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.t_mlp(timestep_embedding(t, self.width))  # (n, 2w)
        h1 = self.enc(self.inp(x), temb)  # (n, w, H, W)
        h2 = self.mid(self.down(h1), temb)  # (n, 2w, ceil(H/2), ceil(W/2))
        up = self.up(F.interpolate(h2, size=h1.shape[-2:], mode="nearest"))  # (n, w, H, W)
        return self.out(self.dec(torch.cat([up, h1], 1), temb))  # (n, C, H, W)


def discretized_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, levels: int) -> torch.Tensor:
    """log P(x) per element for x on `levels` values in [-1, 1]: Gaussian mass of x's bin (edges to +-inf)."""
    half = 1.0 / (levels - 1)  # half the spacing 2 / (levels - 1)
    lo = torch.where(x < -1 + half / 2, -math.inf, (x - half - mean) / std)
    hi = torch.where(x > 1 - half / 2, math.inf, (x + half - mean) / std)
    flip = lo > 0  # mass in the upper tail: use Phi(-lo) - Phi(-hi) for accuracy
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    return log_b + torch.log1p(-torch.exp(torch.special.log_ndtr(a) - log_b))  # log(Phi(b) - Phi(a))


class AncestralSampler:
    """Algorithm 2 of the paper: x_T ~ N(0, I), then `steps` reverse steps, no noise in the last one."""

    def __init__(self, model: "DDPM", steps: int):
        if not 1 <= steps <= model.config.timesteps:
            raise ConfigError(f"sampler steps must be in [1, {model.config.timesteps}], got {steps}")
        self.model = model
        self.steps = steps
        ts = torch.linspace(1, model.config.timesteps, steps).round().long().tolist()
        self.timesteps = sorted(set(ts), reverse=True)  # T ... 1 (all of them when steps == T)

    @torch.no_grad()
    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        m = self.model
        x = m.noise((n, *m.config.data_shape), generator)  # x_T
        for i, t in enumerate(self.timesteps):
            ab_t = m.alpha_bar[t - 1]
            ab_s = m.alpha_bar[self.timesteps[i + 1] - 1] if i + 1 < len(self.timesteps) else ab_t.new_tensor(1.0)
            beta = 1 - ab_t / ab_s  # beta_t itself when no step is skipped
            eps = m.net(x, torch.full((n,), t, device=x.device, dtype=torch.long))
            x0 = (x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
            if m.levels is not None:
                x0 = x0.clamp(-1, 1)
            # posterior mean mu~(x_t, x0) (eq. 7); with the unclipped x0 it equals eq. 11's mu
            x = ab_s.sqrt() * beta / (1 - ab_t) * x0 + (1 - beta).sqrt() * (1 - ab_s) / (1 - ab_t) * x
            if i + 1 < len(self.timesteps):
                var = beta if m.config.sigma2 == "beta" else beta * (1 - ab_s) / (1 - ab_t)
                x = x + var.sqrt() * m.noise(x.shape, generator)
        return x


class DDPM(GenerativeModel):
    name = "ddpm"
    branch = "beyond the 2016 tree: diffusion"
    paper = "Ho, Jain & Abbeel 2020, arXiv:2006.11239"
    likelihood_kind = "bound"
    likelihood_method = "variational bound (L_vlb)"
    Config = DDPMConfig

    def __init__(self, config: DDPMConfig):
        super().__init__(config)
        c = config
        self.net = UNet(c.data_shape[0], c.width) if c.is_image else EpsMLP(c.dim, c.hidden)
        scale = 1000 / c.timesteps
        betas = torch.linspace(c.beta_1 * scale, c.beta_T * scale, c.timesteps, dtype=torch.float64)  # (T,)
        alpha_bar = torch.cumprod(1 - betas, 0)
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        beta_tilde = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)  # posterior variance, beta_tilde_1 = 0
        sigma2 = betas.clone() if c.sigma2 == "beta" else torch.cat([betas[:1], beta_tilde[1:]])
        for name, value in dict(betas=betas, alpha_bar=alpha_bar, beta_tilde=beta_tilde, sigma2=sigma2).items():
            self.register_buffer(name, value.float(), persistent=False)  # fixed by the config

    @property
    def device(self) -> torch.device:
        return self.betas.device  # the schedule buffers, so a parameter-free net (tests' oracle) works too

    @property
    def levels(self) -> int | None:
        return {"points": None, "binary": 2}.get(self.config.data_kind, self.config.levels)

    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.levels is None else 2 * x - 1  # images: [0, 1] -> [-1, 1]

    def _at(self, buffer: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return buffer[t - 1].view(-1, *([1] * (like.dim() - 1)))  # (n, 1, ...) for timesteps t in 1..T

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, a draw from q(x_t|x_0) (eq. 4)."""
        ab = self._at(self.alpha_bar, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    # -- training -----------------------------------------------------------
    def training_step(self, batch: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        x0 = self.to_model_space(batch)
        t = torch.randint(1, self.config.timesteps + 1, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        loss = F.mse_loss(self.net(self.q_sample(x0, t, eps), t), eps)  # L_simple
        self.optimize(optimizers["main"], loss)
        return {"loss": loss.detach()}

    # -- the variational bound -------------------------------------------
    def _terms(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """L_{t-1} (t >= 2: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))) or L_0 (t = 1: -log p(x_0|x_1)), (n,)."""
        xt = self.q_sample(x0, t, eps)
        eps_hat = self.net(xt, t)
        beta, ab = self._at(self.betas, t, x0), self._at(self.alpha_bar, t, x0)
        var, post_var = self._at(self.sigma2, t, x0), self._at(self.beta_tilde, t, x0)
        # mu~(x_t, x_0) - mu(x_t, t) = beta_t / (sqrt(alpha_t) sqrt(1 - abar_t)) (eps_hat - eps) (eqs. 7, 11)
        diff = beta / ((1 - beta).sqrt() * (1 - ab).sqrt()) * (eps_hat - eps)
        ratio = post_var / var  # in (0, 1]; the variance part r - 1 - log r of the KL is >= 0
        kl = 0.5 * (ratio - 1 - torch.log(ratio.clamp_min(1e-30)) + diff**2 / var).flatten(1).sum(1)
        mean = (xt - beta / (1 - ab).sqrt() * eps_hat) / (1 - beta).sqrt()  # mu(x_1, 1)
        if self.levels is None:
            log_p0 = -0.5 * ((x0 - mean) ** 2 / var + torch.log(2 * math.pi * var))
        else:
            log_p0 = discretized_gaussian_log_prob(x0, mean, var.sqrt(), self.levels)
        return torch.where(t == 1, -log_p0.flatten(1).sum(1), kl)

    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T|x_0) || N(0, I)), (n,)."""
        ab = self.alpha_bar[-1]
        return 0.5 * (ab * x0**2 + (1 - ab) - 1 - torch.log(1 - ab)).flatten(1).sum(1)

    @torch.no_grad()
    def vlb_terms(self, x: torch.Tensor, timesteps: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """[L_{t-1} for the timesteps t of each example (default: t = 1..T, L_0 first)] + [L_T], in nats.

        `timesteps` is an (n, k) integer tensor in 1..T; the result is (n, k + 1).
        """
        x0 = self.to_model_space(x.to(self.device))
        n, T = x0.shape[0], self.config.timesteps
        if timesteps is None:
            timesteps = torch.arange(1, T + 1).expand(n, T)  # (n, T)
        columns = []
        for chunk in timesteps.split(max(1, self.config.eval_rows // n), dim=1):  # (n, k)
            k = chunk.shape[1]
            t = chunk.T.reshape(-1).to(self.device)  # (k n,): row j n + i is example i at chunk[i, j]
            x0k = x0.repeat(k, *([1] * (x0.dim() - 1)))  # (k n, *data_shape)
            eps = self.noise(tuple(x0k.shape), generator)
            columns.append(self._terms(x0k, t, eps).view(k, n).T)  # (n, k)
        return torch.cat(columns + [self.prior_kl(x0)[:, None]], 1)

    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """-L_vlb in nats per example (a lower bound on log p(x)); discrete probability for images."""
        T, k = self.config.timesteps, self.config.vlb_timesteps
        if k == 0:
            return -self.vlb_terms(x, generator=generator).sum(1).cpu()
        ts = torch.rand(x.shape[0], T, generator=generator).argsort(1)[:, :k] + 1  # (n, k) distinct t per example
        terms = self.vlb_terms(x, ts, generator)
        return -(terms[:, :-1].sum(1) * T / k + terms[:, -1]).cpu()

    # -- sampling -----------------------------------------------------------
    def sampler(self) -> AncestralSampler:
        return AncestralSampler(self, self.config.sample_steps or self.config.timesteps)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.sampler()(n, generator)  # (n, *data_shape), model space
        if self.levels is not None:  # mode of the discretised decoder: nearest level
            k = torch.round((x.clamp(-1, 1) + 1) / 2 * (self.levels - 1))
            x = k / (self.levels - 1)
        return x.cpu()
