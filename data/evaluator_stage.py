"""The `evaluator` DVC stage: train the feature network of one image dataset, save it and its test accuracy.

    genzoo evaluator mnist      ->  data/evaluators/mnist/{evaluator.pt, metrics.json}

binarized-mnist has no labels (the Larochelle files carry none): its evaluator is
trained on MNIST images binarized stochastically with a fixed seed, the same
process that made the fixed split, and tested on the binarized MNIST test images.

stacked-mnist (`per_channel: 3`) is judged channel by channel: its evaluator is the MNIST
digit classifier (trained on the single-channel source as usual), and `load` wraps it in a
PerChannelEvaluator that takes (n, 3, 28, 28) images.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

import data
from data.errors import DataError
from genzoo.evaluation.networks import EVALUATOR_FILE, METRICS_FILE, accuracy, train_evaluator
KNOWN = {"source", "binarize", "per_channel", "epochs", "batch_size", "seed", "lr", "width", "feature_dim", "threads"}


def _binarize(x: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))


def build(dataset: str, root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Train on the train split of params['source'] (default: the dataset itself); write atomically."""
    unknown = sorted(set(params) - KNOWN)
    if unknown:
        raise DataError(f"unknown evaluator parameter '{unknown[0]}' for {dataset} (known: {', '.join(sorted(KNOWN))})")
    source = params.get("source", dataset)
    per_channel = params.get("per_channel", 0)
    if isinstance(per_channel, bool) or not isinstance(per_channel, int) or per_channel < 0:
        raise DataError(f"evaluator parameter per_channel for {dataset} must be an integer >= 0 "
                        f"(channels classified one by one; 0: whole images), got {per_channel!r}")
    prepared = data.load(root / "data" / "prepared" / source)
    if per_channel and prepared.shape[0] != 1:
        raise DataError(f"evaluator {dataset}: per_channel needs a single-channel source, "
                        f"{source} has shape {list(prepared.shape)}")
    if "train_labels" not in prepared.arrays:
        raise DataError(f"dataset {source} has no labels, so no evaluator can be trained on it; give a labelled source")
    seed = int(params.get("seed", 0))
    torch.set_num_threads(int(params.get("threads", torch.get_num_threads())))
    x = {s: prepared.tensor(s) for s in ("train", "val", "test")}
    if params.get("binarize", False):
        x = {s: _binarize(v, seed + i) for i, (s, v) in enumerate(x.items())}
    t0 = time.perf_counter()
    model, val_acc = train_evaluator(
        x["train"], prepared.arrays["train_labels"], x["val"], prepared.arrays["val_labels"],
        epochs=int(params.get("epochs", 3)), batch_size=int(params.get("batch_size", 128)), seed=seed,
        lr=float(params.get("lr", 1e-3)),
        config={k: params[k] for k in ("width", "feature_dim") if k in params},
        log=lambda m: print(f"[evaluator {dataset}] {m}", flush=True),
    )
    metrics = {"val_accuracy": val_acc, "test_accuracy": accuracy(model, x["test"], prepared.arrays["test_labels"]),
               "train_seconds": time.perf_counter() - t0, "source": source,
               "binarized": bool(params.get("binarize", False)), "per_channel": per_channel,
               "data_hash": prepared.manifest["hash"]}
    out = root / "data" / "evaluators" / dataset
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict()}, tmp / EVALUATOR_FILE)
    (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    for kept in (".gitignore",):  # DVC's (and git's) files in the output's folder stay where they are
        if (out / kept).is_file():
            shutil.copy(out / kept, tmp / kept)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return metrics
