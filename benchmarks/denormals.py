"""What flushing denormal floats to zero buys a training on the CPU (genzoo.training.flush_denormals).

Each fit runs in a new process, so its torch threads start in the mode under test: `--rounds` pairs,
alternating, of the same training (a family's recipe at `--preset`, same seed, same thread count)
with genzoo's flush (what every genzoo training does) and without it (IEEE 754's default: what
genzoo did before). Prints one JSON line per fit and a summary; nothing is written elsewhere.

    .venv/bin/python benchmarks/denormals.py --pairs made:binarized-mnist --epochs 12 --steps 500
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def child(args: argparse.Namespace) -> None:
    import genzoo.training

    if not args.flush:
        genzoo.training.flush_denormals = lambda: None  # fit() and timed_fit() look it up when called
    from ray_worker_gap import timed_fit
    from recipes import prepared_folder

    overrides = {"cpus_per_worker": float(args.threads)}
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.steps:
        overrides["steps_per_epoch"] = args.steps
    out = timed_fit(str(prepared_folder(args.dataset)), args.family, args.preset, overrides, args.threads)
    print(json.dumps({"family": args.family, "dataset": args.dataset, "flush": args.flush, **out}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", default="made:binarized-mnist", help="family:dataset,... (default made:binarized-mnist)")
    p.add_argument("--preset", default="quick")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=0, help="0: the recipe's")
    p.add_argument("--steps", type=int, default=0, help="steps per epoch; 0: the recipe's")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--family", help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--flush", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    summary = {}
    for pair in args.pairs.split(","):
        family, dataset = pair.split(":")
        seconds: dict[int, list[float]] = {0: [], 1: []}
        for r in range(args.rounds):
            for flush in ((0, 1) if r % 2 == 0 else (1, 0)):  # alternating, so drift lands on both
                cmd = [sys.executable, __file__, "--child", "--family", family, "--dataset", dataset,
                       "--flush", str(flush), "--preset", args.preset, "--threads", str(args.threads),
                       "--epochs", str(args.epochs), "--steps", str(args.steps)]
                line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                print(line, flush=True)
                seconds[flush].append(json.loads(line)["seconds"])
        summary[pair] = {"without_flush_s": seconds[0], "with_flush_s": seconds[1],
                         "speed_up_of_medians": round(statistics.median(seconds[0]) / statistics.median(seconds[1]), 2)}
    print(json.dumps({"command": " ".join(["benchmarks/denormals.py", *sys.argv[1:]]),
                      "date": time.strftime("%Y-%m-%d %H:%M"), "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
