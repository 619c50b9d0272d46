"""Is a fit slower in a Ray worker than in the driver's own process, with nothing else running?

The overhead benchmark found the fit inside the pipeline's Ray worker 7-8 s (8-10 %) slower than the
same bare fit. This separates the worker from the rest of the pipeline: the same training (MADE on
binarized MNIST, its quick recipe, `--steps` x `--epochs`) three times at the same thread count, bare in
this process, then as a Ray task holding `--threads` CPUs on a local Ray (no Prefect, no MLflow), then
bare again (the order shows drift). Usage:

    .venv/bin/python benchmarks/ray_worker_gap.py --threads 2 --epochs 4 --steps 500
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def timed_fit(folder: str, family: str, preset: str, overrides: dict, threads: int) -> dict:
    """Build and fit the model in this process; returns the fit's seconds and the threads torch used."""
    import torch

    import data
    import models
    from genzoo.config import load_params, recipe_kind
    from genzoo.training import fit

    torch.set_num_threads(threads)
    params = load_params(ROOT / "params.yaml")
    prepared = data.load(Path(folder))
    recipe = params.resolve(family, recipe_kind(prepared.shape, prepared.kind), preset, overrides, None)
    tcfg = params.train_config(preset, recipe.train.to_dict())
    torch.manual_seed(tcfg.seed)
    model = models.build(family, {**recipe.model, "data_shape": prepared.shape, "data_kind": prepared.kind})
    t0 = time.perf_counter()
    fit(model, prepared.tensor("train"), tcfg, val=prepared.tensor("val", tcfg.val_examples), log=lambda m: None)
    return {"seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="made")
    p.add_argument("--dataset", default="binarized-mnist")
    p.add_argument("--preset", default="quick")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=500)
    args = p.parse_args()

    from recipes import prepared_folder

    folder = str(prepared_folder(args.dataset))
    overrides = {"cpus_per_worker": float(args.threads), "epochs": args.epochs, "steps_per_epoch": args.steps}
    rows = [("bare", timed_fit(folder, args.family, args.preset, overrides, args.threads))]
    print(f"[gap] bare: {rows[-1][1]}", flush=True)

    import ray

    from tasks.services import ensure_ray

    ensure_ray()  # as the pipeline starts it: local, token auth, loopback only
    remote = ray.remote(num_cpus=args.threads)(timed_fit)
    ray.get(remote.remote(folder, args.family, args.preset, {**overrides, "epochs": 1, "steps_per_epoch": 5},
                          args.threads))  # the worker process and its imports, not timed
    rows.append(("ray task", ray.get(remote.remote(folder, args.family, args.preset, overrides, args.threads))))
    print(f"[gap] ray task: {rows[-1][1]}", flush=True)
    ray.shutdown()
    rows.append(("bare again", timed_fit(folder, args.family, args.preset, overrides, args.threads)))
    print(f"[gap] bare again: {rows[-1][1]}", flush=True)
    print(json.dumps({"command": " ".join(["benchmarks/ray_worker_gap.py", *sys.argv[1:]]),
                      "date": time.strftime("%Y-%m-%d %H:%M"), "rows": dict(rows)}, indent=1))


if __name__ == "__main__":
    main()
