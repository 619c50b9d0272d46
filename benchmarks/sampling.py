"""Sampling cost of every family: seconds per sample at batch sizes 1, 64 and 1,024, and how
it grows with the data dimension (8x8 digits, 28x28 MNIST, a 64x64 synthetic size).

    .venv/bin/python benchmarks/sampling.py [--cap-seconds 60] [--threads 2]

This measures the tutorial's claim (Goodfellow 2016, section 2): an autoregressive model
needs one network pass per dimension, a GAN one pass in all. Models are untrained, at
the sizes in params.yaml (sampling cost does not depend on the weights: chains and
pixel loops have fixed step counts). A measurement whose estimate (from the smaller
batch) exceeds --cap-seconds is not run and is reported as '>cap' with its estimate.
Writes benchmarks/results/sampling.{csv,md,png}.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import yaml

SHAPES = [(1, 8, 8), (1, 28, 28), (1, 64, 64)]
BATCHES = [1, 64, 1024]
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cap-seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--families", default="all")
    args = ap.parse_args()

    import torch

    import models

    torch.set_num_threads(args.threads)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["models"]
    families = list(models.FAMILIES) if args.families == "all" else args.families.split(",")
    rows = []
    for name in families:
        cls = models.FAMILIES[name]
        kind = "image" if "image" in cls.supported_kinds else "binary"
        for shape in SHAPES:
            cfg = {**params.get(name, {}), "data_shape": list(shape), "data_kind": kind}
            if kind == "image":
                cfg["levels"] = 256
            try:
                model = models.build(name, cfg)
            except Exception as exc:  # a family that cannot take this size (e.g. a multi-scale flow)
                rows.append({"family": name, "dim": shape[1] * shape[2], "batch": "-", "status": f"n/a: {exc}"})
                continue
            model.eval()
            per_sample = None
            for batch in BATCHES:
                row = {"family": name, "dim": shape[1] * shape[2], "shape": "x".join(map(str, shape)), "batch": batch}
                estimate = None if per_sample is None else per_sample * batch
                if estimate is not None and estimate > args.cap_seconds:
                    row.update(status=">cap", seconds_per_sample=per_sample, estimated_seconds=estimate)
                else:
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        model.sample(batch, torch.Generator().manual_seed(0))
                    seconds = time.perf_counter() - t0
                    per_sample = seconds / batch
                    row.update(status="measured", seconds=seconds, seconds_per_sample=per_sample,
                               samples_per_second=batch / seconds)
                rows.append(row)
                print({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    keys = ["family", "shape", "dim", "batch", "status", "seconds", "seconds_per_sample", "samples_per_second",
            "estimated_seconds"]
    with open(out / "sampling.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = ["| family | shape | batch 1 s/sample | batch 64 s/sample | batch 1024 s/sample |", "|---|---|---|---|---|"]
    for name in families:
        for shape in SHAPES:
            cells = []
            for batch in BATCHES:
                r = next((r for r in rows if r["family"] == name and r.get("shape") == "x".join(map(str, shape))
                          and r["batch"] == batch), None)
                if r is None:
                    cells.append("n/a")
                elif r["status"] == ">cap":
                    cells.append(f">cap (~{r['estimated_seconds']:.0f} s per batch)")
                else:
                    cells.append(f"{r['seconds_per_sample']:.3g}")
            lines.append(f"| {name} | {'x'.join(map(str, shape))} | " + " | ".join(cells) + " |")
    (out / "sampling.md").write_text("\n".join(lines) + "\n")
    plot(rows, families, out / "sampling.png")
    print("\n".join(lines))


def plot(rows, families, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name in families:
        pts = [(r["dim"], r["seconds_per_sample"]) for r in rows
               if r["family"] == name and r.get("batch") == 64 and "seconds_per_sample" in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("data dimension (pixels)")
    ax.set_ylabel("seconds per sample (batch 64)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
