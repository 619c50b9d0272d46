"""`genzoo apply translate`: image-to-image translation, MNIST edge maps -> digits.

Each digit's edge map is made deterministically: the Sobel gradient of its 0..255 grey levels
(exact integer arithmetic, zero padding), thresholded at a magnitude of EDGE_THRESHOLD (in units
of a 0..1 pixel: a full black-to-white step gives 4), so the map is {0, 1} and bytes-equal on every
call. The task is edges2shoes of pix2pix at MNIST scale. Methods (genzoo/uses/conditional_methods.py):

- l1    the pix2pix U-Net trained on L1 alone (the baseline of Isola et al. 2017, Fig. 4 "L1"):
        the per-pixel median, one blurry or washed-out answer.
- gan   pix2pix (Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial
        Networks", arXiv:1611.07004): U-Net generator, conditional PatchGAN, L1 + adversarial with
        lambda_L1 = 100, Adam lr 2e-4, beta1 0.5, dropout as the noise (kept on at test time).
- ddpm  a conditional DDPM (Ho et al. 2020, arXiv:2006.11239) with the edge map as an extra input
        channel (Palette, Saharia et al. 2022, arXiv:2111.05826, for translation; SR3's recipe).

Measures: psnr, evaluator_accuracy, fid, diversity as for super-resolve; consistency is the
fraction of pixels where the output's own edge map differs from the input edge map.
NOTE: pix2pix trains with batch size 1 (or 4) for 200 epochs (edges2shoes: 15 epochs); here
mini-batches of 64 (standard: 1,500 steps, about 2 epochs; the DDPM 1,200), with the networks and
normalisation of genzoo/uses/conditional.py (GroupNorm, 28x28).
"""

from __future__ import annotations

import numpy as np
import torch

from genzoo.uses.base import Use
from genzoo.uses.conditional import ConditionalPredictor, Pairing
from genzoo.uses.conditional_methods import AdversarialMethod, DiffusionMethod, RegressionMethod

EDGE_THRESHOLD = 2.0  # Sobel magnitude, in units of a 0..1 pixel (a full step gives 4)
LEVELS = 255  # the grey levels the gradient is computed on (MNIST's 0..255)


def edges(x: torch.Tensor) -> torch.Tensor:
    """Sobel edge map of digits (n, 1, H, W) in [0, 1] -> (n, 1, H, W) float32 in {0, 1}.

    The pixels are rounded to 0..255 first and the gradient is computed in integers, so the same
    digit gives the same bytes whatever the threads or device."""
    v = np.rint(np.clip(x.detach().cpu().numpy().astype(np.float64), 0, 1) * LEVELS).astype(np.int64)
    p = np.pad(v, ((0, 0), (0, 0), (1, 1), (1, 1)))  # (n, 1, H + 2, W + 2), zero padding
    h, w = v.shape[-2:]
    at = lambda i, j: p[..., i:i + h, j:j + w]  # the neighbour at offset (i - 1, j - 1)
    gx = (at(0, 2) + 2 * at(1, 2) + at(2, 2)) - (at(0, 0) + 2 * at(1, 0) + at(2, 0))
    gy = (at(2, 0) + 2 * at(2, 1) + at(2, 2)) - (at(0, 0) + 2 * at(0, 1) + at(0, 2))
    limit = round(EDGE_THRESHOLD * LEVELS)
    return torch.from_numpy((gx * gx + gy * gy >= limit * limit).astype(np.float32)).to(x.device)


def check_edges(x: np.ndarray) -> torch.Tensor:
    x = np.asarray(x)
    if x.dtype.kind not in "biuf" or x.ndim != 4 or x.shape[1:] != (1, 28, 28):
        raise ValueError(f"translate takes edge maps of shape (n, 1, 28, 28), got {x.dtype} {x.shape}")
    if len(x) == 0 or not np.isin(x, (0, 1)).all():
        raise ValueError("translate takes a non-empty array of edge maps holding only 0 and 1")
    return torch.as_tensor(x, dtype=torch.float32)


def consistency(outputs: torch.Tensor, edge_maps: torch.Tensor) -> float:
    """Fraction of pixels where the outputs' edge maps differ from the given ones."""
    return float((edges(outputs) != edge_maps.to(outputs.device)).float().mean())


TRANSLATE = Pairing("translate", (1, 28, 28), edges, lambda e: e, check_edges, consistency)


class TranslatePredictor(ConditionalPredictor):
    pairing = TRANSLATE

    def predict(self, x: np.ndarray, seed: int = 0) -> np.ndarray:
        """Edge maps (n, 1, 28, 28) of 0s and 1s (translate.edges of a digit) -> digits (n, 1, 28, 28)
        float32 in [0, 1]. For gan and ddpm, another `seed` gives another draw; l1 ignores it."""
        return super().predict(x, seed)


class L1(RegressionMethod):
    name, loss, Predictor = "l1", "l1", TranslatePredictor
    summary = "the pix2pix U-Net on L1 alone (baseline)"


class GAN(AdversarialMethod):
    name, Predictor = "gan", TranslatePredictor
    summary = "pix2pix: U-Net + conditional PatchGAN, L1 (lambda 100) + adversarial, dropout as the noise"


class DDPM(DiffusionMethod):
    name, Predictor = "ddpm", TranslatePredictor
    summary = "conditional DDPM: the edge map as an extra input channel"


COLUMNS = (("psnr", "PSNR (dB)"), ("evaluator_accuracy", "evaluator accuracy"), ("fid", "FID (evaluator)"),
           ("diversity", "diversity (pixel std)"), ("consistency", "consistency (edge pixels differing)"),
           ("train_seconds", "train s"))

USE = Use(
    name="translate",
    summary="MNIST digits from their Sobel edge maps (edges -> digits): one median (l1) or samples (gan, ddpm)",
    methods={m.name: m for m in (L1(), GAN(), DDPM())},
    columns=COLUMNS,
    refusals={
        "made": "genzoo's MADE is unconditional, and an edge map is a thresholded gradient of the pixels, not a "
                "subset of them, so it cannot be imposed in its autoregressive order.",
        "pixelcnn": "genzoo's PixelCNN is unconditional, and an edge map (a thresholded gradient) cannot be "
                    "imposed pixel by pixel in its raster order.",
        "realnvp": "genzoo's RealNVP is unconditional, and conditioning its density on a thresholded gradient "
                   "would need a constrained-posterior sampler it does not have.",
        "vae": "genzoo's VAE is unconditional (not a conditional VAE): its decoder has no input to condition a "
               "28x28 output on.",
        "rbm": "genzoo's RBM can clamp known pixels, but an edge map fixes no pixel values: there is nothing to "
               "clamp, and it has no conditioning input.",
        "gsn": "genzoo's GSN chain can clamp known pixels, but an edge map fixes no pixel values: there is "
               "nothing to clamp, and it has no conditioning input.",
        "gmmn": "genzoo's GMMN maps noise alone to images: it has no input to condition a 28x28 output on.",
    },
)
