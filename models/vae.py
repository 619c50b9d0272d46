"""Variational autoencoder.

Paper: Kingma & Welling 2014, "Auto-Encoding Variational Bayes" (arXiv:1312.6114):
Gaussian q(z|x) with the reparameterisation trick, standard normal prior, the
ELBO E_q[log p(x|z)] - KL(q(z|x) || p(z)) as training objective and as the
reported lower bound on log p(x).

Decoders, by data kind:
- binary: Bernoulli p(x|z) (as in the paper's MNIST experiments);
- image (discrete levels in [0, 1]): a discretised logistic per pixel (Salimans
  et al. 2017, PixelCNN++, arXiv:1701.05517, section 2.1), a mixture of
  `mixture` components whose weights, means and log-scales the decoder gives for
  every pixel (the means unbounded, so a pixel that is always 0 can put its mass on
  the end bin); the end bins take the tails, so the bound is on the probability of
  the discrete image itself;
- points: Gaussian with one learned log-scale per dimension (a density bound).

Reported bound: the ELBO (iwae_k = 1) or, with config `iwae_k` = k > 1, the
importance-weighted bound IWAE-k of Burda, Grosse & Salakhutdinov 2016,
"Importance Weighted Autoencoders" (arXiv:1509.00519), eq. 8:
log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x), evaluated with logsumexp in
chunks of importance samples. IWAE-1 equals the ELBO in expectation, IWAE-k
grows with k and tends to log p(x). The training objective is the ELBO, or with
config `train_k` = k > 1 the IWAE-k bound itself (the paper's IWAE: k samples of
z per example, gradients through the normalised importance weights).

NOTE: MLP encoder/decoder on flattened data for every shape (the paper's
choice); the single-sample ELBO is what is reported per epoch.
NOTE: optional KL warm-up (`kl_warmup_steps`, Sonderby et al. 2016, arXiv:1602.02282):
the training loss weights the KL term by min(1, step / warm-up); every reported
bound uses the full KL.
NOTE: the image decoder was a Gaussian on dequantised pixels; its bound on MNIST
(about 4,000 nats) was far worse than independent per-pixel marginals (914), since
a density cannot put mass on the many pixels that are exactly 0. The discretised
logistic can.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.base import ConfigError, FamilyConfig, GenerativeModel, logit_of_mean
from models.nets import mlp


@dataclasses.dataclass
class VAEConfig(FamilyConfig):
    latent_dim: int = 16
    hidden: int = 256
    lr: float = 1e-3
    iwae_k: int = 1  # importance samples for log_likelihood: 1 = ELBO, k > 1 = IWAE-k bound
    mixture: int = 1  # images: discretised logistic components per pixel
    kl_warmup_steps: int = 0  # KL weight rising linearly from 0 to 1 over these steps (Sonderby et al. 2016)
    train_k: int = 1  # importance samples of the training objective: 1 = ELBO, k > 1 = IWAE-k (Burda et al.)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iwae_k < 1:
            raise ConfigError(f"config key 'iwae_k' must be at least 1, got {self.iwae_k}")
        if self.train_k < 1:
            raise ConfigError(f"config key 'train_k' must be at least 1, got {self.train_k}")
        if self.train_k > 1 and self.kl_warmup_steps:
            raise ConfigError("config keys 'train_k' > 1 and 'kl_warmup_steps' do not combine: the IWAE objective "
                              "has no separate KL term to warm up")
        if self.kl_warmup_steps < 0:
            raise ConfigError(f"config key 'kl_warmup_steps' must not be negative, got {self.kl_warmup_steps}")
        if self.mixture < 1:
            raise ConfigError(f"config key 'mixture' must be at least 1, got {self.mixture}")


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                  levels: int) -> torch.Tensor:
    """log P(x) per dimension for x on the grid k/(levels-1) under a logistic(mean, exp(log_scale))
    discretised into bins of width 1/(levels-1), the two end bins extended to -inf and +inf."""
    half = 0.5 / (levels - 1)
    inv_s = torch.exp(-log_scale)
    plus, minus = (x - mean + half) * inv_s, (x - mean - half) * inv_s
    log_cdf_plus = F.logsigmoid(plus)  # log P(X <= x + h)
    log_sf_minus = F.logsigmoid(-minus)  # log P(X > x - h)
    # log(sigmoid(plus) - sigmoid(minus)), from the side of the mean where neither term is close to 1:
    # log sigmoid(plus) + log(1 - sigmoid(minus) / sigmoid(plus)) left of the mean, the mirror image right of it
    centre = (x - mean) * inv_s
    left = log_cdf_plus + torch.log(-torch.expm1(torch.clamp(F.logsigmoid(minus) - log_cdf_plus, max=-1e-30)))
    right = log_sf_minus + torch.log(-torch.expm1(torch.clamp(F.logsigmoid(-plus) - log_sf_minus, max=-1e-30)))
    mid = torch.where(centre > 0, right, left)
    narrow = centre - log_scale - 2 * F.softplus(centre) + math.log(2 * half)  # density x width, for underflow
    mid = torch.where(mid > -30, mid, torch.maximum(mid, narrow))
    return torch.where(x < half, log_cdf_plus, torch.where(x > 1 - half, log_sf_minus, mid))


class VAE(GenerativeModel):
    name = "vae"
    branch = "explicit density / approximate / variational"
    paper = "Kingma & Welling 2014, arXiv:1312.6114"
    likelihood_kind = "bound"
    likelihood_method = "ELBO / IWAE-k"  # ELBO when config.iwae_k == 1, else IWAE-k
    Config = VAEConfig

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        c = config
        self.encoder = mlp([c.dim, c.hidden, c.hidden, 2 * c.latent_dim])
        per_pixel = 3 * c.mixture if c.data_kind == "image" else 1  # images: weight, mean, log-scale per component
        self.decoder = mlp([c.latent_dim, c.hidden, c.hidden, per_pixel * c.dim])
        self.register_buffer("steps_taken", torch.zeros((), dtype=torch.long))  # for the KL warm-up
        # The Gaussian decoder of points learns one log-scale per dimension; images get theirs from the decoder.
        if c.data_kind == "points":
            self.log_scale = nn.Parameter(torch.zeros(c.dim))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.encoder(x.flatten(1)).chunk(2, dim=-1)  # (n, latent) each
        return mu, log_var.clamp(-12, 8)

    def decoder_log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over dimensions; x flattened (n, D) in the model's space."""
        return self.decoder_log_prob_dims(x, z).sum(-1)

    def decoder_log_prob_dims(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x_d|z) of every dimension (n, D) (the decoder factorises over them); x flattened (n, D)."""
        out = self.decoder(z)  # (n, D), images (n, 3 K D)
        if self.config.data_kind == "binary":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none")
        if self.config.data_kind == "image":
            logit_w, mean, log_scale = out.view(-1, 3, self.config.mixture, self.config.dim).unbind(1)  # (n, K, D)
            per = discretized_logistic_log_prob(x.unsqueeze(1), mean, log_scale.clamp(-7, 2), self.config.levels)
            return torch.logsumexp(per + F.log_softmax(logit_w, dim=1), dim=1)  # (n, D)
        mean, log_scale = out, self.log_scale.clamp(-7, 5)
        z_score = (x - mean) * torch.exp(-log_scale)
        return -0.5 * z_score**2 - log_scale - 0.5 * math.log(2 * math.pi)

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None, kl_weight: float = 1.0) -> torch.Tensor:
        """Per-example single-sample ELBO in nats, for the data as stored (discrete for images); with
        kl_weight < 1 the KL term is down-weighted (KL warm-up: a training objective, not a bound)."""
        flat = x.flatten(1)  # (n, D)
        mu, log_var = self.encode(flat)
        eps = torch.randn(mu.shape, generator=generator).to(mu.device) if generator is not None else torch.randn_like(mu)
        z = mu + torch.exp(0.5 * log_var) * eps  # (n, latent)
        kl = 0.5 * (mu**2 + log_var.exp() - 1 - log_var).sum(-1)
        return self.decoder_log_prob(flat, z) - kl_weight * kl

    def iwae_bound(
        self, x: torch.Tensor, k: int, generator: torch.Generator | None = None, batch_k: int | None = None
    ) -> torch.Tensor:
        """Per-example IWAE-k bound in nats (Burda et al. 2016), for the data as stored (discrete for images).

        The k importance samples are processed `batch_k` at a time (default: chunks of about 4M floats),
        with a running logsumexp, so k = 5000 fits in memory. The noise is drawn one importance sample at a
        time in a fixed order, so the value does not depend on `batch_k` for a given generator state.
        """
        if k < 1:
            raise ValueError(f"iwae_bound needs k >= 1 importance samples, got {k}")
        c = self.config
        flat = x.flatten(1).to(self.device)  # (n, D)
        n, d = flat.shape
        if batch_k is None:
            batch_k = max(1, 2**22 // (n * max(d, c.hidden)))
        if batch_k < 1:
            raise ValueError(f"batch_k must be at least 1, got {batch_k}")
        mu, log_var = self.encode(flat)  # (n, latent) each: q(z|x) once, its k samples below
        std = torch.exp(0.5 * log_var)
        chunk_lse = []
        for start in range(0, k, batch_k):
            size = min(batch_k, k - start)
            # one importance sample at a time: the same draws whatever the chunking
            e = torch.stack([torch.randn((n, c.latent_dim), generator=generator).to(self.device)
                             for _ in range(size)])  # (size, n, latent)
            z = mu + std * e  # (size, n, latent)
            log_q = (-0.5 * e**2 - 0.5 * log_var - 0.5 * math.log(2 * math.pi)).sum(-1)  # (size, n)
            log_prior = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)  # (size, n)
            log_px = self.decoder_log_prob(flat.expand(size, n, d).flatten(0, 1), z.flatten(0, 1)).view(size, n)
            chunk_lse.append(torch.logsumexp(log_px + log_prior - log_q, dim=0))  # (n,)
        return torch.logsumexp(torch.stack(chunk_lse), dim=0) - math.log(k)  # (n,)

    @torch.no_grad()
    def init_from_data(self, train: torch.Tensor) -> None:
        """Decoder output bias: the logit of the training mean (Bernoulli logits), or the mean itself (the
        logistic means of grey levels, with log-scale log 0.1; points), so a decoder that ignores z starts
        at the marginals."""
        flat = train.flatten(1).float()
        out = self.decoder[-1].bias
        if self.config.data_kind == "binary":
            out.copy_(logit_of_mean(flat))
        elif self.config.data_kind == "image":  # equal weights; means spread around the data mean
            k, d = self.config.mixture, flat.shape[1]
            spread = torch.linspace(-0.5, 0.5, k)[:, None] if k > 1 else torch.zeros(1, 1)
            out.copy_(torch.cat([torch.zeros(k, d), flat.mean(0) + spread.expand(k, d),
                                 torch.full((k, d), math.log(0.1))]).flatten())
        else:
            out.copy_(flat.mean(0))

    def training_step(self, batch: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        warmup = self.config.kl_warmup_steps
        weight = min(1.0, (int(self.steps_taken) + 1) / warmup) if warmup else 1.0
        if self.config.train_k > 1:  # IWAE: the k-sample bound itself, all k samples in one chunk
            loss = -self.iwae_bound(batch, self.config.train_k, batch_k=self.config.train_k).mean()
        else:
            loss = -self.elbo(batch, kl_weight=weight).mean()
        self.optimize(optimizers["main"], loss)
        self.steps_taken += 1
        return {"loss": loss.detach(), "kl_weight": weight}

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """ELBO (iwae_k = 1) or IWAE-k lower bound on log p(x), per example, in nats."""
        if self.config.iwae_k > 1:
            return self.iwae_bound(x.to(self.device), self.config.iwae_k).cpu()
        return self.elbo(x.to(self.device)).cpu()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = self.noise((n, self.config.latent_dim), generator)
        return self.decode_mean(z).view(n, *self.config.data_shape).cpu()

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """What `sample` shows for latents z (n, latent): the decoder mean (n, D), the usual way to show
        VAE samples; for images per pixel the mean of its likeliest component, on [0, 1]."""
        out = self.decoder(z)  # (n, D), images (n, 3 K D)
        if self.config.data_kind == "binary":
            return torch.sigmoid(out)
        if self.config.data_kind == "image":
            logit_w, mean, _ = out.view(len(z), 3, self.config.mixture, self.config.dim).unbind(1)  # (n, K, D)
            return mean.gather(1, logit_w.argmax(1, keepdim=True)).squeeze(1).clamp(0, 1)
        return out
