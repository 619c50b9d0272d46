"""What the platform costs: one training run bare (the plain torch loop) and through the
pipeline (Prefect flow + Ray Train job + MLflow tracking/registry + DVC), same data and budget.

    make bench            (or: .venv/bin/python benchmarks/overhead.py --family vae --dataset digits)

Prints the wall-clock times and the overhead ratio, and writes benchmarks/results/overhead.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="vae")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--preset", default="quick")
    args = ap.parse_args()

    from genzoo.env import configure
    from genzoo.scaffold import new_project

    root = new_project(Path(tempfile.mkdtemp(prefix="genzoo-bench-")))
    configure(root)

    import torch

    import data
    import models
    from genzoo.config import load_params
    from genzoo.training import fit

    params = load_params(root / "params.yaml")
    overrides = {"cpus_per_worker": 1.0}  # one thread in the Ray worker, one thread bare
    tcfg = params.train_config(args.preset, overrides)

    # Bare: prepare in-process, plain loop, nothing tracked.
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data.prepare(args.dataset, root / "bare" / args.dataset, params.prepare.get(args.dataset, {}), root / "data" / "raw")
    prepared = data.load(root / "bare" / args.dataset)
    mcfg = {**params.models.get(args.family, {}), "data_shape": prepared.shape, "data_kind": prepared.kind}
    if prepared.levels >= 2:
        mcfg["levels"] = prepared.levels
    torch.manual_seed(tcfg.seed)
    model = models.build(args.family, mcfg)
    fit(model, prepared.tensor("train"), tcfg, val=prepared.tensor("val", tcfg.val_examples), log=lambda m: None)
    bare = time.perf_counter() - t0

    # Through the pipeline (first flow of the process: includes Prefect's ephemeral API start).
    from flows.pipeline import pipeline

    t0 = time.perf_counter()
    result = pipeline(families=[args.family], datasets=[args.dataset], preset=args.preset, train_overrides=overrides)
    piped = time.perf_counter() - t0
    row = result["rows"][0]
    assert row["status"] == "FINISHED", row.get("reason")

    out = {
        "family": args.family, "dataset": args.dataset, "preset": args.preset, "train_config": tcfg.to_dict(),
        "bare_seconds": round(bare, 2), "pipeline_seconds": round(piped, 2),
        "ray_train_seconds": round(row["train_seconds"], 2), "overhead_ratio": round(piped / bare, 2),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, torch {torch.__version__}",
    }
    print(json.dumps(out, indent=2))
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "overhead.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
