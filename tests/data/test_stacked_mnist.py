"""Stacked MNIST (three MNIST digits as channels, 1,000 modes): stacks, labels, disjoint splits, bad params."""

from __future__ import annotations

import numpy as np
import pytest

import data
from data import sources
from data.errors import DataError

SMALL = {"n_train": 300, "n_val": 120, "n_test": 120, "seed": 5}


def _pools(raw_data_dir):
    """MNIST's own images and labels of the three source pools, keyed by image bytes."""
    idx = sources._idx_images("mnist", [raw_data_dir / "mnist"], raw_data_dir / "unused")
    pools = {split: (idx[prefix][0][rows], idx[prefix][1][rows]) for split, prefix, rows in sources.STACKED_POOLS}
    return {split: {img.tobytes(): int(label) for img, label in zip(*pool)} for split, pool in pools.items()}


def test_stacks_labels_and_disjoint_source_images(tmp_path, raw_data_dir):
    m = data.prepare("stacked-mnist", tmp_path / "s", SMALL, tmp_path / "raw", str(raw_data_dir))
    d = data.load(tmp_path / "s", verify=True)
    assert m["kind"] == "image" and m["levels"] == 256 and m["modes"] == 1000 and m["shape"] == [3, 28, 28]
    assert m["splits"] == {"train": 300, "val": 120, "test": 120} and set(m["raw_files"]) == set(sources.MNIST_FILES)
    assert "stacked MNIST" in m["source"]
    pools = _pools(raw_data_dir)
    assert [len(p) for p in pools.values()][2] > 9000  # t10k, nearly all images distinct
    seen = {}
    for split in ("train", "val", "test"):
        x, y = d.arrays[split], d.arrays[f"{split}_labels"]
        assert x.dtype == np.uint8 and x.shape == (SMALL[f"n_{split}"], 3, 28, 28)
        assert y.dtype == np.int64 and y.min() >= 0 and y.max() <= 999
        digits = np.array([[pools[split][x[i, c].tobytes()] for c in range(3)] for i in range(len(x))])  # KeyError: foreign image
        assert np.array_equal(y, 100 * digits[:, 0] + 10 * digits[:, 1] + digits[:, 2])
        seen[split] = {x[i, c].tobytes() for i in range(len(x)) for c in range(3)}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert len(np.unique(d.arrays["train_labels"])) > 200  # 300 draws spread over the 1,000 modes
    again = data.prepare("stacked-mnist", tmp_path / "again", SMALL, tmp_path / "raw", str(raw_data_dir))
    assert again["hash"] == m["hash"]  # same seed, same data version


@pytest.mark.parametrize("params,match", [
    ({"n_train": 10, "colour": True}, "unknown prepare parameter 'colour' for dataset stacked-mnist"),
    ({"n_train": 0}, "n_train must be an integer >= 1, got 0"),
    ({"n_val": -5}, "n_val must be an integer >= 1"),
    ({"n_test": 2.5}, "n_test must be an integer >= 1, got 2.5"),
    ({"seed": -1}, "seed must be an integer >= 0"),
])
def test_bad_prepare_params_are_named(tmp_path, params, match):
    with pytest.raises(DataError, match=match):
        data.prepare("stacked-mnist", tmp_path / "s", params, tmp_path / "raw", None)
    assert not (tmp_path / "s").exists()
