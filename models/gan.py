"""Generative adversarial network.

Paper: Goodfellow et al. 2014, "Generative Adversarial Nets" (arXiv:1406.2661);
losses as in Goodfellow 2016, "NIPS 2016 Tutorial: Generative Adversarial
Networks" (arXiv:1701.00160), section 3.2.3: the discriminator minimises the
cross-entropy of real vs generated, the generator the non-saturating heuristic
-log D(G(z)). Images use DCGAN-style convolutions (Radford et al. 2016), 2-D
points use MLPs.

NOTE: one discriminator step per generator step (k = 1), Adam(0.5, 0.999) as in
DCGAN. Samples of binary data are Bernoulli means in [0, 1], not thresholded.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from models.base import FamilyConfig, GenerativeModel, logit_of_mean
from models.nets import ConvDiscriminator, ConvGenerator, conv_fits, mlp


@dataclasses.dataclass
class GANConfig(FamilyConfig):
    latent_dim: int = 64
    hidden: int = 256  # MLP width (points and images that do not fit the conv stack)
    width: int = 64  # conv width for images
    lr: float = 2e-4


class GAN(GenerativeModel):
    name = "gan"
    branch = "implicit density / direct"
    paper = "Goodfellow et al. 2014, arXiv:1406.2661"
    likelihood_kind = "none"
    Config = GANConfig

    def __init__(self, config: GANConfig):
        super().__init__(config)
        c = config
        if conv_fits(c.data_shape):
            self.generator = ConvGenerator(c.latent_dim, c.data_shape, c.width)
            self.discriminator = ConvDiscriminator(c.data_shape, c.width)
        else:
            out_act = None if c.data_kind == "points" else nn.Sigmoid()
            self.generator = mlp([c.latent_dim, c.hidden, c.hidden, c.dim], out_act=out_act)
            self.discriminator = mlp([c.dim, c.hidden, c.hidden, 1], act=lambda: nn.LeakyReLU(0.2))

    @torch.no_grad()
    def init_from_data(self, train: torch.Tensor) -> None:
        """Sigmoid outputs start at the data mean: per pixel for the MLP, per channel for the conv stack."""
        if self.config.data_kind == "points":
            return
        if isinstance(self.generator, ConvGenerator):
            self.generator.net[-2].bias.copy_(logit_of_mean(train.transpose(0, 1).flatten(1).T))  # (C,)
        else:
            self.generator[-2].bias.copy_(logit_of_mean(train.flatten(1)))

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z).view(-1, *self.config.data_shape)  # (n, *data_shape)

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.discriminator, ConvDiscriminator):
            return self.discriminator(x)
        return self.discriminator(x.flatten(1)).squeeze(-1)  # (n,)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        betas = (0.5, 0.999)
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=self.config.lr, betas=betas),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=self.config.lr, betas=betas),
        }

    def training_step(self, batch: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        n = batch.shape[0]
        z = torch.randn(n, self.config.latent_dim, device=batch.device)
        fake = self.generate(z)
        # Discriminator: maximise log D(x) + log(1 - D(G(z))).
        real_logit, fake_logit = self.critic(batch), self.critic(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit)) + \
            F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
        self.optimize(optimizers["discriminator"], d_loss)
        # Generator: non-saturating loss -log D(G(z)).
        fake_logit = self.critic(fake)
        g_loss = F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))
        self.optimize(optimizers["generator"], g_loss)
        return {"loss": (d_loss + g_loss).item(), "d_loss": d_loss.item(), "g_loss": g_loss.item(),
                "d_real": torch.sigmoid(real_logit).mean().item(), "d_fake": torch.sigmoid(fake_logit).mean().item()}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        was_training = self.training
        self.eval()
        x = self.generate(self.noise((n, self.config.latent_dim), generator))
        self.train(was_training)
        return x.cpu()
