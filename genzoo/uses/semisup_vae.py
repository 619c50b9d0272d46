"""The `vae` method of the semi-supervised task: Kingma et al. 2014's M1 + M2 (arXiv:1406.5298).

M1 (a VAE on the pixels) is trained on every training image, labels unused; then M2, a class-conditional
VAE whose data are M1's codes z1 ~ q(z1|x) (redrawn at every step), is trained on the objective of the
paper's eq. 9: the labelled bound -L(z1, y) on the labelled batch, the unlabelled bound -U(z1) (every
class enumerated, plus the entropy of q(y|z1)) on the unlabelled batch, and alpha times the labelled
cross-entropy of q(y|z1). The classifier served is q(y | mean of q(z1|x)).

NOTE: per-example means of both bounds, the labelled batch upsampled to the unlabelled batch size, so
`alpha` weighs a mean cross-entropy against mean bounds (the paper's alpha = 0.1 N against sums).
"""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F

from genzoo.uses.base import Method, UseInputs, UseOutcome
from genzoo.uses.semisup_common import (LabelsConfig, LatentClassifierPredictor, check_finite, error_percent,
                                        label_batches, begin_run)
from genzoo.uses.semisup_nets import CLASSES, image_grid
from models.base import ConfigError


@dataclasses.dataclass
class VAEConfig(LabelsConfig):
    m1_hidden: tuple[int, ...] = (600, 600)
    m1_latent: int = 50
    m1_epochs: int = 10
    m1_lr: float = 0.001
    m2_hidden: int = 500
    m2_latent: int = 50
    epochs: int = 10  # M2's epochs, each one pass over the unlabelled images (or steps_per_epoch steps)
    steps_per_epoch: int = 0
    lr: float = 0.001
    alpha: float = 50.0  # weight of the labelled cross-entropy (a mean) against the mean bounds

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.m1_epochs, self.epochs) < 1:
            raise ConfigError("m1_epochs and epochs must be at least 1")

    def predictor_config(self) -> dict:
        return {"m1_hidden": list(self.m1_hidden), "m1_latent": self.m1_latent, "m2_hidden": self.m2_hidden,
                "m2_latent": self.m2_latent}


@torch.no_grad()
def _codes(m1, x: torch.Tensor, chunk: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """M1's q(z1|x): means and standard deviations of every row."""
    means, logvars = zip(*(m1.encode(x[i:i + chunk]) for i in range(0, len(x), chunk)))
    return torch.cat(means), (0.5 * torch.cat(logvars)).exp()


class VAEMethod(Method):
    name = "vae"
    Config = VAEConfig
    datasets = ("mnist",)
    summary = "M1 + M2: a class-conditional VAE on a pixel VAE's codes (Kingma et al. 2014)"

    def run(self, inputs: UseInputs) -> UseOutcome:
        cfg, gen, split, predictor = begin_run(self, inputs)  # cfg: VAEConfig
        m1, m2, b = predictor.m1, predictor.m2, cfg.batch_size
        start = time.perf_counter()

        # M1 on every training image (the labelled ones too, without their labels)
        x_all = torch.cat([split.x_lab, split.x_unl])
        opt = torch.optim.Adam(m1.parameters(), lr=cfg.m1_lr)
        per_epoch = max(1, len(x_all) // b)
        for epoch in range(1, cfg.m1_epochs + 1):
            total = 0.0
            order = torch.randperm(len(x_all), generator=gen).to(inputs.device)
            for i in range(per_epoch):
                loss = -m1.elbo(x_all[order[i * b:(i + 1) * b]]).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
            check_finite(m1_elbo=total)
            inputs.progress({"m1_epoch": float(epoch), "m1_elbo": -total / per_epoch})
            inputs.log(f"M1 epoch {epoch}: ELBO {-total / per_epoch:.2f} nats")

        # M2 on M1's codes, z1 ~ q(z1|x) redrawn every step
        m1.eval()
        mean_lab, std_lab = _codes(m1, split.x_lab)
        mean_unl, std_unl = _codes(m1, split.x_unl)
        opt = torch.optim.Adam(m2.parameters(), lr=cfg.lr)
        per_epoch = cfg.steps_per_epoch or max(1, len(split.x_unl) // b)
        lab = label_batches(len(split.y_lab), b, cfg.epochs * per_epoch, gen).to(inputs.device)
        for epoch in range(1, cfg.epochs + 1):
            sums = dict.fromkeys(("bound_lab", "bound_unl", "loss_lab", "train_error"), 0.0)
            order = torch.randint(len(split.x_unl), (per_epoch, b), generator=gen).to(inputs.device)
            for i in range(per_epoch):
                rows, y = lab[(epoch - 1) * per_epoch + i], split.y_lab[lab[(epoch - 1) * per_epoch + i]]
                z_lab = mean_lab[rows] + std_lab[rows] * torch.randn_like(std_lab[rows])
                z_unl = mean_unl[order[i]] + std_unl[order[i]] * torch.randn_like(std_unl[order[i]])
                bound_lab = m2.labelled_bound(z_lab, y).mean()
                bound_unl = m2.unlabelled_bound(z_unl)[0].mean()
                logits = m2.classifier(z_lab)
                loss_lab = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                (-bound_lab - bound_unl + cfg.alpha * loss_lab).backward()
                opt.step()
                sums["bound_lab"] += bound_lab.item()
                sums["bound_unl"] += bound_unl.item()
                sums["loss_lab"] += loss_lab.item()
                sums["train_error"] += (logits.argmax(1) != y).float().mean().item()
            numbers = {k: v / per_epoch for k, v in sums.items()}
            check_finite(**numbers)
            numbers["val_error"] = error_percent(predictor, inputs.data, "val", cfg.val_rows)
            inputs.progress({"epoch": float(epoch), **numbers})
            inputs.log(f"M2 epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in numbers.items()))
        seconds = time.perf_counter() - start

        metrics = {"test_error": error_percent(predictor, inputs.data, "test"),
                   "val_error": error_percent(predictor, inputs.data, "val"),
                   "labels": float(len(split.y_lab)), "train_seconds": seconds}
        inputs.log(f"test error {metrics['test_error']:.2f} % with {len(split.y_lab)} labels")
        notes = [f"M1 {cfg.m1_epochs} epochs, M2 {cfg.epochs} epochs of {per_epoch} steps"]
        return UseOutcome(metrics, predictor.eval().cpu(), {"class_samples": self.class_samples(predictor, cfg.seed)},
                          notes)

    @torch.no_grad()
    def class_samples(self, predictor: LatentClassifierPredictor, seed: int, per_class: int = 10):
        """One row per class y: z2 ~ N(0, I) (the same draws in every row), z1 = mean of p(z1|z2, y),
        x = mean of p(x|z1)."""
        device = next(predictor.parameters()).device
        z2 = torch.randn(per_class, predictor.m2.latent_dim, generator=torch.Generator().manual_seed(seed)).to(device)
        z2 = z2.repeat(CLASSES, 1)  # (K per_class, latent)
        y = torch.arange(CLASSES, device=device).repeat_interleave(per_class)
        z1 = predictor.m2.decode(z2, y)[0]
        return image_grid(torch.sigmoid(predictor.m1.decoder(z1)), nrow=per_class)

    def build(self, config: dict) -> LatentClassifierPredictor:
        return LatentClassifierPredictor(config)
