"""Semi-supervised MNIST (100 labels): every method of genzoo/uses/semisupervised.py at one budget on the
prepared dataset; prints a Markdown table of the metrics and writes the pictures (PNG) to a folder.

    python benchmarks/uses_semisupervised.py --budget standard --out benchmarks/results/semisup
    python benchmarks/uses_semisupervised.py --budget quick --methods gan --set gan.lr=0.001 --out /tmp/s
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from data.prepared import load
from genzoo.uses import UseInputs, get_use

REPO = Path(__file__).resolve().parents[1]
TASK = "semi-supervised"
PUBLISHED = {"gan": "0.93 +- 0.065 (Salimans et al. 2016)", "vae": "3.33 +- 0.14 (Kingma et al. 2014, M1+M2)",
             "baseline": "-"}


def settings(method: str, budget: str, overrides: dict) -> dict:
    """params.yaml uses.semi-supervised.<method>: the common keys updated by the budget's keys."""
    section = yaml.safe_load((REPO / "params.yaml").read_text())["uses"][TASK][method]
    values = {k: v for k, v in section.items() if k not in ("smoke", "quick", "standard", "full")}
    values.update(section.get(budget) or {})
    values.update(overrides)
    return values


def parse_overrides(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items:
        key, value = item.split("=", 1)
        method, name = key.split(".", 1)
        out.setdefault(method, {})[name] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="standard", choices=("smoke", "quick", "standard", "full"))
    parser.add_argument("--methods", default="gan,vae,baseline")
    parser.add_argument("--data", default=str(REPO / "data" / "prepared" / "mnist"))
    parser.add_argument("--out", required=True, help="folder for the pictures and results.json")
    parser.add_argument("--set", nargs="*", default=[], help="METHOD.KEY=VALUE overrides (sweeps)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from genzoo.plots import image_grid  # noqa: F401 (PIL present)
    from PIL import Image

    use, data, overrides = get_use(TASK), load(args.data), parse_overrides(args.set)
    rows = []
    for name in args.methods.split(","):
        method = use.method(name)
        values = settings(name, args.budget, overrides.get(name, {}))
        config = method.Config.from_dict(values, f"uses.{TASK}.{name}")
        print(f"## {name} ({args.budget}): {json.dumps(config.to_dict())}", flush=True)
        start = time.perf_counter()
        outcome = method.run(UseInputs(TASK, name, data.name, data, config, torch.device("cpu"),
                                       log=lambda line, n=name: print(f"[{n}] {line}", flush=True)))
        wall = time.perf_counter() - start
        for picture, image in outcome.pictures.items():
            Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(out / f"{name}_{picture}.png")
        rows.append({"method": name, "wall_s": wall, "config": config.to_dict(), **outcome.metrics,
                     "notes": outcome.notes})
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    keys = [key for key, _ in use.columns]
    print("\n| method | " + " | ".join(header for _, header in use.columns) + " | wall s | published test error (%) |")
    print("|---" * (len(keys) + 3) + "|")
    for row in rows:
        cells = [f"{row[k]:.2f}" if k != "labels" else f"{row[k]:.0f}" for k in keys]
        print(f"| {row['method']} | " + " | ".join(cells) + f" | {row['wall_s']:.0f} | {PUBLISHED[row['method']]} |")


if __name__ == "__main__":
    main()
