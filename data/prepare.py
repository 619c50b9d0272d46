"""Turn a raw dataset into versioned arrays with fixed splits and a manifest.

Layout of a prepared dataset folder (a DVC output, never in git):
    train.npy, val.npy, test.npy          examples, stored dtype (uint8 for images)
    train_labels.npy, ...                 where the source has labels
    manifest.json                         source, sha256 of raw files and arrays, shapes, ranges
                                          (+ "modes": K where labels are mode ids 0..K-1, e.g. stacked-mnist)

The folder is written to a temporary sibling and renamed into place, so a failed
preparation leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from data.errors import DataError
from data.sources import Raw

SPLITS = ("train", "val", "test")


def split(raw: Raw, val_size: int | float, test_size: int | float, seed: int) -> dict[str, tuple[np.ndarray, Any]]:
    """Fixed splits: given splits are kept; 'all' is shuffled with `seed` into train/val/test;
    a source with train/test only gets its validation set from the end of train (MNIST's 50k/10k)."""
    s = dict(raw.splits)
    if "all" in s:
        x, y = s.pop("all")
        n = len(x)
        n_val, n_test = _count(val_size, n, "val_size"), _count(test_size, n, "test_size")
        if n - n_val - n_test < 1:
            raise DataError(f"val_size + test_size leave no training examples out of {n}")
        order = np.random.default_rng(seed).permutation(n)
        parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
        s = {k: (x[idx], None if y is None else y[idx]) for k, idx in parts.items()}
    elif "val" not in s:
        x, y = s["train"]
        n_val = _count(val_size, len(x), "val_size")
        s["train"], s["val"] = (x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:])
    return {k: s[k] for k in SPLITS}


def _count(size: int | float, n: int, key: str) -> int:
    count = int(round(size * n)) if isinstance(size, float) and size < 1 else int(size)
    if count < 1 or count >= n:
        raise DataError(f"{key}={size} gives {count} examples out of {n}; need at least 1 and fewer than {n}")
    return count


def validate(name: str, splits: dict[str, tuple[np.ndarray, Any]], kind: str) -> None:
    shapes = {x.shape[1:] for x, _ in splits.values()}
    if len(shapes) != 1:
        raise DataError(f"dataset {name}: splits have different example shapes {sorted(shapes)}")
    for split_name, (x, y) in splits.items():
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise DataError(f"dataset {name}: the {split_name} split contains NaN or infinite values")
        if kind == "binary" and not np.isin(x, (0, 1)).all():
            raise DataError(f"dataset {name}: binary data must hold only 0 and 1")
        if y is not None and len(y) != len(x):
            raise DataError(f"dataset {name}: {len(x)} examples but {len(y)} labels in the {split_name} split")


def write(name: str, raw: Raw, splits: dict[str, tuple[np.ndarray, Any]], out_dir: Path, params: dict) -> dict:
    """Write arrays and manifest atomically into out_dir; returns the manifest."""
    validate(name, splits, raw.kind)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        arrays = {}
        for split_name, (x, y) in splits.items():
            arrays[f"{split_name}.npy"] = x
            if y is not None:
                arrays[f"{split_name}_labels.npy"] = y
        for fname, arr in arrays.items():
            np.save(tmp / fname, np.ascontiguousarray(arr))
        x0 = splits["train"][0]
        manifest = {
            "name": name,
            "source": raw.source,
            "kind": raw.kind,
            "levels": raw.levels,
            "shape": list(x0.shape[1:]),
            "dtype": str(x0.dtype),
            "value_range": [float(min(x.min() for x, _ in splits.values())), float(max(x.max() for x, _ in splits.values()))],
            "splits": {k: int(len(x)) for k, (x, _) in splits.items()},
            "params": params,
            "raw_files": raw.raw_files,
            "arrays": {fname: hashlib.sha256((tmp / fname).read_bytes()).hexdigest() for fname in sorted(arrays)},
        }
        if raw.modes:  # only datasets with countable modes carry the field (other manifests keep their hash)
            manifest["modes"] = raw.modes
        manifest["hash"] = manifest_hash(manifest)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.replace(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def manifest_hash(manifest: dict) -> str:
    """A short content hash of the data version: the array digests plus the manifest fields."""
    body = {k: v for k, v in manifest.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
