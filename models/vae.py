"""Variational autoencoder.

Paper: Kingma & Welling 2014, "Auto-Encoding Variational Bayes" (arXiv:1312.6114):
Gaussian q(z|x) with the reparameterisation trick, standard normal prior, the
ELBO E_q[log p(x|z)] - KL(q(z|x) || p(z)) as training objective and as the
reported lower bound on log p(x).

Decoders, by data kind:
- binary: Bernoulli p(x|z) (as in the paper's MNIST experiments);
- image (discrete levels in [0, 1]): Gaussian on uniformly dequantised pixels,
  mean sigmoid(decoder), one learned log-scale per pixel; the bound on the
  probability of the discrete image is ELBO_continuous - D log(levels)
  (Theis et al. 2016, section 3.1);
- points: Gaussian with one learned log-scale per dimension (a density bound).

Reported bound: the ELBO (iwae_k = 1) or, with config `iwae_k` = k > 1, the
importance-weighted bound IWAE-k of Burda, Grosse & Salakhutdinov 2016,
"Importance Weighted Autoencoders" (arXiv:1509.00519), eq. 8:
log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x), evaluated with logsumexp in
chunks of importance samples. IWAE-1 equals the ELBO in expectation, IWAE-k
grows with k and tends to log p(x). The training objective stays the ELBO.

NOTE: MLP encoder/decoder on flattened data for every shape (the paper's
choice); the single-sample ELBO is what is reported per epoch.
NOTE: for 'image' data IWAE-k draws a fresh dequantisation u_i with each z_i
(importance sampling over (u, z) with uniform q(u)), so it bounds the discrete
log-probability and tends to it as k grows.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.base import ConfigError, FamilyConfig, GenerativeModel, dequantize, logit_of_mean
from models.nets import mlp


@dataclasses.dataclass
class VAEConfig(FamilyConfig):
    latent_dim: int = 16
    hidden: int = 256
    lr: float = 1e-3
    iwae_k: int = 1  # importance samples for log_likelihood: 1 = ELBO, k > 1 = IWAE-k bound

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iwae_k < 1:
            raise ConfigError(f"config key 'iwae_k' must be at least 1, got {self.iwae_k}")


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
        self.decoder = mlp([c.latent_dim, c.hidden, c.hidden, c.dim])
        # Gaussian decoders learn one log-scale per dimension; the Bernoulli decoder has none.
        if c.data_kind != "binary":
            self.log_scale = nn.Parameter(torch.full((c.dim,), -1.0 if c.data_kind == "image" else 0.0))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_var = self.encoder(x.flatten(1)).chunk(2, dim=-1)  # (n, latent) each
        return mu, log_var.clamp(-12, 8)

    def decoder_log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over dimensions; x flattened (n, D) in the model's space."""
        out = self.decoder(z)  # (n, D)
        if self.config.data_kind == "binary":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
        mean = torch.sigmoid(out) if self.config.data_kind == "image" else out
        log_scale = self.log_scale.clamp(-7, 5)
        z_score = (x - mean) * torch.exp(-log_scale)
        return (-0.5 * z_score**2 - log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-example single-sample ELBO in nats, for the data as stored (discrete for images)."""
        flat = x.flatten(1)  # (n, D)
        if self.config.data_kind == "image":
            flat = dequantize(flat, self.config.levels, generator)
        mu, log_var = self.encode(flat)
        eps = torch.randn(mu.shape, generator=generator).to(mu.device) if generator is not None else torch.randn_like(mu)
        z = mu + torch.exp(0.5 * log_var) * eps  # (n, latent)
        kl = 0.5 * (mu**2 + log_var.exp() - 1 - log_var).sum(-1)
        bound = self.decoder_log_prob(flat, z) - kl
        if self.config.data_kind == "image":
            # density on [0,1]^D -> probability of the discrete bin of volume levels^-D
            bound = bound - self.config.dim * math.log(self.config.levels)
        return bound

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
        chunk_lse = []
        for start in range(0, k, batch_k):
            size = min(batch_k, k - start)
            ys, eps = [], []
            for _ in range(size):  # one importance sample at a time: same draws whatever the chunking
                ys.append(dequantize(flat, c.levels, generator) if c.data_kind == "image" else flat)
                eps.append(torch.randn((n, c.latent_dim), generator=generator).to(self.device))
            y = torch.stack(ys).flatten(0, 1)  # (size * n, D)
            e = torch.stack(eps).flatten(0, 1)  # (size * n, latent)
            mu, log_var = self.encode(y)  # (size * n, latent) each
            z = mu + torch.exp(0.5 * log_var) * e  # (size * n, latent)
            log_q = (-0.5 * e**2 - 0.5 * log_var - 0.5 * math.log(2 * math.pi)).sum(-1)  # (size * n,)
            log_prior = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)  # (size * n,)
            log_w = (self.decoder_log_prob(y, z) + log_prior - log_q).view(size, n)  # (size, n)
            chunk_lse.append(torch.logsumexp(log_w, dim=0))  # (n,)
        bound = torch.logsumexp(torch.stack(chunk_lse), dim=0) - math.log(k)  # (n,)
        if c.data_kind == "image":
            bound = bound - c.dim * math.log(c.levels)
        return bound

    @torch.no_grad()
    def init_from_data(self, train: torch.Tensor) -> None:
        """Decoder output bias: the logit of the training mean (Bernoulli logits, or the sigmoid mean of
        grey levels), or the mean itself for points, so a decoder that ignores z starts at the marginals."""
        flat = train.flatten(1)
        out = self.decoder[-1].bias
        out.copy_(flat.float().mean(0) if self.config.data_kind == "points" else logit_of_mean(flat))

    def training_step(self, batch: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        loss = -self.elbo(batch).mean()
        self.optimize(optimizers["main"], loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """ELBO (iwae_k = 1) or IWAE-k lower bound on log p(x), per example, in nats."""
        if self.config.iwae_k > 1:
            return self.iwae_bound(x.to(self.device), self.config.iwae_k).cpu()
        return self.elbo(x.to(self.device)).cpu()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = self.noise((n, self.config.latent_dim), generator)
        out = self.decoder(z)  # (n, D): the decoder mean, the usual way to show VAE samples
        if self.config.data_kind != "points":
            out = torch.sigmoid(out)
        return out.view(n, *self.config.data_shape).cpu()
