"""The three ways `super-resolve` and `translate` learn p(digit | input), shared by both tasks.

- RegressionMethod   a U-Net trained on a pixel loss (MSE or L1): one output per input, the mean
                     (MSE) or median (L1) of the plausible digits: the baseline.
- AdversarialMethod  pix2pix (Isola et al. 2017) / SRGAN (Ledig et al. 2017): the same U-Net plus a
                     PatchGAN discriminator on (input, output) pairs; loss = adv_weight * the
                     non-saturating GAN loss + content_weight * content (L1, MSE or evaluator features).
- DiffusionMethod    a conditional DDPM (Ho et al. 2020; SR3, Saharia et al. 2021).

A task supplies a predictor subclass of genzoo.uses.conditional.ConditionalPredictor (its
`Pairing`: how an input is made from a digit and read back; its `predict` docstring: what the user
passes). Training draws batches from successive random permutations of the training digits;
measures use the same seeded test rows for every method (EVAL_SEED).
NOTE: SRGAN's content loss on VGG features becomes `content: features`, the evaluator's
penultimate features; the evaluator then also judges the outputs (accuracy, FID), a circular
measure, so the default content is pixel-wise.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from genzoo.uses.base import Method, UseConfig, UseInputs, UseOutcome
from genzoo.uses.conditional import ConditionalPredictor, PatchDiscriminator
from genzoo.uses.conditional_measures import measure, tile
from models.base import ConfigError

EVAL_SEED = 1234  # the test rows every method is measured on


@dataclasses.dataclass
class ConditionalConfig(UseConfig):
    steps: int = 2000  # optimiser steps (of each network)
    batch_size: int = 64
    lr: float = 2e-4  # Adam (pix2pix: 2e-4, beta1 0.5)
    beta1: float = 0.5
    width: int = 32  # U-Net base channels
    train_examples: int = 0  # training digits used; 0 = all
    eval_examples: int = 2000  # seeded test rows measured
    samples_per_input: int = 4  # k outputs per input (diversity, pictures)
    diversity_inputs: int = 100
    picture_inputs: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("steps", "batch_size", "width", "eval_examples", "diversity_inputs", "picture_inputs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key '{key}' must be at least 1, got {getattr(self, key)}")
        if self.samples_per_input < 2:
            raise ConfigError(f"config key 'samples_per_input' must be at least 2, got {self.samples_per_input}")
        if self.train_examples < 0 or self.lr <= 0 or not 0 <= self.beta1 < 1:
            raise ConfigError("config keys need train_examples >= 0, lr > 0 and beta1 in [0, 1)")


class ConditionalMethod(Method):
    """run(): the training pairs, `fit` (the subclass), then the measures and the picture."""

    Predictor: ClassVar[type[ConditionalPredictor]]
    Config: ClassVar[type[ConditionalConfig]] = ConditionalConfig
    datasets = ("mnist",)

    def predictor_config(self, cfg: ConditionalConfig) -> dict[str, Any]:
        raise NotImplementedError

    def fit(self, predictor: ConditionalPredictor, x: torch.Tensor, c: torch.Tensor, inputs: UseInputs) -> None:
        """Train on digits x and conditions c, both (n, 1, 28, 28) in [-1, 1]."""
        raise NotImplementedError

    def build(self, config: dict[str, Any]) -> ConditionalPredictor:
        return self.Predictor(config)

    def run(self, inputs: UseInputs) -> UseOutcome:
        cfg, pairing, data = inputs.config, self.Predictor.pairing, inputs.data
        if data.kind != "image" or data.shape != (1, 28, 28):
            raise ConfigError(f"{pairing.task} works on 28x28 grey images (mnist); dataset '{data.name}' holds "
                              f"{data.kind} data of shape {data.shape}")
        torch.manual_seed(cfg.seed)
        digits = data.tensor("train", cfg.train_examples or None)  # (n, 1, 28, 28) in [0, 1]
        x = (2 * digits - 1).to(inputs.device)
        c = (2 * pairing.lift(pairing.make_input(digits)) - 1).to(inputs.device)
        predictor = self.Predictor(self.predictor_config(cfg)).to(inputs.device)
        start = time.perf_counter()
        predictor.train()
        self.fit(predictor, x, c, inputs)
        train_seconds = time.perf_counter() - start
        predictor.eval()

        rows = np.sort(np.random.default_rng(EVAL_SEED).choice(len(data.arrays["test"]),
                                                              min(cfg.eval_examples, len(data.arrays["test"])), False))
        truth = data.tensor("test")[rows]
        given = pairing.make_input(truth)
        start = time.perf_counter()
        metrics = measure(predictor.generate, given, truth, data.arrays["test_labels"][rows], pairing.consistency,
                          inputs.evaluator, data.tensor("test"), cfg.samples_per_input, cfg.diversity_inputs)
        metrics.update(train_seconds=train_seconds, eval_seconds=time.perf_counter() - start)
        inputs.log(f"{self.name}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        few = given[:cfg.picture_inputs]
        columns = [pairing.lift(few), truth[:cfg.picture_inputs]]
        columns += [predictor.generate(few, s).cpu() for s in range(cfg.samples_per_input if self.generative else 1)]
        notes = [f"measured on {len(rows)} seeded test digits; FID against all {len(data.arrays['test'])} test digits "
                 "on evaluator features (fewer samples than the 10,000 of the FID protocol: compare within this table)"]
        return UseOutcome(metrics, predictor.cpu(), {"outputs": tile(columns)}, notes)

    def loop(self, cfg: ConditionalConfig, n: int, step: Callable[[torch.Tensor], dict[str, torch.Tensor]],
             inputs: UseInputs) -> None:
        """cfg.steps calls of step(batch row indices) -> losses, over successive random permutations;
        the mean losses logged about every 10 % of the steps; a non-finite loss stops the run."""
        gen = torch.Generator().manual_seed(cfg.seed)
        order, at, every = torch.randperm(n, generator=gen), 0, max(1, cfg.steps // 10)
        sums: dict[str, float] = {}
        start = time.perf_counter()
        for i in range(1, cfg.steps + 1):
            if at + cfg.batch_size > n:
                order, at = torch.randperm(n, generator=gen), 0
            losses = step(order[at:at + cfg.batch_size].to(inputs.device))
            at += cfg.batch_size
            for key, value in losses.items():
                value = float(value)
                if not np.isfinite(value):
                    raise RuntimeError(f"{self.name}: {key} became {value} at step {i}; stopping")
                sums[key] = sums.get(key, 0.0) + value
            if i % every == 0 or i == cfg.steps:
                seen = every if i % every == 0 else i % every
                means = {key: total / seen for key, total in sums.items()}
                inputs.progress({"step": float(i), **means})
                inputs.log(f"{self.name} step {i}/{cfg.steps}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items())
                           + f" ({time.perf_counter() - start:.0f} s)")
                sums = {}


def adam(cfg: ConditionalConfig, module: torch.nn.Module) -> torch.optim.Adam:
    return torch.optim.Adam(module.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))


def optimize(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


# ----------------------------------------------------------------------------- the three methods


@dataclasses.dataclass
class RegressionConfig(ConditionalConfig):
    dropout: float = 0.0  # in training only: the predictor stays deterministic


class RegressionMethod(ConditionalMethod):
    generative = False
    Config = RegressionConfig
    loss: ClassVar[str]  # 'mse' or 'l1'

    def predictor_config(self, cfg: RegressionConfig) -> dict[str, Any]:
        return {"kind": "unet", "width": cfg.width, "dropout": cfg.dropout, "test_dropout": False, "noise_channels": 0}

    def fit(self, predictor, x, c, inputs) -> None:
        opt, pixel = adam(inputs.config, predictor), F.mse_loss if self.loss == "mse" else F.l1_loss

        def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            loss = pixel(predictor(c[idx]), x[idx])
            optimize(opt, loss)
            return {self.loss: loss.detach()}

        self.loop(inputs.config, len(x), step, inputs)


@dataclasses.dataclass
class AdversarialConfig(ConditionalConfig):
    content: str = "l1"  # 'l1' (pix2pix), 'mse' (SRGAN-MSE) or 'features' (SRGAN's VGG loss, on the evaluator)
    content_weight: float = 100.0  # pix2pix's lambda_L1
    adv_weight: float = 1.0
    dropout: float = 0.5  # decoder dropout, kept at test time (pix2pix's noise)
    noise_channels: int = 0  # a N(0, 1) map at the bottleneck
    d_width: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.content not in ("l1", "mse", "features"):
            raise ConfigError(f"config key 'content' must be 'l1', 'mse' or 'features', got {self.content!r}")
        if not 0 <= self.dropout < 1 or self.noise_channels < 0 or self.d_width < 1:
            raise ConfigError("config keys need dropout in [0, 1), noise_channels >= 0 and d_width >= 1")
        if self.content_weight < 0 or self.adv_weight <= 0:
            raise ConfigError("config keys need content_weight >= 0 and adv_weight > 0")


class AdversarialMethod(ConditionalMethod):
    Config = AdversarialConfig

    def predictor_config(self, cfg: AdversarialConfig) -> dict[str, Any]:
        return {"kind": "unet", "width": cfg.width, "dropout": cfg.dropout, "test_dropout": True,
                "noise_channels": cfg.noise_channels}

    def fit(self, predictor, x, c, inputs) -> None:
        cfg = inputs.config
        disc = PatchDiscriminator(cfg.d_width).to(x.device)
        opt_g, opt_d = adam(cfg, predictor), adam(cfg, disc)
        bce = F.binary_cross_entropy_with_logits
        if cfg.content == "features":
            if inputs.evaluator is None:
                raise ConfigError(f"{self.name}: content 'features' needs the dataset's evaluator")
            critic = copy.deepcopy(inputs.evaluator).to(x.device).eval().requires_grad_(False)
            content = lambda fake, real: F.mse_loss(critic.features((fake + 1) / 2), critic.features((real + 1) / 2))
        else:
            content = F.l1_loss if cfg.content == "l1" else F.mse_loss

        def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            ci, xi = c[idx], x[idx]
            fake = predictor(ci)
            real_logits, fake_logits = disc(ci, xi), disc(ci, fake.detach())
            loss_d = 0.5 * (bce(real_logits, torch.ones_like(real_logits)) + bce(fake_logits, torch.zeros_like(fake_logits)))
            optimize(opt_d, loss_d)
            fake_logits = disc(ci, fake)
            adv, cont = bce(fake_logits, torch.ones_like(fake_logits)), content(fake, xi)
            optimize(opt_g, cfg.adv_weight * adv + cfg.content_weight * cont)
            return {"d": loss_d.detach(), "g_adv": adv.detach(), f"g_{cfg.content}": cont.detach()}

        self.loop(cfg, len(x), step, inputs)


@dataclasses.dataclass
class DiffusionConfig(ConditionalConfig):
    lr: float = 1e-3
    beta1: float = 0.9
    timesteps: int = 1000  # T of the forward process
    sample_steps: int = 50  # respaced reverse steps of the sampler
    beta_1: float = 1e-4  # the linear schedule at T = 1000, rescaled by 1000 / T
    beta_T: float = 0.02
    ema: float = 0.999  # decay of the weights' moving average that the predictor keeps; 0 = none

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.timesteps < 2 or not 1 <= self.sample_steps <= self.timesteps:
            raise ConfigError("config keys need timesteps >= 2 and 1 <= sample_steps <= timesteps")
        if not 0 < self.beta_1 <= self.beta_T or self.beta_T * 1000 / self.timesteps >= 1:
            raise ConfigError("config keys need 0 < beta_1 <= beta_T and beta_T * 1000 / timesteps < 1")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"config key 'ema' must be in [0, 1), got {self.ema}")


class DiffusionMethod(ConditionalMethod):
    Config = DiffusionConfig

    def predictor_config(self, cfg: DiffusionConfig) -> dict[str, Any]:
        return {"kind": "ddpm", "width": cfg.width, "timesteps": cfg.timesteps, "sample_steps": cfg.sample_steps,
                "beta_1": cfg.beta_1, "beta_T": cfg.beta_T}

    def fit(self, predictor, x, c, inputs) -> None:
        cfg = inputs.config
        opt, net = adam(cfg, predictor.net), predictor.net
        ema = copy.deepcopy(net).requires_grad_(False) if cfg.ema else None
        count = [0]

        def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            loss = predictor.schedule.loss(net, x[idx], c[idx])
            optimize(opt, loss)
            if ema is not None:
                count[0] += 1
                decay = min(cfg.ema, (1 + count[0]) / (10 + count[0]))  # short runs: forget the init sooner
                for p_ema, p in zip(ema.parameters(), net.parameters()):
                    p_ema.lerp_(p.detach(), 1 - decay)
            return {"l_simple": loss.detach()}

        self.loop(cfg, len(x), step, inputs)
        if ema is not None:
            net.load_state_dict(ema.state_dict())
