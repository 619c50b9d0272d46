"""Networks of the semi-supervised task (genzoo/uses/semisupervised.py): the noisy weight-normalised
MLP classifier that is the GAN's discriminator and the baseline, the feature-matching generator
(Salimans et al. 2016, arXiv:1606.03498, MNIST setup of openai/improved-gan), the K+1-class losses,
and the M1/M2 networks of Kingma et al. 2014 (arXiv:1406.5298).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGE_DIM = 28 * 28
CLASSES = 10


class WNLinear(nn.Module):
    """Weight-normalised linear layer (Salimans & Kingma 2016): W = g * v / ||v|| per output unit, with
    their data-dependent initialisation (`init_from`: unit-variance, zero-mean outputs on a batch).
    `train_scale=False` keeps g at its initialised value, as the reference MNIST discriminator does for
    its hidden layers."""

    def __init__(self, n_in: int, n_out: int, train_scale: bool = False):
        super().__init__()
        self.v = nn.Parameter(torch.randn(n_out, n_in) * 0.1)
        self.g = nn.Parameter(torch.ones(n_out), requires_grad=train_scale)
        self.b = nn.Parameter(torch.zeros(n_out))

    def weight(self) -> torch.Tensor:
        return self.v * (self.g / self.v.norm(dim=1).clamp_min(1e-8)).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.b)

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> torch.Tensor:
        t = F.linear(x, self.v / self.v.norm(dim=1, keepdim=True))  # (n, n_out)
        mean, std = t.mean(0), t.std(0, unbiased=False).clamp_min(1e-6)
        self.g.copy_(1.0 / std)
        self.b.copy_(-mean / std)
        return self(x)


class Classifier(nn.Module):
    """x (n, 784) in [0, 1] -> K logits; Gaussian noise on the input and after every hidden layer while
    training (784-1000-500-250-250-250-10 with ReLU in the reference). As the GAN's discriminator its K
    logits are the real classes and the (K+1)th logit is fixed at 0 (`k_plus_one_losses`)."""

    def __init__(self, hidden: tuple[int, ...] = (1000, 500, 250, 250, 250), input_noise: float = 0.3,
                 hidden_noise: float = 0.5):
        super().__init__()
        sizes = [IMAGE_DIM, *hidden]
        self.hidden = nn.ModuleList(WNLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = WNLinear(sizes[-1], CLASSES, train_scale=True)
        self.input_noise, self.hidden_noise = input_noise, hidden_noise

    @staticmethod
    def _noise(h: torch.Tensor, sigma: float, on: bool) -> torch.Tensor:
        return h + sigma * torch.randn_like(h) if on and sigma > 0 else h

    def forward(self, x: torch.Tensor, with_features: bool = False):
        h = self._noise(x, self.input_noise, self.training)
        features = h
        for layer in self.hidden:
            features = F.relu(layer(h))  # the last hidden layer's output: the feature-matching statistics
            h = self._noise(features, self.hidden_noise, self.training)
        logits = self.out(h)  # (n, K)
        return (logits, features) if with_features else logits

    @torch.no_grad()
    def init_from(self, x: torch.Tensor, noisy: bool = False) -> None:
        """Data-dependent initialisation of every layer on a batch, with the training noise on (`noisy`, as
        the reference initialises: each layer's inputs then carry the noise they will carry in training)
        or off."""
        h = self._noise(x, self.input_noise, noisy)
        for layer in self.hidden:
            h = self._noise(F.relu(layer.init_from(h)), self.hidden_noise, noisy)
        self.out.init_from(h)


class Generator(nn.Module):
    """u ~ U(0, 1)^latent -> image (n, 784) in (0, 1): dense layers with batch norm (no scale) and softplus,
    then a weight-normalised dense layer with a sigmoid (the reference MNIST generator 100-500-500-784)."""

    def __init__(self, latent_dim: int = 100, hidden: tuple[int, ...] = (500, 500)):
        super().__init__()
        self.latent_dim = latent_dim
        sizes = [latent_dim, *hidden]
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(sizes[:-1], sizes[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(b, affine=False) for b in hidden)
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(b)) for b in hidden)
        self.out = WNLinear(sizes[-1], IMAGE_DIM, train_scale=True)
        nn.init.normal_(self.out.v, std=0.05)

    def forward(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = self.out.v.device
        h = torch.rand(n, self.latent_dim, generator=generator, device=device)
        for linear, norm, bias in zip(self.linears, self.norms, self.biases):
            h = F.softplus(norm(linear(h)) + bias)
        return torch.sigmoid(self.out(h))  # (n, 784)


def k_plus_one_losses(logits_lab: torch.Tensor, labels: torch.Tensor, logits_unl: torch.Tensor,
                      logits_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's supervised and unsupervised losses with K real-class logits and the (K+1)th
    ("fake") logit fixed at 0 (Salimans et al. 2016, section 5): with Z(x) = sum_k exp l_k(x),
    p(real | x) = Z / (Z + 1), so log p(real | x) = lse(l) - softplus(lse(l)) and
    log p(fake | x) = -softplus(lse(l)).
    Returns (cross-entropy of the labels over the K classes,
             -0.5 mean log p(real | unlabelled) - 0.5 mean log p(fake | generated))."""
    loss_lab = F.cross_entropy(logits_lab, labels)
    lse_unl, lse_fake = torch.logsumexp(logits_unl, 1), torch.logsumexp(logits_fake, 1)
    loss_unl = -0.5 * (lse_unl - F.softplus(lse_unl)).mean() + 0.5 * F.softplus(lse_fake).mean()
    return loss_lab, loss_unl


def feature_matching_loss(features_fake: torch.Tensor, features_real: torch.Tensor) -> torch.Tensor:
    """|| mean f(G(z)) - mean f(x) ||^2 / d (the reference's mean of squares)."""
    return (features_fake.mean(0) - features_real.mean(0)).pow(2).mean()


# ---- Kingma et al. 2014: M1 (a VAE on pixels) and M2 (a class-conditional VAE on M1's codes) ----

def softplus_mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Softplus())
    return nn.Sequential(*layers)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean).pow(2) / logvar.exp()).sum(-1)


def kl_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(-1)


class M1(nn.Module):
    """VAE on pixels: q(z1|x) Gaussian, p(x|z1) Bernoulli with grey levels as targets (softplus MLPs)."""

    def __init__(self, hidden: tuple[int, ...] = (600, 600), latent_dim: int = 50):
        super().__init__()
        self.encoder = softplus_mlp([IMAGE_DIM, *hidden, 2 * latent_dim])
        self.decoder = softplus_mlp([latent_dim, *reversed(hidden), IMAGE_DIM])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x).chunk(2, -1)
        return mean, logvar.clamp(-12, 6)

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        mean, logvar = self.encode(x)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
        log_px = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(-1)
        return log_px - kl_standard_normal(mean, logvar)  # (n,)


class M2(nn.Module):
    """Class-conditional VAE on codes z1 (Kingma et al.'s M2): q(y|z1), q(z2|z1,y), p(z1|z2,y) Gaussian."""

    def __init__(self, input_dim: int = 50, hidden: int = 500, latent_dim: int = 50):
        super().__init__()
        self.latent_dim = latent_dim
        self.classifier = softplus_mlp([input_dim, hidden, CLASSES])
        self.encoder = softplus_mlp([input_dim + CLASSES, hidden, 2 * latent_dim])
        self.decoder = softplus_mlp([latent_dim + CLASSES, hidden, 2 * input_dim])

    def decode(self, z2: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.decoder(torch.cat([z2, F.one_hot(y, CLASSES).float()], -1)).chunk(2, -1)
        return mean, logvar.clamp(-8, 6)

    def labelled_bound(self, z1: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-L(z1, y): the ELBO of log p(z1, y), with the uniform prior p(y) = 1/K (n,)."""
        mean, logvar = self.encoder(torch.cat([z1, F.one_hot(y, CLASSES).float()], -1)).chunk(2, -1)
        logvar = logvar.clamp(-12, 6)
        z2 = mean + (0.5 * logvar).exp() * torch.randn_like(mean)
        return gaussian_log_prob(z1, *self.decode(z2, y)) - kl_standard_normal(mean, logvar) - math.log(CLASSES)

    def unlabelled_bound(self, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-U(z1) = sum_y q(y|z1) (-L(z1, y)) + H(q(y|z1)), every class enumerated; and q's logits."""
        n = len(z1)
        logits = self.classifier(z1)  # (n, K)
        ys = torch.arange(CLASSES, device=z1.device).repeat_interleave(n)  # (K n,)
        bounds = self.labelled_bound(z1.repeat(CLASSES, 1), ys).view(CLASSES, n).t()  # (n, K)
        q = logits.softmax(-1)
        return (q * (bounds - logits.log_softmax(-1))).sum(-1), logits


def image_grid(x: np.ndarray | torch.Tensor, nrow: int) -> np.ndarray:
    """(n, 784) or (n, 1, 28, 28) in [0, 1] -> one (H, W) picture, `nrow` images a row, 1-pixel white gaps."""
    x = np.asarray(torch.as_tensor(x).detach().cpu().float()).reshape(-1, 28, 28).clip(0, 1)
    rows = math.ceil(len(x) / nrow)
    canvas = np.ones((rows * 29 + 1, nrow * 29 + 1), dtype=np.float32)
    for i, image in enumerate(x):
        r, c = divmod(i, nrow)
        canvas[1 + 29 * r: 29 * (r + 1), 1 + 29 * c: 29 * (c + 1)] = image
    return canvas
