"""Read a prepared dataset back (and check it against its manifest)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from data.errors import DataError


@dataclasses.dataclass
class Prepared:
    name: str
    manifest: dict
    arrays: dict[str, np.ndarray]  # 'train', 'val', 'test' (+ '*_labels')

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["shape"])

    @property
    def levels(self) -> int:
        return self.manifest["levels"]

    def tensor(self, split: str, limit: int | None = None) -> torch.Tensor:
        return to_model_space(self.arrays[split][:limit], self.manifest)


def to_model_space(x: np.ndarray, manifest: dict) -> torch.Tensor:
    """Stored values -> float tensor: images k/(levels-1) in [0,1], binary {0,1}, points as they are."""
    t = torch.from_numpy(np.asarray(x)).float()
    if manifest["kind"] == "image":
        t = t / (manifest["levels"] - 1)
    return t


def load(folder: str | Path, verify: bool = False) -> Prepared:
    folder = Path(folder)
    mf = folder / "manifest.json"
    if not mf.is_file():
        raise DataError(f"{folder} is not a prepared dataset (no manifest.json); run `genzoo prepare` or `dvc repro`")
    manifest = json.loads(mf.read_text())
    arrays = {}
    for fname, digest in manifest["arrays"].items():
        path = folder / fname
        if not path.is_file():
            raise DataError(f"prepared dataset {folder} is missing {fname}")
        if verify and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise DataError(f"{path} does not match the sha256 in its manifest: the prepared data was altered")
        arrays[fname[:-4]] = np.load(path, allow_pickle=False)
    return Prepared(manifest["name"], manifest, arrays)
