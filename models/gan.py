"""Generative adversarial network.

Paper: Goodfellow et al. 2014, "Generative Adversarial Nets" (arXiv:1406.2661);
losses as in Goodfellow 2016, "NIPS 2016 Tutorial: Generative Adversarial
Networks" (arXiv:1701.00160), section 3.2.3: the discriminator minimises the
cross-entropy of real vs generated, the generator the non-saturating heuristic
-log D(G(z)). Images use DCGAN-style convolutions (Radford et al. 2016), 2-D
points use MLPs.

NOTE: one discriminator step per generator step (k = 1), Adam(beta1, 0.999), beta1 = 0.5
as in DCGAN. Samples of binary data are Bernoulli means in [0, 1], not thresholded.
NOTE: `pack` > 1 is PacGAN (Lin et al. 2018, arXiv:1712.04086): the discriminator judges
packs of `pack` samples concatenated (along features for the MLP, along channels for the
conv stack), real packs from real samples only, fake packs from generated ones. The number
of samples per step stays the batch size (batch // pack packs of each; a batch that is not
a multiple of `pack` drops its last batch % pack samples). The MLP players have `depth`
hidden layers of `hidden` units (2 by default; PacGAN's 2-D experiments use 4 x 400, latent
dim 2 and BatchNorm in the generator, `g_batchnorm`). Sampling runs in eval mode, so
BatchNorm layers use their running statistics, which the training steps update.
NOTE: images use the conv players where they fit (`players: conv`); `players: mlp` gives them the MLP
players instead (Goodfellow et al. 2014's MNIST model: a 1200-1200 ReLU generator with sigmoid outputs
against a maxout discriminator with dropout; here a LeakyReLU one, `d_dropout` after each hidden layer).
NOTE: data-parallel workers compute BatchNorm statistics over their own part of the batch (no
SyncBatchNorm: it needs GPUs), so only GANs without BatchNorm (the MLP players with
`g_batchnorm: false`) take on N workers exactly the steps they take on one.
NOTE: `r1` > 0 adds Mescheder et al. 2018's R1 penalty (arXiv:1801.04406, eq. 9) to the discriminator's
loss: r1 / 2 * E_real ||grad_x D(x)||^2, the gradient of the logit with respect to the real input (per
pack: the squared norm over all its samples), which keeps the discriminator flat on the data and makes the
game locally convergent. It costs a double backward through the discriminator on every step.
NOTE: with `train.ema` the BatchNorm running statistics are averaged with the weights
(genzoo.training.WeightAverage). When they were copied from the live model instead, a
BatchNorm generator with EMA 0.999 found 12 of 25 grid25 modes (3 % high quality) against 22
(12 %) without EMA; the recipes do not use EMA for the GAN.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from models.base import ConfigError, FamilyConfig, GenerativeModel, logit_of_mean
from models.nets import ConvDiscriminator, ConvGenerator, conv_fits, mlp


@dataclasses.dataclass
class GANConfig(FamilyConfig):
    latent_dim: int = 64
    hidden: int = 256  # MLP width (points and images that do not fit the conv stack)
    depth: int = 2  # hidden layers of each MLP player
    g_batchnorm: bool = False  # BatchNorm1d after every hidden layer of the MLP generator (the conv one always has it)
    width: int = 64  # conv width for images
    lr: float = 2e-4
    beta1: float = 0.5  # Adam's first-moment decay (DCGAN: 0.5)
    pack: int = 1  # PacGAN: samples per discriminator input (1: a plain GAN)
    players: str = "conv"  # images the conv stack fits: "conv" (DCGAN) or "mlp" (Goodfellow et al. 2014's kind)
    d_dropout: float = 0.0  # dropout after every hidden layer of the MLP discriminator (Goodfellow et al. 2014: 0.5)
    r1: float = 0.0  # R1 penalty weight gamma on real data (Mescheder et al. 2018); 0: off

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("latent_dim", "hidden", "depth", "width", "pack"):
            if getattr(self, key) < 1:
                raise ConfigError(f"gan {key} must be at least 1, got {getattr(self, key)}")
        if not 0 <= self.beta1 < 1:
            raise ConfigError(f"gan beta1 must be in [0, 1), got {self.beta1}")
        if self.players not in ("conv", "mlp"):
            raise ConfigError(f"gan players must be 'conv' or 'mlp', got {self.players!r}")
        if not 0 <= self.d_dropout < 1:
            raise ConfigError(f"gan d_dropout must be in [0, 1), got {self.d_dropout}")
        if not self.r1 >= 0:
            raise ConfigError(f"gan r1 must not be negative, got {self.r1}")


class GAN(GenerativeModel):
    name = "gan"
    branch = "implicit density / direct"
    paper = "Goodfellow et al. 2014, arXiv:1406.2661"
    likelihood_kind = "none"
    Config = GANConfig

    def __init__(self, config: GANConfig):
        super().__init__(config)
        c = config
        if c.players == "conv" and conv_fits(c.data_shape):
            self.generator = ConvGenerator(c.latent_dim, c.data_shape, c.width)
            channels, height, width = c.data_shape
            self.discriminator = ConvDiscriminator((c.pack * channels, height, width), c.width)
        else:
            out_act = None if c.data_kind == "points" else nn.Sigmoid()
            hidden = [c.hidden] * c.depth
            self.generator = mlp([c.latent_dim, *hidden, c.dim], out_act=out_act,
                                 norm=nn.BatchNorm1d if c.g_batchnorm else None)
            self.discriminator = mlp([c.pack * c.dim, *hidden, 1], act=lambda: nn.LeakyReLU(0.2), dropout=c.d_dropout)

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
        """Logits of (n, *data_shape) samples, one per pack of `pack` consecutive samples: (n // pack,)."""
        m = self.config.pack
        if x.shape[0] % m:
            raise ValueError(f"critic needs a multiple of pack={m} samples, got {x.shape[0]}")
        if isinstance(self.discriminator, ConvDiscriminator):
            _, c, h, w = x.shape
            return self.discriminator(x.reshape(-1, m * c, h, w))  # channels of consecutive samples side by side
        return self.discriminator(x.reshape(-1, m * self.config.dim)).squeeze(-1)  # (n // pack,)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        betas = (self.config.beta1, 0.999)
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=self.config.lr, betas=betas),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=self.config.lr, betas=betas),
        }

    def training_step(self, batch: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        m = self.config.pack
        if batch.shape[0] < m:
            raise ConfigError(f"gan pack={m} needs at least {m} samples per batch (per worker), got {batch.shape[0]}")
        n = batch.shape[0] - batch.shape[0] % m  # whole packs only
        batch = batch[:n]
        z = self.step_noise((n, self.config.latent_dim))  # data-parallel workers: strides of one draw
        fake = self.generate(z)
        # Discriminator: maximise log D(x) + log(1 - D(G(z))), plus the R1 penalty if asked.
        real = batch.detach().requires_grad_(True) if self.config.r1 > 0 else batch
        real_logit, fake_logit = self.critic(real), self.critic(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit)) + \
            F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
        extra = {}
        if self.config.r1 > 0:
            penalty = self.r1_penalty(real, real_logit)
            d_loss = d_loss + 0.5 * self.config.r1 * penalty
            extra["r1_penalty"] = penalty.detach()
        self.optimize(optimizers["discriminator"], d_loss)
        # Generator: non-saturating loss -log D(G(z)).
        fake_logit = self.critic(fake)
        g_loss = F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))
        self.optimize(optimizers["generator"], g_loss)
        return {"loss": (d_loss + g_loss).detach(), "d_loss": d_loss.detach(), "g_loss": g_loss.detach(),
                "d_real": torch.sigmoid(real_logit).mean().detach(), "d_fake": torch.sigmoid(fake_logit).mean().detach(),
                **extra}

    def r1_penalty(self, real: torch.Tensor, real_logit: torch.Tensor) -> torch.Tensor:
        """E over packs of ||d logit / d x||^2 for the (requires_grad) real samples x, differentiable."""
        (grad,) = torch.autograd.grad(real_logit.sum(), real, create_graph=True)  # (n, *data_shape)
        return grad.reshape(real_logit.shape[0], -1).pow(2).sum(1).mean()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        was_training = self.training
        self.eval()
        x = self.generate(self.noise((n, self.config.latent_dim), generator))
        self.train(was_training)
        return x.cpu()
