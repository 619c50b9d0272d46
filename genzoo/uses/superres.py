"""`genzoo apply super-resolve`: a 28x28 MNIST digit from its 7x7 version (4x4 average pooling).

Many digits share one 7x7 image, so the task is to draw from p(digit | low-res), not to compute
one answer. The methods (genzoo/uses/conditional_methods.py, networks in genzoo/uses/conditional.py):

- mse   a U-Net regression on pixel MSE (the baseline): the conditional mean, one blurry average
        (SRResNet-MSE of Ledig et al. 2017 plays this role there).
- gan   SRGAN (Ledig et al. 2017, "Photo-Realistic Single Image Super-Resolution Using a Generative
        Adversarial Network", arXiv:1609.04802): adversarial + content loss, here with pix2pix's
        conditional PatchGAN and U-Net (Isola et al. 2017, arXiv:1611.07004) and the generator's
        decoder dropout (kept on at test time) plus a bottleneck noise map, so one input gives
        several outputs.
- ddpm  a conditional DDPM (Ho et al. 2020, arXiv:2006.11239) with the upsampled low-res image as
        an extra input channel, as in SR3 (Saharia et al. 2021, arXiv:2104.07636).

Measures: psnr (vs the truth), evaluator_accuracy (the evaluator's accuracy on the outputs against
the digits' labels), fid (evaluator features, outputs vs the real test digits), diversity (pixel std
across k outputs of one input; 0 for mse), consistency (MSE between the outputs' 4x4 averages and
the input: every output should be a digit with that low-res image).
NOTE: SRGAN's residual generator, sub-pixel upsampling and VGG loss are replaced by the U-Net
(the low-res input enters upsampled by pixel replication) and a pixel content loss (`content:
features` uses the evaluator's features instead of VGG's); SRGAN has no noise input (its
generator is deterministic): the noise map and dropout are the deviation that makes it sample.
NOTE: the upsampled input is nearest-neighbour (each 7x7 value repeated 4x4), SR3's is bicubic:
the network sees the exact low-res values either way.
NOTE: budgets are CPU-sized (standard: 1,500 steps of 64 digits, about 2 epochs; the DDPM 1,200
steps); SRGAN trains 10^5 + 10^5 steps on ImageNet, SR3 10^6.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from genzoo.uses.base import Use
from genzoo.uses.conditional import ConditionalPredictor, Pairing
from genzoo.uses.conditional_methods import AdversarialMethod, DiffusionMethod, RegressionMethod

FACTOR = 4  # 28x28 -> 7x7


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Exact 4x4 average pooling: (n, 1, 28, 28) -> (n, 1, 7, 7)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // FACTOR, FACTOR, w // FACTOR, FACTOR).mean((3, 5))


def upsample(low: torch.Tensor) -> torch.Tensor:
    """Pixel replication: (n, 1, 7, 7) -> (n, 1, 28, 28), each value repeated over its 4x4 block."""
    return low.repeat_interleave(FACTOR, -2).repeat_interleave(FACTOR, -1)


def check_low_res(x: np.ndarray) -> torch.Tensor:
    x = np.asarray(x)
    if x.dtype.kind not in "biuf" or x.ndim != 4 or x.shape[1:] != (1, 7, 7):
        raise ValueError(f"super-resolve takes low-res digits of shape (n, 1, 7, 7), got {x.dtype} {x.shape}")
    if len(x) == 0 or not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("super-resolve takes a non-empty array of finite values in [0, 1] (4x4 averages of 0..1 pixels)")
    return torch.as_tensor(x, dtype=torch.float32)


def consistency(outputs: torch.Tensor, low: torch.Tensor) -> float:
    """MSE between the outputs' 4x4 averages and the low-res input."""
    return float(F.mse_loss(downsample(outputs).double(), low.to(outputs.device).double()))


SUPERRES = Pairing("super-resolve", (1, 7, 7), downsample, upsample, check_low_res, consistency)


class SuperResPredictor(ConditionalPredictor):
    pairing = SUPERRES

    def predict(self, x: np.ndarray, seed: int = 0) -> np.ndarray:
        """Low-res digits (n, 1, 7, 7) in [0, 1] (4x4 averages of a digit's 0..1 pixels) -> 28x28 digits
        (n, 1, 28, 28) float32 in [0, 1]. For gan and ddpm, another `seed` gives another plausible digit;
        mse ignores it (one output per input)."""
        return super().predict(x, seed)


class MSE(RegressionMethod):
    name, loss, Predictor = "mse", "mse", SuperResPredictor
    summary = "U-Net regression on pixel MSE: the conditional mean (baseline)"


class GAN(AdversarialMethod):
    name, Predictor = "gan", SuperResPredictor
    summary = "SRGAN-style: U-Net + conditional PatchGAN, content + adversarial loss, dropout/noise sampling"


class DDPM(DiffusionMethod):
    name, Predictor = "ddpm", SuperResPredictor
    summary = "conditional DDPM (SR3-style): the upsampled low-res image as an extra input channel"


COLUMNS = (("psnr", "PSNR (dB)"), ("evaluator_accuracy", "evaluator accuracy"), ("fid", "FID (evaluator)"),
           ("diversity", "diversity (pixel std)"), ("consistency", "consistency (MSE of 4x4 means)"),
           ("train_seconds", "train s"))

USE = Use(
    name="super-resolve",
    summary="28x28 MNIST digits from their 7x7 4x4-average versions: one average (mse) or samples (gan, ddpm)",
    methods={m.name: m for m in (MSE(), GAN(), DDPM())},
    columns=COLUMNS,
    refusals={
        "made": "genzoo's MADE is unconditional, and the 7x7 input fixes sums of 4x4 blocks, which cannot be "
                "imposed one pixel at a time in its autoregressive order.",
        "pixelcnn": "genzoo's PixelCNN is unconditional, and a 4x4-average constraint cannot be imposed pixel by "
                    "pixel in its raster order.",
        "realnvp": "genzoo's RealNVP is unconditional, and sampling its density under a 4x4-average constraint "
                   "would need a constrained-posterior sampler it does not have.",
        "vae": "genzoo's VAE is unconditional (not a conditional VAE): its decoder has no input to condition a "
               "28x28 output on.",
        "rbm": "genzoo's RBM can clamp known pixels, but a 7x7 input fixes 4x4 averages, not pixels: there is "
               "nothing to clamp, and it has no conditioning input.",
        "gsn": "genzoo's GSN chain can clamp known pixels, but a 7x7 input fixes 4x4 averages, not pixels: there "
               "is nothing to clamp, and it has no conditioning input.",
        "gmmn": "genzoo's GMMN maps noise alone to images: it has no input to condition a 28x28 output on.",
    },
)
