"""Is a fit slower in a Ray worker, or beside the pipeline's services, than bare in the driver's own process?

The overhead benchmark found the fit inside the pipeline's Ray worker 7-8 s (8-10 %) slower than the
same bare fit. This separates the worker from the rest of the pipeline: the same training (MADE on
binarized MNIST, its quick recipe, `--steps` x `--epochs`) at the same thread count: bare in this
process with no service running; then, with the pipeline's services up (Prefect's temporary API server
and a local Ray, started as `genzoo run` starts them; no flow, no MLflow), `--rounds` pairs of a bare
fit in this process, the fit as a Ray task holding `--threads` CPUs, and the pipeline's own Ray job
(tasks/ray_job.run_training: data through the object store, a checkpoint per epoch); then bare again after Ray's
shutdown (the order shows drift). Usage:

    .venv/bin/python benchmarks/ray_worker_gap.py --threads 2 --epochs 4 --steps 500
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _setup(folder: str, family: str, preset: str, overrides: dict):
    """The prepared data, model config and TrainConfig params.yaml resolves for this training."""
    import data
    from genzoo.config import load_params, recipe_kind

    params = load_params(ROOT / "params.yaml")
    prepared = data.load(Path(folder))
    recipe = params.resolve(family, recipe_kind(prepared.shape, prepared.kind), preset, overrides, None)
    mcfg = {**recipe.model, "data_shape": prepared.shape, "data_kind": prepared.kind}
    return prepared, mcfg, params.train_config(preset, recipe.train.to_dict())


def timed_fit(folder: str, family: str, preset: str, overrides: dict, threads: int) -> dict:
    """Build and fit the model in this process; returns the fit's seconds and the threads torch used."""
    import torch

    import models
    from genzoo.training import fit, flush_denormals

    flush_denormals()  # as every genzoo training does, before the first torch operation
    torch.set_num_threads(threads)
    prepared, mcfg, tcfg = _setup(folder, family, preset, overrides)
    torch.manual_seed(tcfg.seed)
    model = models.build(family, mcfg)
    t0 = time.perf_counter()
    history = fit(model, prepared.tensor("train"), tcfg, val=prepared.tensor("val", tcfg.val_examples),
                  log=lambda m: None)
    return {"seconds": time.perf_counter() - t0, "epoch_seconds": sum(h["epoch_seconds"] for h in history),
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()}


def pipeline_job(folder: str, family: str, preset: str, overrides: dict, storage: Path) -> dict:
    """The same training through the pipeline's own Ray job (tasks/ray_job.run_training: the data through
    the object store, a checkpoint and a progress line per epoch), without Prefect or MLflow."""
    from tasks.ray_job import run_training

    prepared, mcfg, tcfg = _setup(folder, family, preset, overrides)
    outcome = run_training(family, prepared.name, prepared.arrays, prepared.manifest, mcfg, tcfg.to_dict(), storage,
                           resume=False)
    assert outcome.status == "FINISHED", outcome.reason
    return {"seconds": outcome.seconds, "epoch_seconds": sum(h["epoch_seconds"] for h in outcome.history)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="made")
    p.add_argument("--dataset", default="binarized-mnist")
    p.add_argument("--preset", default="quick")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--rounds", type=int, default=2, help="rounds of bare beside the services, Ray task, pipeline job")
    args = p.parse_args()

    from recipes import prepared_folder

    folder = str(prepared_folder(args.dataset))
    overrides = {"cpus_per_worker": float(args.threads), "epochs": args.epochs, "steps_per_epoch": args.steps}
    rows: list[tuple[str, dict]] = []

    def run(label: str, fn) -> None:
        rows.append((label, fn()))
        print(f"[gap] {label}: {rows[-1][1]}", flush=True)

    def bare() -> dict:
        return timed_fit(folder, args.family, args.preset, overrides, args.threads)

    run("bare", bare)

    import ray

    from genzoo import startup

    storage = Path(tempfile.mkdtemp(prefix="genzoo-gap-"))
    startup.warm_up()  # as the pipeline starts its services: Prefect's API server (PREFECT_API_URL unset), Ray
    remote = ray.remote(num_cpus=args.threads)(timed_fit)
    ray.get(remote.remote(folder, args.family, args.preset, {**overrides, "epochs": 1, "steps_per_epoch": 5},
                          args.threads))  # the worker process and its imports, not timed
    for r in range(args.rounds):  # alternating, so drift lands on both
        run(f"bare, services up ({r + 1})", bare)
        run(f"ray task ({r + 1})", lambda: ray.get(remote.remote(folder, args.family, args.preset, overrides,
                                                                 args.threads)))
        run(f"the pipeline's Ray job ({r + 1})", lambda: pipeline_job(folder, args.family, args.preset, overrides,
                                                                        storage))
    ray.shutdown()
    run("bare again", bare)
    print(json.dumps({"command": " ".join(["benchmarks/ray_worker_gap.py", *sys.argv[1:]]),
                      "date": time.strftime("%Y-%m-%d %H:%M"), "rows": dict(rows)}, indent=1))


if __name__ == "__main__":
    main()
