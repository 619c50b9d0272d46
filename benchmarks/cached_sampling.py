"""Naive vs cached autoregressive sampling: seconds for one batch and whether the samples are identical.

    .venv/bin/python benchmarks/cached_sampling.py [--threads 2] [--batch 64] [--repeats 3]

MADE and the Gated PixelCNN at 28x28 binary, at the sizes the binarized-MNIST recipes train
(params.yaml: `models:` defaults plus `recipes.<family>.binary.model`), untrained (sampling cost
does not depend on the weights). 'naive' runs the whole network once per pixel (784 passes);
'cached' computes each activation once (models/made.py, models/pixelcnn.py). Both sample from
the same generator seed; 'identical' compares the two batches exactly. The naive time is one
run (the PixelCNN one takes about 2 minutes on 2 cores), the cached time the best of --repeats
(one before the naive run, the others after).
Writes benchmarks/results/cached_sampling.md and prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHAPE = [1, 28, 28]
FAMILIES = ("made", "pixelcnn")


def recipe_config(name: str) -> dict:
    """The binarized-MNIST model settings: `models.<name>` overlaid with `recipes.<name>.binary.model`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    recipe = params.get("recipes", {}).get(name, {}).get("binary", {}).get("model", {})
    return {**params["models"].get(name, {}), **recipe, "data_shape": SHAPE, "data_kind": "binary"}


def timed(model, sampler: str, batch: int, repeats: int):
    """(best seconds over `repeats` runs, the samples) with `sampler`, generator seed 0."""
    import torch

    model.config = dataclasses.replace(model.config, sampler=sampler)
    best, samples = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        samples = model.sample(batch, torch.Generator().manual_seed(0))
        best = min(best, time.perf_counter() - t0)
    return best, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="runs of the cached sampler (the best is kept)")
    ap.add_argument("--families", default=",".join(FAMILIES))
    args = ap.parse_args()

    import torch

    import models

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.families.split(","):
        cfg = recipe_config(name)
        torch.manual_seed(0)
        model = models.build(name, cfg).eval()
        keys = ("hidden", "num_masks", "channels", "layers", "kernel", "first_kernel")
        sizes = ", ".join(f"{k} {v}" for k, v in model.config.to_dict().items() if k in keys)
        before, cached = timed(model, "cached", args.batch, 1)  # one cached run before the naive one, the rest
        naive_s, naive = timed(model, "naive", args.batch, 1)  # after: a burst of load from other processes
        after, again = timed(model, "cached", args.batch, max(args.repeats - 1, 1))  # does not decide the best
        cached_s = min(before, after)
        assert torch.equal(cached, again)
        rows.append({"family": name, "model": sizes, "naive": naive_s, "cached": cached_s,
                     "identical": torch.equal(naive, cached), "differ": int((naive != cached).sum())})
        print(rows[-1], flush=True)
    shape = "x".join(map(str, SHAPE))
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"Naive vs cached sampling, {shape} binary, batch {args.batch}, {args.threads} threads, "
        f"torch {torch.__version__}, {dt.date.today()} (load average at the end, 1/5/15 min: {load}).",
        f"Command: `{' '.join(['.venv/bin/python benchmarks/cached_sampling.py', *sys.argv[1:]])}`.",
        "",
        "| family | model | shape | batch | naive s | cached s | speed-up | samples identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = "yes" if r["identical"] else f"no ({r['differ']} pixels differ)"
        lines.append(f"| {r['family']} | {r['model']} | {shape} | {args.batch} | {r['naive']:.3g} | {r['cached']:.3g} "
                     f"| {r['naive'] / r['cached']:.0f}x | {same} |")
    text = "\n".join(lines) + "\n"
    out = ROOT / "benchmarks" / "results" / "cached_sampling.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
