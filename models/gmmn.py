"""Generative moment matching network (GMMN).

Paper: Li, Swersky & Zemel 2015, "Generative Moment Matching Networks"
(arXiv:1502.02761). A generator MLP maps uniform noise h ~ U[-1, 1]^latent_dim
to samples and is trained by minimising the maximum mean discrepancy between a
generated mini-batch and a data mini-batch (Gretton et al. 2012) under a sum of
Gaussian kernels of several bandwidths (models/kernels.py). As in the paper the
loss is sqrt(MMD_b^2), the square root of the biased estimator. There is no
discriminator and no likelihood (an implicit model).

GMMN+AE (config `autoencoder=True`): an autoencoder with a sigmoid code layer of
`code_dim` units is trained on the data (reconstruction loss, its own
optimiser); the generator produces codes in [0, 1]^code_dim and the MMD is
taken between generated codes and the (detached) codes of the data batch;
samples are decoder(generator(noise)).

Outputs: 'binary' and 'image' data through a sigmoid (values in [0, 1]; binary
samples are Bernoulli means, not thresholded); 'points' are linear outputs.

NOTE: bandwidths are kernel length-scales s in exp(-d^2 / (2 s^2)); the default
set spans 0.05..40 so one config covers 2-D points, 8x8 and 28x28 images. On
MNIST (squared distances between images ~50-200) s <= 1 gives exp(-25) or less
between a sample and the data: no pull towards the data (between the
near-identical samples of a collapsed generator they still push apart); Li et
al.'s reference code uses 2, 5, 10, 20, 40, 80 there. Set them per kind of data
in params.yaml `recipes.gmmn.<kind>.model.bandwidths`
(tests/models/test_implicit_recipes.py checks the dead and live gradients).
NOTE: GMMN+AE trains the autoencoder and the generator jointly (one AE step then
one generator step per batch), not the paper's two stages; no dropout on the
code layer, no greedy layer-wise pretraining.
NOTE: on N data-parallel workers the MMD is taken between the generated and data rows gathered
from all workers (models.base.gather_rows), so N workers take the steps one worker takes.
NOTE: the generated mini-batch has the size of the data mini-batch (the paper
uses 1000 of each); `prior='gaussian'` swaps the uniform noise for N(0, I).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.base import ConfigError, FamilyConfig, GenerativeModel, gather_rows, logit_of_mean
from models.kernels import mmd
from models.nets import mlp

PRIORS = ("uniform", "gaussian")


@dataclasses.dataclass
class GMMNConfig(FamilyConfig):
    latent_dim: int = 10  # noise dimension (10 in the paper's MNIST model)
    hidden: tuple[int, ...] = (64, 256, 256)  # generator hidden widths
    bandwidths: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0)
    prior: str = "uniform"  # 'uniform' on [-1, 1] (paper) or 'gaussian'
    autoencoder: bool = False  # GMMN+AE: moment matching in an autoencoder's code space
    code_dim: int = 32  # AE code size
    ae_hidden: tuple[int, ...] = (256,)  # encoder hidden widths (decoder mirrors them)
    ae_lr: float = 1e-3
    lr: float = 1e-3

    def __post_init__(self) -> None:
        # models.base._coerce only checks integer tuples: validate the float tuple here, before the base checks.
        bws = self.bandwidths
        if not isinstance(bws, (list, tuple)) or not bws or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0 for s in bws
        ):
            raise ConfigError(f"config key 'bandwidths' must be a non-empty list of positive numbers, got {bws!r}")
        self.bandwidths = tuple(float(s) for s in bws)
        super().__post_init__()
        if self.prior not in PRIORS:
            raise ConfigError(f"config key 'prior' must be one of {PRIORS}, got {self.prior!r}")
        for key in ("latent_dim", "code_dim"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"config key '{key}' must be positive, got {getattr(self, key)}")
        for key in ("hidden", "ae_hidden"):
            if any(h <= 0 for h in getattr(self, key)):
                raise ConfigError(f"config key '{key}' must be positive widths, got {getattr(self, key)!r}")
        if self.ae_lr <= 0:
            raise ConfigError(f"config key 'ae_lr' must be positive, got {self.ae_lr}")


class GMMN(GenerativeModel):
    name = "gmmn"
    branch = "implicit density / kernel moment matching"
    paper = "Li, Swersky & Zemel 2015, arXiv:1502.02761"
    likelihood_kind = "none"
    Config = GMMNConfig

    def __init__(self, config: GMMNConfig):
        super().__init__(config)
        c = config
        squash = c.data_kind != "points"  # binary/image outputs live in [0, 1]
        if c.autoencoder:
            self.encoder = mlp([c.dim, *c.ae_hidden, c.code_dim], out_act=nn.Sigmoid())
            self.decoder = mlp([c.code_dim, *reversed(c.ae_hidden), c.dim], out_act=nn.Sigmoid() if squash else None)
            self.generator = mlp([c.latent_dim, *c.hidden, c.code_dim], out_act=nn.Sigmoid())  # codes in [0, 1]
        else:
            self.generator = mlp([c.latent_dim, *c.hidden, c.dim], out_act=nn.Sigmoid() if squash else None)

    # -- pieces -----------------------------------------------------------
    def draw_noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Generator input h: U[-1, 1]^latent_dim (or N(0, I)), drawn on the CPU then moved."""
        shape = (n, self.config.latent_dim)
        if self.config.prior == "gaussian":
            return self.noise(shape, generator)
        return (torch.rand(shape, generator=generator) * 2.0 - 1.0).to(self.device)  # (n, latent)

    def step_prior(self, n: int) -> torch.Tensor:
        """The generator input of a training step, drawn through `step_noise` (data-parallel safe)."""
        if self.config.prior == "gaussian":
            return self.step_noise((n, self.config.latent_dim))
        return self.step_noise((n, self.config.latent_dim), uniform=True) * 2.0 - 1.0  # (n, latent)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))  # (n, code_dim)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code).view(-1, *self.config.data_shape)  # (n, *data_shape)

    def reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        recon = self.decode(self.encode(x))  # (n, *data_shape)
        if self.config.data_kind == "points":
            return F.mse_loss(recon, x)
        return F.binary_cross_entropy(recon, x)

    def generate(self, h: torch.Tensor) -> torch.Tensor:
        """Noise (n, latent) -> samples (n, *data_shape), through the decoder in GMMN+AE mode."""
        out = self.generator(h)  # (n, D) or (n, code_dim)
        if self.config.autoencoder:
            return self.decode(out)
        return out.view(-1, *self.config.data_shape)

    # -- training -----------------------------------------------------------
    @torch.no_grad()
    def init_from_data(self, train: torch.Tensor) -> None:
        if self.config.data_kind == "points":
            return
        out = self.decoder if self.config.autoencoder else self.generator
        out[-2].bias.copy_(logit_of_mean(train.flatten(1)))  # the layer before the sigmoid

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"generator": torch.optim.Adam(self.generator.parameters(), lr=self.config.lr)}
        if self.config.autoencoder:
            ae_params = [*self.encoder.parameters(), *self.decoder.parameters()]
            opts["autoencoder"] = torch.optim.Adam(ae_params, lr=self.config.ae_lr)
        return opts

    def training_step(self, batch: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        c = self.config
        metrics: dict[str, float] = {}
        target = batch.flatten(1)  # (n, D): moments are matched in data space...
        if c.autoencoder:
            rec = self.reconstruction_loss(batch)
            self.optimize(optimizers["autoencoder"], rec)
            metrics["recon"] = rec.detach()
            with torch.no_grad():
                target = self.encode(batch)  # (n, code_dim): ...or in the (fixed, detached) code space
        fake = self.generator(self.step_prior(batch.shape[0]))  # (n, D) or (n, code_dim)
        # The MMD is not a mean over examples: on N workers it is taken between the whole global batches.
        loss = mmd(gather_rows(fake), gather_rows(target.detach()), c.bandwidths)
        self.optimize(optimizers["generator"], loss)
        metrics["mmd"] = loss.detach()  # sqrt(MMD_b^2) of this batch, before the step
        metrics["loss"] = loss.detach() + metrics.get("recon", 0.0)
        return metrics

    # -- sampling -------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.generate(self.draw_noise(n, generator)).cpu()  # (n, *data_shape)
