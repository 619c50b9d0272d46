"""Inpainting (issue 12, "missing data"): complete images with missing pixels, and tables with missing entries.

Images (mnist, binarized-mnist) with a `bottom`, `centre`, `random50` or `random80` mask
(genzoo/uses/inpaint_common.py defines them and the measures: accuracy of the evaluator on the
completed images, PSNR on the missing pixels, diversity of several completions of one input, and
the exact conditional NLL where a family has one). A generative method gets its family's model
already trained on the dataset (`inputs.family_model`) and completes the image its own way
(genzoo/uses/inpaint_samplers.py has the algorithms and their papers):
- made, pixelcnn: autoregressive conditional sampling, exact for the bottom half (and the exact
  conditional NLL there), sampling-importance-resampling of `proposals` draws for the other masks;
- rbm: clamped block Gibbs (Hinton 2002's model, observed visibles clamped);
- gsn: the GSN chain with the observed pixels clamped (Bengio et al. 2014, arXiv:1306.1091);
- vae: importance-weighted imputation, MIWAE-style (Mattei & Frellsen 2019, arXiv:1812.02633);
- ddpm: RePaint replacement sampling with optional resampling (Lugmayr et al. 2022, arXiv:2201.09865).
Baselines: `mean` (the training set's pixel means) and `regression` (an MLP per mask, trained with
MSE to predict the missing pixels from the observed ones and the mask).

Tables (breast-cancer, 20 % of entries missing completely at random; genzoo/uses/inpaint_tabular.py):
`gain` (Yoon et al. 2018, arXiv:1806.02920, as its reference code), `iterative` (scikit-learn's
IterativeImputer) and `mean` (column means), scored by the RMSE of the missing entries.

NOTE: for a dataset without labels (binarized-mnist) the accuracy is the agreement with the
evaluator's class of the complete true image (each outcome's notes say so).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

import models
from genzoo.uses.base import Method, Predictor, Use, UseInputs, UseOutcome
from genzoo.uses.inpaint_common import MASKS, InpaintConfig, check_images, completed, evaluate_images, make_mask
from genzoo.uses.inpaint_samplers import SAMPLERS
from genzoo.uses.inpaint_tabular import (GAINConfig, GAINTable, IterativeConfig, IterativeTable, MeanTable, TableConfig,
                                         evaluate_table, fit_gain, fit_iterative, fit_mean)
from genzoo.uses.inpaint_regression import RegressionConfig, RegressionInpainter, train_regression
from models.base import ConfigError

IMAGES = ("mnist", "binarized-mnist")
TABLES = ("breast-cancer",)


# ----------------------------------------------------------------------------- generative families
@dataclasses.dataclass
class AutoregressiveConfig(InpaintConfig):
    proposals: int = 8  # masks other than the bottom half: proposals per input, one resampled by weight (1: none)


@dataclasses.dataclass
class RBMInpaintConfig(InpaintConfig):
    gibbs_steps: int = 200  # block-Gibbs sweeps with the observed visibles clamped


@dataclasses.dataclass
class GSNInpaintConfig(InpaintConfig):
    chain_steps: int = 100  # GSN chain steps with the observed pixels clamped


@dataclasses.dataclass
class VAEInpaintConfig(InpaintConfig):
    importance_samples: int = 100  # z_k ~ q(z | x_fill) per input
    iterations: int = 3  # MIWAE single imputations fed back to the encoder before the final draw


@dataclasses.dataclass
class DDPMInpaintConfig(InpaintConfig):
    resample: int = 1  # RePaint's U: each reverse step repeated U times, jumping back in between (1: none)


class FamilyInpainter(Predictor):
    """A trained family model and its conditional sampler.

    predict(x): x (n, 1, H, W) floats in [0, 1] (the dataset's values: levels k/255 for mnist, 0/1
    for binarized-mnist), NaN where missing -> (n, 1, H, W) completions in [0, 1], one per image,
    the observed pixels unchanged. Seeded by the settings' seed: the same input gives the same output.
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.model = models.build(config["family"], config["model"]).eval()
        self.settings = FAMILY_METHODS[config["family"]].Config.from_dict(config["settings"])

    def predict(self, x: np.ndarray) -> np.ndarray:
        values, missing = check_images(x, self.model.config.data_shape)
        sampler = SAMPLERS[self.config["family"]][0]
        g = torch.Generator().manual_seed(self.settings.seed)
        out = completed(lambda v, m: sampler(self.model, v, m, self.settings, g), values, missing,
                        self.settings.batch_size)
        return out.numpy()


class FamilyMethod(Method):
    """Inpainting with the trained model of `family` (inputs.family_model)."""

    datasets = IMAGES

    def run(self, inputs: UseInputs) -> UseOutcome:
        model, cfg = inputs.family_model, inputs.config
        if model is None or model.name != self.family:
            raise ConfigError(f"inpaint method {self.name} needs a trained {self.family} model as inputs.family_model, "
                              f"got {None if model is None else model.name}")
        model.eval()
        sampler, cond_nll = SAMPLERS[self.family]
        g = torch.Generator().manual_seed(cfg.seed)
        exact = None if cond_nll is None else (lambda v, m: cond_nll(model, v, m))
        metrics, pictures, notes = evaluate_images(lambda v, m: sampler(model, v, m, cfg, g), inputs.data,
                                                   inputs.evaluator, cfg, exact, inputs.log, inputs.progress)
        predictor = self.build({"family": self.family, "model": model.config.to_dict(), "settings": cfg.to_dict()})
        predictor.model.load_state_dict(model.state_dict())
        return UseOutcome(metrics, predictor.eval(), pictures, notes + list(self.notes))

    def build(self, config: dict[str, Any]) -> Predictor:
        return FamilyInpainter(config)


class MADEMethod(FamilyMethod):
    name, family, Config, datasets = "made", "made", AutoregressiveConfig, ("binarized-mnist",)
    summary = "MADE: exact conditional sampling of the bottom half; SIR of autoregressive proposals otherwise"
    notes = ("made: bottom half exact (ancestral sampling, exact cond_nll); other masks: sampling-importance-"
             "resampling of `proposals` draws that condition on the observed pixels before each drawn one",)


class PixelCNNMethod(FamilyMethod):
    name, family, Config = "pixelcnn", "pixelcnn", AutoregressiveConfig
    summary = "PixelCNN: exact conditional sampling of the bottom half; SIR of raster-order proposals otherwise"
    notes = ("pixelcnn: bottom half exact (ancestral sampling in raster order, exact cond_nll); other masks: "
             "sampling-importance-resampling of `proposals` raster-order draws",)


class RBMMethod(FamilyMethod):
    name, family, Config, datasets = "rbm", "rbm", RBMInpaintConfig, ("binarized-mnist",)
    summary = "RBM: block Gibbs with the observed visibles clamped"
    notes = ("rbm: completion = the binary visible state after `gibbs_steps` clamped Gibbs sweeps",)


class GSNMethod(FamilyMethod):
    name, family, Config = "gsn", "gsn", GSNInpaintConfig
    summary = "GSN: the corrupt-denoise chain with the observed pixels clamped"
    notes = ("gsn: completion = the chain state after `chain_steps` clamped steps",)


class VAEMethod(FamilyMethod):
    name, family, Config = "vae", "vae", VAEInpaintConfig
    summary = "VAE: MIWAE-style importance-weighted imputation (SIR over q(z | current imputation))"
    notes = ("vae: completion = decoder mean of one importance-resampled z (the vae family's way of showing "
             "samples), after `iterations` weighted-mean imputations fed back to the encoder",)


class DDPMMethod(FamilyMethod):
    name, family, Config = "ddpm", "ddpm", DDPMInpaintConfig
    summary = "DDPM: RePaint replacement sampling (optional resampling)"
    notes = ("ddpm: RePaint with U = `resample` repeats per reverse step, on the model's sampling timesteps",)


FAMILY_METHODS: dict[str, type[FamilyMethod]] = {
    cls.family: cls for cls in (MADEMethod, PixelCNNMethod, RBMMethod, GSNMethod, VAEMethod, DDPMMethod)}


# ----------------------------------------------------------------------------- baselines
@dataclasses.dataclass
class MeanConfig(InpaintConfig):
    miss_rate: float = 0.2  # tables: each entry missing completely at random with this probability


class MeanImage(Predictor):
    """predict(x (n, 1, H, W) in [0, 1], NaN where missing) -> the missing pixels set to the training mean image."""

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.register_buffer("mean", torch.zeros(config["shape"]))

    def complete(self, values: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
        return torch.where(missing, self.mean.expand_as(values), values)

    def predict(self, x: np.ndarray) -> np.ndarray:
        values, missing = check_images(x, tuple(self.config["shape"]))
        return self.complete(values, missing).numpy()


class MeanMethod(Method):
    name, Config, generative = "mean", MeanConfig, False
    datasets = IMAGES + TABLES
    summary = "pixel (or column) means of the training set"

    def run(self, inputs: UseInputs) -> UseOutcome:
        cfg, data = inputs.config, inputs.data
        if data.kind == "points":
            table = TableConfig(seed=cfg.seed, miss_rate=cfg.miss_rate, mask_seed=cfg.mask_seed)
            metrics, predictor, pictures = evaluate_table(fit_mean, data, table, inputs.log, inputs.progress)
            return UseOutcome(metrics, predictor, pictures, [TABLE_NOTE])
        predictor = MeanImage({"shape": list(data.shape), "settings": cfg.to_dict()})
        predictor.mean.copy_(data.tensor("train").mean(0))
        metrics, pictures, notes = evaluate_images(predictor.complete, data, inputs.evaluator, cfg,
                                                   log=inputs.log, progress=inputs.progress)
        return UseOutcome(metrics, predictor, pictures, notes)

    def build(self, config: dict[str, Any]) -> Predictor:
        return MeanTable(config) if "dim" in config else MeanImage(config)


class RegressionMethod(Method):
    name, Config, generative, datasets = "regression", RegressionConfig, False, IMAGES
    summary = "an MLP per mask, trained with MSE to predict the missing pixels from the observed ones"

    def run(self, inputs: UseInputs) -> UseOutcome:
        cfg = inputs.config
        predictor = train_regression(inputs.data, cfg, inputs.device, inputs.log, inputs.progress)
        metrics, pictures, notes = evaluate_images(predictor.complete, inputs.data, inputs.evaluator, cfg,
                                                   log=inputs.log, progress=inputs.progress)
        return UseOutcome(metrics, predictor.cpu().eval(), pictures, notes)

    def build(self, config: dict[str, Any]) -> Predictor:
        return RegressionInpainter(config)


TABLE_NOTE = ("breast-cancer: 20 % of entries missing completely at random; fitted on the train split's observed "
              "entries; rmse on the test split's missing entries, rmse_fit on the train split's (GAIN's protocol)")


class TableMethod(Method):
    datasets, generative = TABLES, False

    def run(self, inputs: UseInputs) -> UseOutcome:
        metrics, predictor, pictures = evaluate_table(self.fit, inputs.data, inputs.config, inputs.log, inputs.progress)
        return UseOutcome(metrics, predictor, pictures, [TABLE_NOTE])


class GAINMethod(TableMethod):
    name, Config, generative = "gain", GAINConfig, True
    summary = "GAIN: generator + discriminator with the hint mechanism (Yoon et al. 2018)"
    fit = staticmethod(fit_gain)

    def build(self, config: dict[str, Any]) -> Predictor:
        return GAINTable(config)


class IterativeMethod(TableMethod):
    name, Config = "iterative", IterativeConfig
    summary = "scikit-learn IterativeImputer (BayesianRidge, 10 rounds)"
    fit = staticmethod(fit_iterative)

    def build(self, config: dict[str, Any]) -> Predictor:
        return IterativeTable(config)


IMPLICIT = "an implicit model: no conditional to sample and no encoder to infer the missing pixels from"
USE = Use(
    name="inpaint",
    summary="fill in missing pixels (bottom half, centre square, 50 % / 80 % random) and missing table entries",
    methods={m.name: m for m in (MeanMethod(), RegressionMethod(), *(cls() for cls in FAMILY_METHODS.values()),
                                 GAINMethod(), IterativeMethod())},
    columns=tuple((f"{mask}.{measure}", f"{mask} {label}") for mask in MASKS for measure, label in (
        ("accuracy", "acc"), ("psnr", "PSNR"), ("diversity", "div"), ("cond_nll", "cond NLL")))
    + (("mcar20.rmse", "MCAR 20% RMSE"), ("mcar20.rmse_fit", "MCAR 20% RMSE (fit rows)")),
    refusals={
        "gan": IMPLICIT,
        "gmmn": IMPLICIT,
        "realnvp": ("its exact density does not give the conditional of the missing pixels (the couplings mix "
                    "observed and missing ones, so it needs MCMC or latent optimisation through the flow on "
                    "dequantised pixels), which genzoo does not implement"),
    },
)

__all__ = ["USE", "MASKS", "make_mask", "FAMILY_METHODS"]
