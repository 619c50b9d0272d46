"""Generative stochastic network (generalised denoising auto-encoder with walkback).

Papers: Bengio, Yao, Alain & Vincent 2013, "Generalized Denoising Auto-Encoders
as Generative Models" (arXiv:1305.6663), and Bengio, Thibodeau-Laufer, Alain &
Yosinski 2014, "Deep Generative Stochastic Networks Trainable by Backprop"
(arXiv:1306.1091). A corruption process C(x~ | x) and a learned reconstruction
distribution P_theta(x | x~) define the Markov chain
    x_t -> x~_t ~ C(. | x_t) -> x_{t+1} ~ P_theta(. | x~_t),
whose stationary distribution estimates the data distribution when P_theta
matches the true posterior P(x | x~). Training maximises log P_theta(x | x~)
with walkback (2013, section 3.4): from each data point the chain is run for
`walkback` steps and every reconstruction distribution along the way is trained
to put mass on the ORIGINAL x; the walked-back states are not differentiated
through. The model defines no likelihood.

Corruption and reconstruction, by data kind (`corruption: auto` picks the
first one named; `salt_pepper` or `gaussian` choose it for binary and image data):
- binary: salt-and-pepper (each unit replaced by a fair coin with probability
  `salt_pepper`), Bernoulli P(x | x~); the chain state is binary;
- image (levels in [0, 1]): additive Gaussian noise (std `noise_std`) or
  salt-and-pepper, Bernoulli cross-entropy on the grey levels; the chain state
  is the reconstruction mean (NOTE: mean-field step: the randomness of the
  image chain is the corruption (and the hidden noise), since Bernoulli draws
  would binarise it);
- points: additive Gaussian noise only, Gaussian P(x | x~) with mean
  x~ + mu(x~) (NOTE: residual parameterisation, so mu estimates the denoising
  step) and a per-dimension std predicted from x~.
Hidden noise (`hidden_noise` > 0): Gaussian noise of that std is added to the
pre-activations of every hidden layer of the denoiser, in training (walkback)
and in the sampling chain, as in Bengio et al. 2014 (MNIST: salt-and-pepper 0.4
on the input and std 2 in the hidden layers). `reconstruction(x~, noisy=False)`
is the deterministic path (no hidden noise; what `denoise` returns).
NOTE: the paper's noise is added before and after tanh units; here it is added
before the ReLU units of genzoo's MLP, so the std is relative to ReLU
pre-activations the network can scale up (the paper's std 2 is not the same
amount of noise here). Measured on MNIST at the quick budget (benchmarks/results/
recipes.jsonl, 2026-12-01): salt-and-pepper 0.4 alone gives Parzen 218 nats,
adding hidden noise 0.5 gives 107 and 2 collapses the chain to one class, so
the recipes keep hidden_noise at 0.
NOTE: the paper's MNIST GSN is the 2-hidden-layer deep GSN; here the noise goes
into the hidden layers of the one-step denoiser (below), not into a latent
chain state.

The "loss" metric is the training objective: the mean over walkback steps of
-log P(x | x~) per example (a Gaussian density for points, so it can be
negative; a cross-entropy on grey levels for images), not a likelihood.

NOTE: the GSN here is the 2013 generalised-DAE special case of the 2014 GSN
(the latent state is the corrupted x~; no multi-layer latent chain: the hidden
noise lives in the one-step denoiser), with a fixed number of walkback steps
instead of the paper's geometric one.
NOTE: sampling chains start from the data moments seen in training (running
buffers): N(mean, var) for points, Bernoulli(mean) for binary and images.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from models import markov
from models.base import ConfigError, FamilyConfig, GenerativeModel, logit_of_mean
from models.nets import mlp

CORRUPTIONS = ("auto", "salt_pepper", "gaussian")


@dataclasses.dataclass
class GSNConfig(FamilyConfig):
    hidden: int = 256
    walkback: int = 3  # reconstructions per training example (chain steps from the data)
    salt_pepper: float = 0.3  # binary: probability of replacing a unit by a fair coin
    noise_std: float = 0.1  # image and points: std of the Gaussian corruption (absolute, in data units)
    corruption: str = "auto"  # 'auto' (binary: salt_pepper; image, points: gaussian), 'salt_pepper', 'gaussian'
    hidden_noise: float = 0.0  # std of Gaussian noise on the denoiser's hidden pre-activations (paper: 2)
    burn_in: int = 100  # chain steps discarded before the first sample
    thin: int = 1  # chain steps between two recorded samples of one chain
    chains: int = 0  # parallel sampling chains; 0: one chain per requested sample
    lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden < 1 or self.walkback < 1 or self.thin < 1 or self.burn_in < 0 or self.chains < 0:
            raise ConfigError("need hidden, walkback, thin >= 1 and burn_in, chains >= 0")
        if not 0 < self.salt_pepper <= 1:
            raise ConfigError(f"salt_pepper must be in (0, 1], got {self.salt_pepper}")
        if self.noise_std <= 0:
            raise ConfigError(f"noise_std must be positive, got {self.noise_std}")
        if self.corruption not in CORRUPTIONS:
            raise ConfigError(f"corruption must be one of {CORRUPTIONS}, got {self.corruption!r}")
        if self.corruption == "salt_pepper" and self.data_kind == "points":
            raise ConfigError("corruption 'salt_pepper' needs binary or image data (points take 'gaussian')")
        if self.hidden_noise < 0:
            raise ConfigError(f"hidden_noise must not be negative, got {self.hidden_noise}")

    @property
    def corruption_kind(self) -> str:
        """The corruption actually applied: 'salt_pepper' or 'gaussian'."""
        if self.corruption != "auto":
            return self.corruption
        return "salt_pepper" if self.data_kind == "binary" else "gaussian"


class GSN(GenerativeModel):
    name = "gsn"
    branch = "implicit density / Markov chain"
    paper = "Bengio et al. 2014, arXiv:1306.1091; Bengio et al. 2013, arXiv:1305.6663"
    likelihood_kind = "none"
    supported_kinds = ("binary", "image", "points")
    Config = GSNConfig

    def __init__(self, config: GSNConfig):
        super().__init__(config)
        c = config
        out = 2 * c.dim if c.data_kind == "points" else c.dim
        self.denoiser = mlp([c.dim, c.hidden, c.hidden, out])
        self.register_buffer("data_count", torch.zeros((), dtype=torch.float64))  # running data moments
        self.register_buffer("data_sum", torch.zeros(c.dim, dtype=torch.float64))
        self.register_buffer("data_sqsum", torch.zeros(c.dim, dtype=torch.float64))

    # -- the chain's two halves -----------------------------------------
    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x~ ~ C(. | x) for flat x of shape (n, D)."""
        if self.config.corruption_kind == "salt_pepper":
            flip = markov.uniform(x, generator) < self.config.salt_pepper
            return torch.where(flip, markov.bernoulli(torch.full_like(x, 0.5), generator), x)
        return x + self.config.noise_std * markov.gaussian(x, generator)

    def denoiser_output(self, x_tilde: torch.Tensor, noisy: bool = True,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """The denoiser MLP on x~ (n, D), with `hidden_noise` added to each hidden pre-activation when noisy."""
        sigma = self.config.hidden_noise if noisy else 0.0
        h = x_tilde
        for layer in self.denoiser:
            h = layer(h)
            if sigma > 0 and isinstance(layer, torch.nn.Linear) and layer is not self.denoiser[-1]:
                h = h + sigma * markov.gaussian(h, generator)
        return h

    def reconstruction(self, x_tilde: torch.Tensor, noisy: bool = True,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Parameters of P(x | x~): (logits, None) for binary/image, (mean, log_std) for points.
        noisy=False: without the hidden noise (deterministic in x~)."""
        out = self.denoiser_output(x_tilde, noisy, generator)  # (n, D) or (n, 2D)
        if self.config.data_kind != "points":
            return out, None
        delta, log_std = out.chunk(2, dim=-1)  # (n, D) each
        return x_tilde + delta, log_std.clamp(-7, 2)

    def reconstruction_nll(self, params: tuple[torch.Tensor, torch.Tensor | None], x: torch.Tensor) -> torch.Tensor:
        """-log P(x | x~) summed over dimensions: (n,)."""
        loc, log_std = params
        if log_std is None:
            return F.binary_cross_entropy_with_logits(loc, x, reduction="none").sum(-1)
        z = (x - loc) * torch.exp(-log_std)
        return (0.5 * z**2 + log_std + 0.5 * math.log(2 * math.pi)).sum(-1)

    def draw(self, params: tuple[torch.Tensor, torch.Tensor | None],
             generator: torch.Generator | None = None) -> torch.Tensor:
        """x ~ P(. | x~) (the mean for images, see the module NOTE): (n, D)."""
        loc, log_std = params
        if self.config.data_kind == "points":
            return loc + torch.exp(log_std) * markov.gaussian(loc, generator)
        probs = torch.sigmoid(loc)
        return markov.bernoulli(probs, generator) if self.config.data_kind == "binary" else probs

    def transition(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One chain step x_t -> x_{t+1} on flat states (n, D)."""
        return self.draw(self.reconstruction(self.corrupt(x, generator), generator=generator), generator)

    @torch.no_grad()
    def denoise(self, x_tilde: torch.Tensor) -> torch.Tensor:
        """The mean of P(x | x~) without hidden noise (deterministic): (n, D) for flat x~ (n, D)."""
        loc, log_std = self.reconstruction(x_tilde, noisy=False)
        return loc if log_std is not None else torch.sigmoid(loc)

    def sampler(self) -> markov.MarkovChain:
        return markov.MarkovChain(self.transition, self.config.burn_in, self.config.thin)

    # -- training -------------------------------------------------------
    def walkback_loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean over the walkback steps of -log P(x | x~_t): (n,) for x of shape (n, *data_shape)."""
        x = x.flatten(1)  # (n, D)
        state, total = x, torch.zeros(x.shape[0], device=x.device)
        for _ in range(self.config.walkback):
            params = self.reconstruction(self.corrupt(state, generator), generator=generator)
            total = total + self.reconstruction_nll(params, x)
            with torch.no_grad():
                state = self.draw(params, generator)  # walk away from x, detached
        return total / self.config.walkback

    @torch.no_grad()
    def init_from_data(self, train: torch.Tensor) -> None:
        if self.config.data_kind != "points":  # points: a residual denoiser, whose zero start is right
            self.denoiser[-1].bias.copy_(logit_of_mean(train.flatten(1)))

    def training_step(self, batch: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        flat = batch.flatten(1)  # (n, D)
        with torch.no_grad():
            self.data_count += flat.shape[0]
            self.data_sum += flat.sum(0).double()
            self.data_sqsum += (flat.double() ** 2).sum(0)
        loss = self.walkback_loss(batch).mean()
        self.optimize(optimizers["main"], loss)
        return {"loss": loss.detach()}

    # -- sampling -------------------------------------------------------
    def initial_states(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """Chain starts from the running data moments: (n, D)."""
        count = self.data_count.clamp(min=1)
        mean = (self.data_sum / count).float().to(self.device)  # (D,)
        if self.config.data_kind != "points":
            mean = mean if self.data_count > 0 else torch.full_like(mean, 0.5)
            return markov.bernoulli(mean.clamp(0, 1).expand(n, -1).contiguous(), generator)
        std = (self.data_sqsum / count - (self.data_sum / count) ** 2).clamp(min=0).sqrt().float().to(self.device)
        std = std if self.data_count > 0 else torch.ones_like(std)
        return mean + std * markov.gaussian(torch.empty(n, self.config.dim, device=self.device), generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        chains = self.config.chains or n
        init = self.initial_states(min(chains, n), generator)  # (chains, D)
        x = self.sampler().run(init, n, generator)  # (n, D)
        return x.view(n, *self.config.data_shape).cpu()
