"""Every method of `super-resolve` (or, through benchmarks/uses_translate.py, `translate`) at one
budget on the prepared MNIST and its evaluator: a Markdown table of the measures, and the pictures.

    flock /work/wt/cpu.lock nice -n 5 .venv/bin/python benchmarks/uses_superres.py --budget standard \
        --out benchmarks/results/uses-superres

Settings: params.yaml `uses.<task>.<method>`, the common keys updated by the budget's. Beside the
methods, reference rows without learning measured on the same test rows: `truth` (the real digits:
the accuracy ceiling and the FID floor at this sample size) and, for super-resolve, `bicubic`
(bicubic interpolation of the 7x7 input). Pictures: each method's grid (input, truth, k outputs per
row) and one comparison grid (input, truth, the baseline, then 3 outputs of each generative method).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.prepared import load as load_data  # noqa: E402
from genzoo.evaluation.networks import load as load_evaluator  # noqa: E402
from genzoo.plots import image_grid  # noqa: E402
from genzoo.uses import UseInputs, get_use  # noqa: E402
from genzoo.uses.conditional_measures import measure, tile  # noqa: E402
from genzoo.uses.conditional_methods import EVAL_SEED  # noqa: E402

BUDGETS = ("smoke", "quick", "standard", "full")
SHOWN = 3  # outputs per generative method in the comparison grid


def settings(task: str, method: str, budget: str) -> dict:
    section = yaml.safe_load((ROOT / "params.yaml").read_text())["uses"][task][method]
    return {**{k: v for k, v in section.items() if k not in BUDGETS}, **section[budget]}


def references(task: str, use, data, evaluator, cfg) -> dict[str, dict[str, float]]:
    """The rows without learning, on the test rows every method is measured on."""
    pairing = next(iter(use.methods.values())).Predictor.pairing
    rows = np.sort(np.random.default_rng(EVAL_SEED).choice(len(data.arrays["test"]), cfg.eval_examples, False))
    truth, labels = data.tensor("test")[rows], data.arrays["test_labels"][rows]
    given = pairing.make_input(truth)
    real = {"truth": lambda inputs, seed: truth[:len(inputs)]}
    if task == "super-resolve":
        real["bicubic"] = lambda inputs, seed: F.interpolate(inputs, scale_factor=4, mode="bicubic",
                                                              align_corners=False).clamp(0, 1)
    return {name: measure(fn, given, truth, labels, pairing.consistency, evaluator, data.tensor("test"),
                          cfg.samples_per_input, cfg.diversity_inputs) for name, fn in real.items()}


def main(task: str = "super-resolve", argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=f"{task}: every method at one budget")
    parser.add_argument("--budget", choices=BUDGETS, default="standard")
    parser.add_argument("--methods", default="", help="comma-separated (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the pictures, the table and the JSON")
    parser.add_argument("--data", type=Path, default=ROOT / "data/prepared/mnist")
    parser.add_argument("--evaluator", type=Path, default=ROOT / "data/evaluators/mnist")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    use, data = get_use(task), load_data(args.data)
    evaluator, meta = load_evaluator(args.evaluator)
    names = [m for m in args.methods.split(",") if m] or list(use.methods)
    started, stamp = time.perf_counter(), datetime.datetime.now().isoformat(timespec="seconds")
    print(f"# {task} at budget {args.budget} ({stamp}; {args.threads} threads; evaluator test accuracy "
          f"{meta['test_accuracy']:.4f})", flush=True)

    rows, outcomes, walls = {}, {}, {}
    for name in names:
        method = use.method(name)
        cfg = method.Config.from_dict(settings(task, name, args.budget), f"uses.{task}.{name}.{args.budget}")
        t = time.perf_counter()
        outcome = method.run(UseInputs(task, name, data.name, data, cfg, torch.device(args.device), evaluator,
                                       log=lambda line: print(f"  {line}", flush=True)))
        walls[name] = time.perf_counter() - t
        rows[name], outcomes[name] = outcome.metrics, outcome
        image_grid(outcome.pictures["outputs"][None, None], args.out / f"{task}-{name}.png", nrow=1, scale=3)
        print(f"{name}: {walls[name]:.0f} s wall", flush=True)
    refs = references(task, use, data, evaluator, use.method(names[0]).Config.from_dict(
        settings(task, names[0], args.budget)))

    # the comparison grid: input, truth, then 1 output of each baseline and SHOWN of each generative method
    pairing = next(iter(use.methods.values())).Predictor.pairing
    test_rows = np.sort(np.random.default_rng(EVAL_SEED).choice(len(data.arrays["test"]), 1000, False))[:10]
    truth = data.tensor("test")[test_rows]
    given = pairing.make_input(truth)
    columns = [pairing.lift(given), truth]
    for name in names:
        shown = SHOWN if use.methods[name].generative else 1
        columns += [outcomes[name].predictor.generate(given, s) for s in range(shown)]
    image_grid(tile(columns)[None, None], args.out / f"{task}-comparison.png", nrow=1, scale=3)

    header = ["method"] + [title for _, title in use.columns] + ["wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metrics in list(rows.items()) + list(refs.items()):
        cells = [f"{metrics[key]:.4g}" if key in metrics else "" for key, _ in use.columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {walls.get(name, 0):.0f} |")
    table = "\n".join(lines)
    total = time.perf_counter() - started
    print(f"\n{table}\n\ntotal wall time {total:.0f} s; comparison grid columns: input, truth, "
          + ", ".join(f"{n} x{SHOWN if use.methods[n].generative else 1}" for n in names))
    (args.out / f"{task}-{args.budget}.md").write_text(f"{stamp}, {args.budget}, {total:.0f} s\n\n{table}\n")
    (args.out / f"{task}-{args.budget}.json").write_text(json.dumps(
        {"task": task, "budget": args.budget, "date": stamp, "wall_seconds": total, "per_method_wall": walls,
         "metrics": rows, "references": refs, "notes": {n: o.notes for n, o in outcomes.items()}}, indent=1))


if __name__ == "__main__":
    main()
