"""Every method of `genzoo apply inpaint` on the real data, at one budget: a Markdown table per dataset.

    .venv/bin/python benchmarks/uses_inpaint.py --budget standard --family-budget quick --out DIR
        [--datasets binarized-mnist,mnist,breast-cancer] [--methods made,vae,...] [--threads 2] [--table-seeds 5]

Needs data/prepared/<dataset> (`genzoo prepare`) and data/evaluators/<dataset> (`genzoo evaluator`).
A family method gets its family's model trained here with genzoo.training.fit and the family's recipe
for the dataset at --family-budget (params.yaml, resolved as the pipeline's plan_models does); trained
models are kept under DIR/models and reused by a later run with the same settings (their training
seconds are recorded with them). The method's settings are params.yaml `uses.inpaint.<method>`,
common keys updated by the --budget keys. The table methods run with --table-seeds seeds (seed and
mask seed 0..S-1) and report mean +- standard deviation. Writes DIR/<dataset>-<method>-<picture>.png,
DIR/results.json, and prints the tables.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATASETS = ("binarized-mnist", "mnist", "breast-cancer")
GAIN_PAPER = "GAIN paper (Yoon et al. 2018), Breast, 20 % MCAR: GAIN RMSE 0.0546 +- 0.0006"


def settings(method: str, budget: str) -> dict:
    import yaml

    entry = dict(yaml.safe_load((ROOT / "params.yaml").read_text())["uses"]["inpaint"][method] or {})
    budgets = {b: entry.pop(b, {}) or {} for b in ("smoke", "quick", "standard", "full")}
    return {**entry, **budgets[budget]}


def family_model(family: str, prepared, budget: str, cache: Path, log):
    """The family's model trained on `prepared` with its recipe at `budget` (cached): (model, seconds, recipe name)."""
    import torch

    import models
    from genzoo.config import load_params, recipe_kind
    from genzoo.training import fit

    recipe = load_params(ROOT / "params.yaml").resolve(family, recipe_kind(prepared.shape, prepared.kind), budget)
    mcfg = {**recipe.model, "data_shape": list(prepared.shape), "data_kind": prepared.kind}
    if prepared.levels >= 2:
        mcfg["levels"] = prepared.levels
    path = cache / f"{family}-{prepared.name}-{budget}.pt"
    key = json.dumps({"model": mcfg, "train": recipe.train.to_dict()}, sort_keys=True)
    if path.is_file():
        state = torch.load(path, weights_only=True)
        if state["key"] == key:
            model = models.from_state(state["model"]).eval()
            log(f"{family} on {prepared.name}: reusing {path} ({state['seconds']:.0f} s of training)")
            return model, state["seconds"], recipe.name
    model = models.build(family, mcfg)
    val = prepared.subset("val", recipe.train.val_examples, 0) if recipe.train.val_examples else None
    t0 = time.perf_counter()
    fit(model, prepared.tensor("train"), recipe.train, val=val, log=log)
    seconds = time.perf_counter() - t0
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "model": model.state(), "seconds": seconds}, path)
    return model.eval(), seconds, recipe.name


def run_one(use, method_name: str, prepared, evaluator, budget: str, family_budget: str, out: Path,
            seed: int | None = None) -> dict:
    import torch

    from genzoo.plots import image_grid
    from genzoo.uses import UseInputs

    method = use.method(method_name)
    values = settings(method_name, budget)
    if seed is not None:
        values.update(seed=seed, mask_seed=seed)
    cfg = method.Config.from_dict(values, f"uses.inpaint.{method_name}.{budget}")
    log = lambda m: print(f"[{prepared.name}/{method_name}] {m}", flush=True)
    model, train_s, recipe = None, 0.0, "-"
    if method.family:
        model, train_s, recipe = family_model(method.family, prepared, family_budget, out / "models", log)
    t0 = time.perf_counter()
    outcome = method.run(UseInputs("inpaint", method_name, prepared.name, prepared, cfg, torch.device("cpu"),
                                   evaluator, model, log=log))
    run_s = time.perf_counter() - t0
    if seed in (None, 0):
        for name, pic in outcome.pictures.items():
            image_grid(pic[None, None], out / f"{prepared.name}-{method_name}-{name}.png", scale=3)
    return {"dataset": prepared.name, "method": method_name, "recipe": recipe, "train_seconds": train_s,
            "run_seconds": run_s, "metrics": outcome.metrics, "notes": outcome.notes}


def image_table(rows: list[dict], masks) -> str:
    head = ["method", "family recipe", "train s", "inpaint s"] + [
        f"{m} {k}" for m in masks for k in ("acc", "PSNR", "div", "cond NLL")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["recipe"], f"{r['train_seconds']:.0f}", f"{r['run_seconds']:.0f}"]
        for m in masks:
            for key, fmt in (("accuracy", "{:.3f}"), ("psnr", "{:.2f}"), ("diversity", "{:.2f}"), ("cond_nll", "{:.1f}")):
                v = r["metrics"].get(f"{m}.{key}")
                cells.append("-" if v is None else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_table(rows: list[dict]) -> str:
    lines = ["| method | seeds | RMSE test (mean +- sd) | RMSE fit rows (mean +- sd) | seconds per seed |", "|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        test = np.array([r["metrics"]["mcar20.rmse"] for r in rs])
        fit = np.array([r["metrics"]["mcar20.rmse_fit"] for r in rs])
        secs = np.mean([r["run_seconds"] for r in rs])
        lines.append(f"| {method} | {len(rs)} | {test.mean():.4f} +- {test.std():.4f} | {fit.mean():.4f} +- "
                     f"{fit.std():.4f} | {secs:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="standard", choices=("smoke", "quick", "standard", "full"))
    parser.add_argument("--family-budget", default=None, help="budget of the family models' recipes (default: --budget)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default="")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table-seeds", type=int, default=5)
    args = parser.parse_args()

    import torch

    import data
    from genzoo.evaluation import networks
    from genzoo.uses import get_use

    torch.set_num_threads(args.threads)
    use = get_use("inpaint")
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = [m for m in args.methods.split(",") if m] or list(use.methods)
    started, t_all = dt.datetime.now().isoformat(timespec="seconds"), time.perf_counter()
    results, report = [], [f"# inpaint at budget {args.budget} (family models: {args.family_budget or args.budget}), "
                           f"started {started}, {args.threads} threads"]
    for name in args.datasets.split(","):
        prepared = data.load(ROOT / "data" / "prepared" / name)
        methods = [m for m in wanted if name in use.methods[m].datasets]
        rows = []
        if prepared.kind == "points":
            for m in methods:
                rows += [run_one(use, m, prepared, None, args.budget, args.family_budget or args.budget, args.out, s)
                         for s in range(args.table_seeds)]
            report += [f"\n## {name}\n", table_table(rows), f"\n{GAIN_PAPER}"]
        else:
            evaluator, meta = networks.load(ROOT / "data" / "evaluators" / name)
            for m in methods:
                rows.append(run_one(use, m, prepared, evaluator, args.budget, args.family_budget or args.budget, args.out))
                print(image_table(rows[-1:], settings(m, args.budget).get("masks", ("bottom", "centre", "random50", "random80"))), flush=True)
            report += [f"\n## {name} (evaluator test accuracy {meta['test_accuracy']:.4f})\n", image_table(
                rows, ("bottom", "centre", "random50", "random80"))]
            report += sorted({n for r in rows for n in r["notes"]})
        results += rows
    report.append(f"\nwall time {time.perf_counter() - t_all:.0f} s")
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
