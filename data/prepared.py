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

    def subset(self, split: str, n: int | None, seed: int) -> torch.Tensor:
        """n rows of `split` drawn without replacement with `seed` (kept in file order), or all rows
        when n is None, 0 or at least the split's size. Evaluation uses this, not the first n rows:
        file order is not random (binarized MNIST's test blocks of 1,000 differ by up to 67 nats; BENCHMARKS.md)."""
        x = self.arrays[split]
        if not n or n >= len(x):
            return to_model_space(x, self.manifest)
        rows = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
        return to_model_space(x[rows], self.manifest)


def to_model_space(x: np.ndarray, manifest: dict) -> torch.Tensor:
    """Stored values -> float tensor: images k/(levels-1) in [0,1], binary {0,1}, points as they are."""
    t = torch.from_numpy(np.asarray(x)).float()
    if manifest["kind"] == "image":
        t = t / (manifest["levels"] - 1)
    return t


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a prepared dataset, without loading its arrays."""
    mf = Path(folder) / "manifest.json"
    if not mf.is_file():
        raise DataError(f"{folder} is not a prepared dataset (no manifest.json); run `genzoo prepare` or `dvc repro`")
    return json.loads(mf.read_text())


def load(folder: str | Path, verify: bool = False) -> Prepared:
    folder = Path(folder)
    manifest = read_manifest(folder)
    arrays = {}
    for fname, digest in manifest["arrays"].items():
        path = folder / fname
        if not path.is_file():
            raise DataError(f"prepared dataset {folder} is missing {fname}")
        if verify and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise DataError(f"{path} does not match the sha256 in its manifest: the prepared data was altered")
        arrays[fname[:-4]] = np.load(path, allow_pickle=False)
    return Prepared(manifest["name"], manifest, arrays)


def rows_for_model(x: np.ndarray, data_shape: tuple[int, ...], kind: str, levels: int, what: str) -> torch.Tensor:
    """A user's array -> model-space tensor, checked against the model's data.

    Rows may be (N, *data_shape) or flattened (N, D). Image rows are integer levels
    0..levels-1 (as stored in the prepared arrays) or floats k/(levels-1) in [0, 1];
    binary rows hold 0/1; points are any finite reals.
    """
    x = np.asarray(x)
    dim = int(np.prod(data_shape))
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what} holds {x.dtype} values; expected numbers")
    if x.ndim < 2 or int(np.prod(x.shape[1:])) != dim or (x.shape[1:] != tuple(data_shape) and x.ndim != 2):
        raise DataError(f"{what} has shape {x.shape}; the model expects rows of shape {tuple(data_shape)} or ({dim},)")
    if not np.isfinite(x).all():
        raise DataError(f"{what} contains NaN or infinite values")
    x = x.reshape(len(x), *data_shape)
    if kind == "binary" and not np.isin(x, (0, 1)).all():
        raise DataError(f"{what} must hold only 0 and 1 for this binary-data model")
    if kind == "image":
        k = x.astype(np.float64) if x.dtype.kind in "biu" else x * (levels - 1)
        if k.min() < 0 or k.max() > levels - 1 or np.abs(k - np.round(k)).max() > 1e-3:
            raise DataError(f"{what} must hold integer levels 0..{levels - 1} (or k/{levels - 1} in [0, 1]) for this model")
        return torch.from_numpy(np.round(k) / (levels - 1)).float()
    return torch.from_numpy(x.astype(np.float32))
