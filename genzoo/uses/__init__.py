"""The tasks of `genzoo apply TASK` (genzoo/uses/base.py has the contract), by name."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from genzoo.uses.base import PREDICTOR_FILE, Method, Predictor, Use, UseConfig, UseInputs, UseOutcome, save_predictor
from models.base import ConfigError

# task name -> module defining USE (a Use); imported on first use
MODULES = {
    "semi-supervised": "genzoo.uses.semisupervised",
    "inpaint": "genzoo.uses.inpaint",
    "super-resolve": "genzoo.uses.superres",
    "translate": "genzoo.uses.translate",
}
TASKS = tuple(MODULES)
DEFAULT_DATASET = {"semi-supervised": "mnist", "inpaint": "binarized-mnist", "super-resolve": "mnist", "translate": "mnist"}

__all__ = ["DEFAULT_DATASET", "MODULES", "PREDICTOR_FILE", "TASKS", "Method", "Predictor", "Use", "UseConfig", "UseInputs",
           "UseOutcome", "get_use", "load_predictor", "save_predictor"]


def get_use(name: str) -> Use:
    if name not in MODULES:
        raise ConfigError(f"unknown task '{name}' (known: {', '.join(MODULES)})")
    return importlib.import_module(MODULES[name]).USE


def load_predictor(path: str | Path, map_location: str | torch.device = "cpu") -> Predictor:
    """A predictor saved by save_predictor, rebuilt by its method (weights_only: no code runs)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    predictor = get_use(state["task"]).method(state["method"]).build(state["config"])
    predictor.load_state_dict(state["state_dict"])
    return predictor.eval()
