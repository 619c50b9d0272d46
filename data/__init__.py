"""The dataset registry and the one entry point that prepares a dataset.

Built-in datasets are named (`DATASETS`); anything else given to `--datasets`
is a path to the user's own `.npy`/`.npz` file or image folder, whose dataset
name is the file or folder name (`mydata.npy` -> `mydata`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from data import sources, user
from data.errors import DataError
from data.prepare import split, write
from data.prepared import Prepared, load, to_model_space


def _synthetic(name: str):
    def build(n_train: int = 20000, n_val: int = 2500, n_test: int = 2500, seed: int = 0, std: float | None = None, **_):
        default_std = {"ring8": 0.01, "grid25": 0.05}[name]
        return sources.synthetic(name, n_train, n_val, n_test, seed, default_std if std is None else std)
    return build


# name -> (builder(params, folders, download_to) -> Raw, description)
DATASETS: dict[str, tuple[Callable, str]] = {
    "ring8": (lambda p, f, d: _synthetic("ring8")(**p), "8 Gaussians on the unit circle, std 0.01 (2-D)"),
    "grid25": (lambda p, f, d: _synthetic("grid25")(**p), "25 Gaussians on {-4..4}^2, std 0.05 (2-D)"),
    "digits": (lambda p, f, d: sources.digits(), "scikit-learn 8x8 digits, 17 grey levels"),
    "breast-cancer": (lambda p, f, d: sources.breast_cancer(),
                      "scikit-learn breast-cancer table, 569 x 30 features min-max scaled to [0, 1]"),
    "mnist": (lambda p, f, d: sources.mnist_like("mnist", f, d), "MNIST 28x28, 256 grey levels"),
    "fashion-mnist": (lambda p, f, d: sources.mnist_like("fashion-mnist", f, d), "Fashion-MNIST 28x28, 256 grey levels"),
    "binarized-mnist": (lambda p, f, d: sources.binarized_mnist(f, d), "MNIST binarized, fixed Larochelle split"),
    "stacked-mnist": (lambda p, f, d: sources.stacked_mnist(f, d, **p),
                      "Stacked MNIST: 3 random MNIST digits as channels, 1,000 modes"),
}
# datasets built from another dataset's raw files: where to look for (and download) them
RAW_FILES_OF = {"stacked-mnist": "mnist"}

ALLOWED_PARAMS = {
    "ring8": {"n_train", "n_val", "n_test", "seed", "std"},
    "grid25": {"n_train", "n_val", "n_test", "seed", "std"},
    "digits": {"val_size", "test_size", "seed"},
    "breast-cancer": {"val_size", "test_size", "seed"},
    "mnist": {"val_size", "max_examples"},
    "fashion-mnist": {"val_size", "max_examples"},
    "binarized-mnist": {"binarization", "max_examples"},
    "stacked-mnist": {"n_train", "n_val", "n_test", "seed"},
    "user": {"val_size", "test_size", "seed"},
}
SPLIT_DEFAULTS = {"val_size": 0.1, "test_size": 0.1, "seed": 0}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

__all__ = ["DATASETS", "DataError", "Prepared", "dataset_name", "is_builtin", "load", "prepare", "to_model_space"]


def is_builtin(spec: str) -> bool:
    return spec in DATASETS


def dataset_name(spec: str) -> str:
    """Registered-model-safe name of a dataset given by name or path."""
    if is_builtin(spec):
        return spec
    if not any(ch in spec for ch in "/\\.") and not Path(spec).exists():
        raise DataError(f"unknown dataset '{spec}' (known: {', '.join(DATASETS)}; or give a path to a .npy/.npz file or an image folder)")
    path = Path(spec)
    if not path.exists():
        raise DataError(f"dataset path {spec} does not exist")
    name = path.stem if path.is_file() else path.name
    if not NAME_RE.match(name) or name in DATASETS:
        raise DataError(f"dataset file name '{name}' cannot name a dataset (use letters, digits, '-', '_', not a built-in name)")
    return name


def prepare(spec: str, out_dir: str | Path, params: dict | None, project_raw: Path, data_dir: str | None = None) -> dict:
    """Prepare a built-in dataset or a user file into `out_dir`; returns the manifest."""
    params = dict(params or {})
    key = spec if is_builtin(spec) else "user"
    unknown = sorted(set(params) - ALLOWED_PARAMS[key])
    if unknown:
        raise DataError(f"unknown prepare parameter '{unknown[0]}' for dataset {spec} (known: {', '.join(sorted(ALLOWED_PARAMS[key]))})")
    if is_builtin(spec):
        builder, _ = DATASETS[spec]
        raw_name = RAW_FILES_OF.get(spec, spec)
        folders = sources.data_folders(raw_name, data_dir, project_raw)
        raw = builder(params, folders, project_raw / raw_name)
    else:
        raw = user.read(Path(spec))
    split_params = {k: params.get(k, v) for k, v in SPLIT_DEFAULTS.items()}
    splits = split(raw, **split_params)
    if params.get("max_examples"):  # the first N rows of each split (tiny data for tests and trials)
        n = params["max_examples"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"prepare parameter max_examples for {spec} must be a positive integer, got {n!r}")
        splits = {k: (x[:n], None if y is None else y[:n]) for k, (x, y) in splits.items()}
    return write(dataset_name(spec), raw, splits, Path(out_dir), params)
