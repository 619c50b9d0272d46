"""The GMMN training step with genzoo's MMD kernel against the same kernel left to autograd, alternating
in one process (BENCHMARKS.md, "Plain GMMN at standard").

    python benchmarks/gmmn_step.py --threads 2 --batch 1000

The model is the parzen-mnist GMMN row's (genzoo/reproduce.py; 10-64-256-256-1024-784) on random binary
images of MNIST's shape. Prints the median ms per step of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def autograd_mixture_kernel(x, y, bandwidths):
    """The kernel as the definition writes it, differentiated by autograd (genzoo's before 2026-12-07)."""
    import torch

    from models.kernels import pairwise_sq_dists

    d2 = pairwise_sq_dists(x.flatten(1), y.flatten(1))  # (n, m)
    if y is x:
        d2 = d2.masked_fill(torch.eye(d2.shape[0], dtype=torch.bool), 0.0)
    gammas = torch.tensor([0.5 / s**2 for s in bandwidths], dtype=d2.dtype)  # (S,)
    return torch.exp(-d2[None] * gammas[:, None, None]).sum(0)  # (n, m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=8, help="alternating rounds of 5 steps each")
    args = ap.parse_args()

    import torch

    import models
    import models.kernels as kernels
    from genzoo.reproduce import PARZEN_MNIST
    from genzoo.training import flush_denormals

    flush_denormals()
    torch.set_num_threads(args.threads)
    x = torch.bernoulli(torch.full((args.batch, 1, 28, 28), 0.13), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    row = next(e for e in PARZEN_MNIST.entries if e.label == "GMMN")
    model = models.build("gmmn", {"data_shape": [1, 28, 28], "data_kind": "binary", **row.model})
    optimizers = model.configure_optimizers()
    sides = {"genzoo": kernels.mixture_kernel, "autograd": autograd_mixture_kernel}
    ms: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, kernel in sides.items():
            kernels.mixture_kernel = kernel  # mmd2 looks it up in its module
            t = time.perf_counter()
            for _ in range(5):
                model.training_step(x, optimizers)
            if r:
                ms[name].append((time.perf_counter() - t) / 5 * 1000)
    kernels.mixture_kernel = sides["genzoo"]
    for name, times in ms.items():
        print(f"{name:9s} {statistics.median(times):7.1f} ms per step (median of {len(times)} rounds; "
              f"min {min(times):.1f})")
    print(f"autograd / genzoo: {statistics.median(ms['autograd']) / statistics.median(ms['genzoo']):.2f}x")


if __name__ == "__main__":
    main()
