"""The measures of `super-resolve` and `translate` (pure torch/numpy) and their picture.

- psnr                 10 log10(1 / MSE) per image (pixel values in [0, 1]), averaged over images
- diversity            pixel standard deviation across k outputs of the same input, averaged
- evaluator_accuracy   the evaluator's accuracy on the outputs against the true labels of the inputs
- fid                  Frechet distance of the evaluator's features (genzoo.evaluation.quality) between
                       the outputs and the real test images
- consistency          how far the input made back from the output is from the given input (per task)
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable

import numpy as np
import torch

from genzoo.evaluation.networks import accuracy, extract_features
from genzoo.evaluation.quality import SmallSampleWarning, frechet_distance

MSE_FLOOR = 1e-10  # an exact reconstruction counts as 100 dB, so the mean stays finite


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over images of 10 log10(1 / MSE(x_i, y_i)), x and y (n, C, H, W) in [0, 1]."""
    if x.shape != y.shape:
        raise ValueError(f"psnr needs images of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = ((x.double() - y.double()) ** 2).flatten(1).mean(1).clamp_min(MSE_FLOOR)  # (n,)
    return float((10 * torch.log10(1 / mse)).mean())


def diversity(samples: torch.Tensor) -> float:
    """Mean pixel standard deviation (population, over the first axis) of k outputs (k, n, C, H, W)."""
    if samples.dim() != 5 or len(samples) < 2:
        raise ValueError(f"diversity needs k >= 2 outputs of shape (k, n, C, H, W), got {tuple(samples.shape)}")
    return float(samples.double().std(0, unbiased=False).mean())


def fid(evaluator: torch.nn.Module, outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """FID on evaluator features (on the CPU); the small-sample warning is the caller's note, not a surprise each run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        return frechet_distance(extract_features(evaluator, outputs.cpu()), extract_features(evaluator, reference.cpu()))


def measure(generate: Callable[[torch.Tensor, int], torch.Tensor], inputs: torch.Tensor, truth: torch.Tensor,
            labels: np.ndarray, consistency: Callable[[torch.Tensor, torch.Tensor], float],
            evaluator: torch.nn.Module | None = None, reference: torch.Tensor | None = None,
            samples_per_input: int = 4, diversity_inputs: int = 100) -> dict[str, float]:
    """The table's numbers for `generate(inputs, seed) -> outputs (n, 1, 28, 28) in [0, 1]`.

    Seed 0 gives the outputs that psnr, accuracy, FID and consistency judge; seeds 0..k-1 on the
    first `diversity_inputs` inputs give the diversity. Accuracy and FID need the evaluator (FID
    also the real `reference` images)."""
    outputs = generate(inputs, 0)
    metrics = {"psnr": psnr(outputs, truth), "consistency": consistency(outputs, inputs)}
    few = inputs[:diversity_inputs]
    metrics["diversity"] = diversity(torch.stack([outputs[:len(few)]] + [generate(few, s)
                                                                        for s in range(1, samples_per_input)]))
    if evaluator is not None:
        evaluator = copy.deepcopy(evaluator).cpu()  # judged on the CPU, wherever the caller keeps it
        metrics["evaluator_accuracy"] = accuracy(evaluator, outputs.cpu(), labels)
        if reference is not None:
            metrics["fid"] = fid(evaluator, outputs, reference)
    return metrics


def tile(columns: list[torch.Tensor], pad: int = 1) -> np.ndarray:
    """Columns of images, each (n, 1, h, w) in [0, 1] (same n, h, w) -> one (H, W) grid: row i holds
    the i-th image of every column, separated by `pad` white pixels."""
    n, _, h, w = columns[0].shape
    grid = np.ones((n * (h + pad) + pad, len(columns) * (w + pad) + pad), dtype=np.float32)
    for j, col in enumerate(columns):
        if tuple(col.shape) != (n, 1, h, w):
            raise ValueError(f"picture column {j} has shape {tuple(col.shape)}, expected {(n, 1, h, w)}")
        for i, img in enumerate(col.detach().cpu().clamp(0, 1).numpy()):
            grid[pad + i * (h + pad): pad + i * (h + pad) + h, pad + j * (w + pad): pad + j * (w + pad) + w] = img[0]
    return grid
