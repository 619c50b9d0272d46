"""The family registry: the one source of truth for which families exist.

The CLI's choices, the contract tests' parametrisation and the pipeline all read
`FAMILIES`. Adding a family = one file in models/ plus one line here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.base import ConfigError, FamilyConfig, GenerativeModel, NoLikelihood
from models.gan import GAN
from models.gmmn import GMMN
from models.gsn import GSN
from models.made import MADE
from models.pixelcnn import PixelCNN
from models.rbm import RBM
from models.realnvp import RealNVP
from models.ddpm import DDPM
from models.vae import VAE

FAMILIES: dict[str, type[GenerativeModel]] = {cls.name: cls for cls in (MADE, PixelCNN, RealNVP, VAE, RBM, GSN, GAN, GMMN, DDPM)}

__all__ = ["FAMILIES", "ConfigError", "FamilyConfig", "GenerativeModel", "NoLikelihood", "get_family", "build", "load"]


def get_family(name: str) -> type[GenerativeModel]:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown family '{name}' (known: {', '.join(FAMILIES)})") from None


def build(name: str, config: dict[str, Any]) -> GenerativeModel:
    """A fresh model of family `name` from a plain config dict (unknown keys rejected)."""
    cls = get_family(name)
    return cls(cls.Config.from_dict(config))


def from_state(state: dict[str, Any]) -> GenerativeModel:
    model = build(state["family"], state["config"])
    model.load_state_dict(state["state_dict"])
    return model


def load(path: str | Path, map_location: str | torch.device = "cpu") -> GenerativeModel:
    """Load weights plus config written by `GenerativeModel.save` (weights_only: no code runs)."""
    return from_state(torch.load(path, map_location=map_location, weights_only=True))
