"""Do concurrent trainings share the machine well? The demo's trainings, each run bare (fit, its quick
recipe, `--threads` torch threads, one after another), against the same trainings run concurrently
by the pipeline on the same cores.

    .venv/bin/python benchmarks/concurrency.py [--threads 2]

Issue 10's target, read literally: the pipeline's training phase (first training start to last
training end; the evaluations of finished models run inside it) within 1.15 x (the sum of the bare
times at 2 threads) / (the cores they share). Data and evaluators are prepared before the clock starts. Writes
benchmarks/results/concurrency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAMILIES = ["gan", "vae"]
DATASETS = ["ring8", "grid25", "digits", "mnist"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default="quick")
    args = ap.parse_args()

    from genzoo.env import configure
    from genzoo.scaffold import new_project

    root = new_project(Path(tempfile.mkdtemp(prefix="genzoo-concurrency-")))
    configure(root)
    import torch

    import data
    import models
    from genzoo.config import load_params, recipe_kind
    from genzoo.training import fit, flush_denormals

    stages = [f"prepare@{d}" for d in DATASETS] + ["evaluator@digits", "evaluator@mnist"]
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q", *stages], cwd=root, check=True)
    params = load_params(root / "params.yaml")

    flush_denormals()  # as every genzoo training does, before the first torch operation
    torch.set_num_threads(args.threads)
    bare = {}
    for ds in DATASETS:
        prepared = data.load(root / "data" / "prepared" / ds)
        for fam in FAMILIES:
            recipe = params.resolve(fam, recipe_kind(prepared.shape, prepared.kind), args.preset, None, None)
            tcfg = params.train_config(args.preset, recipe.train.to_dict())
            mcfg = {**recipe.model, "data_shape": prepared.shape, "data_kind": prepared.kind}
            if prepared.levels >= 2:
                mcfg["levels"] = prepared.levels
            torch.manual_seed(tcfg.seed)
            model = models.build(fam, mcfg)
            t0 = time.perf_counter()
            fit(model, prepared.tensor("train"), tcfg, val=prepared.tensor("val", tcfg.val_examples), log=lambda m: None)
            bare[f"{fam}-{ds}"] = time.perf_counter() - t0
            print(f"[concurrency] bare {fam}-{ds}: {bare[f'{fam}-{ds}']:.1f} s ({args.threads} threads)", flush=True)

    from flows.pipeline import pipeline
    from genzoo import startup

    startup.warm_up()
    result = pipeline(families=FAMILIES, datasets=DATASETS, preset=args.preset, register_models=False,
                      reuse_trainings=False)
    assert not result.failed, [r.reason for r in result.failed]
    span = max(r.ended_at for r in result.rows) - min(r.started_at for r in result.rows)
    cores = os.cpu_count()
    ideal = sum(bare.values()) / cores
    out = {"command": " ".join(["benchmarks/concurrency.py", *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d"),
           "threads_bare": args.threads, "cores": cores, "bare_seconds": {k: round(v, 1) for k, v in bare.items()},
           "bare_sum_seconds": round(sum(bare.values()), 1), "ideal_concurrent_seconds": round(ideal, 1),
           "pipeline_training_span_seconds": round(span, 1),
           "pipeline_train_seconds": {r.name: round(r.train_seconds, 1) for r in result.rows},
           "ratio": round(span / ideal, 3)}
    print(json.dumps(out, indent=2))
    (Path(__file__).parent / "results" / "concurrency.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
