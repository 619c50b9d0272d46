"""Print the recipe sweeps (benchmarks/results/recipes.jsonl, written by benchmarks/recipes.py) as
Markdown tables, one per family and dataset, for BENCHMARKS.md.

    python benchmarks/recipes_summary.py
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "recipes.jsonl"


def _f(v, fmt: str = "{:.4g}") -> str:
    return "-" if v is None else fmt.format(v)


def measures(r: dict) -> str:
    parts = []
    if "test_nll" in r:
        parts.append(f"NLL {r['test_nll']:.2f}")
    if "modes_captured" in r:
        parts.append(f"modes {r['modes_captured']}/{r['modes_total']}, HQ {100 * r['high_quality_fraction']:.1f} %, "
                     f"KL {r['kl_to_uniform']:.3f}")
    if "classes_hit" in r:
        parts.append(f"classes {r['classes_hit']}/10, max {100 * r['max_class_share']:.1f} %")
    if "parzen_ll" in r:
        parts.append(f"Parzen {r['parzen_ll']:.1f}")
    if "fid" in r:
        parts.append(f"FID {r['fid']:.1f}")
    return "; ".join(parts)


def main() -> int:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for line in RESULTS.read_text().splitlines():
        r = json.loads(line)
        groups[r["family"], r["dataset"]].append(r)
    for (family, dataset), rows in sorted(groups.items()):
        print(f"\n**{family} on {dataset}** ({len(rows)} runs)\n")
        print("| date | budget | settings (`--set`) | steps | train s | threads | measures |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            settings = " ".join(r.get("set") or []) or "(recipe as resolved)"
            print(f"| {r['date']} | {r['recipe'].split('/')[-1]} | {settings} | {r.get('steps', '-')} | "
                  f"{_f(r.get('train_seconds'), '{:.0f}')} | {r.get('threads', 1)} | {measures(r)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
