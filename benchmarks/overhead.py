"""What the platform costs: one training bare (genzoo.training.fit, the plain loop) and through the
pipeline (Prefect flow + Ray + MLflow tracking/registry + DVC), same data, budget and thread count,
side by side in one process.

    make bench      (or: .venv/bin/python benchmarks/overhead.py [--epochs 40 --steps 500 --threads 2])

Default: MADE 784-500-784 on binarized MNIST with its quick recipe at 40 x 500 steps, about 2 minutes
of training on 2 cores (20 x 500 took that long until trainings flushed denormals, 2026-12-04). Data
preparation and the evaluator network are DVC stages paid once per data version, so both are brought
up to date before the clock starts (the pipeline's `dvc repro` then only checks).
Two ratios (issue 10's targets: <= 1.10 and <= 1.5):
  - pipeline wall time, start-up included, excluding sampling and evaluation / bare fit;
  - whole pipeline, evaluation on the protocol's 10,000 samples included / bare fit.
Writes benchmarks/results/overhead.json.

A project's first run also creates its Prefect and MLflow databases (about 8 s of migrations); a
later run does not. `--project DIR` runs in a project an earlier run of this benchmark made (its
folder is printed and kept), so a second call measures a later run; both are recorded as such.
The pipeline never reuses an earlier training here (`reuse_trainings=False`): each run trains.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="made")
    ap.add_argument("--dataset", default="binarized-mnist")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=500, help="steps per epoch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--project", type=Path, default=None,
                    help="a project an earlier run of this benchmark made: measure a later run in it")
    args = ap.parse_args()

    from genzoo.env import configure
    from genzoo.scaffold import new_project

    first_run = args.project is None
    if not first_run and not (args.project / "mlflow.db").is_file():
        print(f"--project {args.project}: not a project an earlier run of this benchmark made (no mlflow.db).",
              file=sys.stderr)
        sys.exit(2)
    root = new_project(Path(tempfile.mkdtemp(prefix="genzoo-bench-"))) if first_run else args.project.resolve()
    print(f"[overhead] project {root} ({'new: its first run' if first_run else 'a later run'})", flush=True)
    configure(root)
    import torch

    import data
    import models
    from data.prepared import read_manifest
    from genzoo.config import load_params, recipe_kind
    from genzoo.training import fit, flush_denormals

    from cpu_census import Census

    stages = [f"prepare@{args.dataset}", f"evaluator@{args.dataset}"]
    print(f"[overhead] dvc repro {' '.join(stages)} (paid once per data version, not timed)", flush=True)
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q", *stages], cwd=root, check=True)

    params = load_params(root / "params.yaml")
    overrides = {"cpus_per_worker": float(args.threads), "epochs": args.epochs, "steps_per_epoch": args.steps}
    folder = root / "data" / "prepared" / args.dataset
    manifest = read_manifest(folder)
    recipe = params.resolve(args.family, recipe_kind(manifest["shape"], manifest["kind"]), args.preset, overrides, None)
    tcfg = params.train_config(args.preset, recipe.train.to_dict())

    # Bare: the same loop, data already in memory, nothing tracked, same threads.
    flush_denormals()  # as every genzoo training does, before the first torch operation
    torch.set_num_threads(args.threads)
    prepared = data.load(folder)
    mcfg = {**recipe.model, "data_shape": prepared.shape, "data_kind": prepared.kind}
    torch.manual_seed(tcfg.seed)
    model = models.build(args.family, mcfg)
    census = Census().start()
    bare_wall = time.time()
    t0 = time.perf_counter()
    bare_history = fit(model, prepared.tensor("train"), tcfg, val=prepared.tensor("val", tcfg.val_examples),
                       log=lambda m: None)
    bare = time.perf_counter() - t0
    bare_window = (bare_wall, time.time())
    print(f"[overhead] bare fit: {bare:.1f} s", flush=True)

    # Through the pipeline, as `genzoo run` does it: start-up (Prefect's API and Ray side by side), then the flow.
    from flows.pipeline import pipeline
    from genzoo import startup
    from tasks.services import client

    t0, wall0 = time.perf_counter(), time.time()
    startup.warm_up()
    started = time.perf_counter() - t0
    result = pipeline(families=[args.family], datasets=[args.dataset], preset=args.preset, train_overrides=overrides,
                      reuse_trainings=False)
    piped = time.perf_counter() - t0
    wall1 = time.time()
    census.stop()
    row = result.rows[0]
    assert row.ok, row.reason
    metrics = client().get_run(row.run_id).data.metrics
    piped_epochs = [m.value for m in sorted(client().get_metric_history(row.run_id, "epoch_seconds"), key=lambda m: m.step)]
    evaluation = metrics["eval_seconds"]

    out = {
        "command": " ".join(["benchmarks/overhead.py", *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d"),
        "project_run": "first" if first_run else "later",
        "family": args.family, "dataset": args.dataset, "preset": args.preset, "threads": args.threads,
        "train_config": tcfg.to_dict(),
        "bare_fit_seconds": round(bare, 2), "pipeline_seconds": round(piped, 2),
        "startup_seconds": round(started, 2), "train_seconds_in_pipeline": round(row.train_seconds, 2),
        "evaluation_seconds": round(evaluation, 2), "evaluation_samples": int(metrics.get("samples_drawn", 0)),
        "breakdown_seconds": {  # where the pipeline's time went, in order
            "start-up (Prefect API server, Ray)": round(started, 2),
            "flow start to the train task (dvc repro check, plan, MLflow run)": round(row.started_at - wall0 - started, 2),
            "train task (data to Ray, fit, weights to MLflow)": round(row.ended_at - row.started_at, 2),
            "of which the fit (from admission)": round(row.train_seconds, 2),
            "evaluation (10,000 samples, every measure)": round(evaluation, 2),
            "registration, promotion, report, flow end": round(wall1 - row.ended_at - evaluation, 2)},
        "epoch_seconds_bare": [round(h["epoch_seconds"], 2) for h in bare_history],
        "epoch_seconds_in_pipeline": [round(v, 2) for v in piped_epochs],
        # CPU seconds each kind of process used while the fit ran, bare and in the pipeline (2-thread fit, 2 cores)
        "cpu_during_bare_fit": census.between(*bare_window),
        "cpu_during_pipeline_fit": census.between(row.started_at, row.ended_at),
        "ratio_without_evaluation": round((piped - evaluation) / bare, 3),
        "ratio_with_evaluation": round(piped / bare, 3),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, torch {torch.__version__}",
    }
    print(json.dumps(out, indent=2))
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / ("overhead.json" if first_run else "overhead-later-run.json")).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
