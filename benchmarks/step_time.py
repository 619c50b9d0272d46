"""Time one family's training step (forward, backward, Adam) on random data of a dataset's shape, for a
few model sizes and both training precisions, each in this process at the same thread count.

    python benchmarks/step_time.py pixelcnn --shape 1,28,28 --batch 64 --threads 2 \
        --sizes 16x4,32x4,64x6 --precisions fp32,bf16

`--sizes` are CHANNELSxLAYERS: the family's `channels` and `layers` settings (the PixelCNN's). Prints
ms per step and what the standard budget (15 minutes) buys at that speed; writes
benchmarks/results/step-time.json. BENCHMARKS.md, "PixelCNN at standard", records its figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STANDARD_SECONDS = 15 * 60  # params.yaml: standard is at most 15 minutes per training on 2 cores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family")
    ap.add_argument("--shape", default="1,28,28")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="16x4,32x4,64x6", help="PixelCNN CHANNELSxLAYERS, comma-separated")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per setting (after 3 warm-up steps)")
    ap.add_argument("--train-examples", type=int, default=50000, help="for the epochs a budget buys")
    args = ap.parse_args()

    import torch

    import models
    from genzoo.config import TrainConfig
    from genzoo.training import flush_denormals, native_bfloat16, step_autocast

    flush_denormals()
    torch.set_num_threads(args.threads)
    shape = [int(s) for s in args.shape.split(",")]
    x = torch.bernoulli(torch.full((args.batch, *shape), 0.13), generator=torch.Generator().manual_seed(0))
    rows = []
    for size in args.sizes.split(","):
        channels, layers = (int(v) for v in size.split("x"))
        for precision in args.precisions.split(","):
            torch.manual_seed(0)
            model = models.build(args.family, {"data_shape": shape, "data_kind": "binary", "channels": channels,
                                               "layers": layers})
            optimizers = model.configure_optimizers()
            autocast = step_autocast(TrainConfig(precision=precision), torch.device("cpu"))
            for _ in range(3):
                with autocast:
                    model.training_step(x, optimizers)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                with autocast:
                    model.training_step(x, optimizers)
            seconds = (time.perf_counter() - t0) / args.steps
            steps = STANDARD_SECONDS / seconds
            row = {"family": args.family, "size": size, "precision": precision, "threads": args.threads,
                   "batch": args.batch, "ms_per_step": round(1000 * seconds, 1),
                   "standard_steps": int(steps), "standard_epochs": round(steps * args.batch / args.train_examples, 1)}
            rows.append(row)
            print(f"{args.family} {size} {precision}: {row['ms_per_step']} ms/step at batch {args.batch}, "
                  f"{args.threads} threads; 15 minutes = {row['standard_steps']} steps = {row['standard_epochs']} "
                  "epochs", flush=True)
    out = ROOT / "benchmarks" / "results" / "step-time.json"
    out.write_text(json.dumps({"date": dt.datetime.now().isoformat(timespec="seconds"),
                               "native_bfloat16": native_bfloat16(torch.device("cpu")), "rows": rows}, indent=1))
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
