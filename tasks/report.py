"""The comparison table at the end of a pipeline run: printed, saved under reports/, logged to MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path

from prefect import task

COLUMNS = [
    ("family", "family"), ("dataset", "dataset"), ("status", "status"), ("likelihood", "likelihood_method"),
    ("test NLL (nats)", "test_nll"), ("bits/dim", "test_bits_per_dim"), ("modes", "modes"),
    ("high-quality", "high_quality_fraction"), ("KL(modes||unif)", "kl_to_uniform"),
    ("train s", "train_seconds"), ("ms/sample", "ms_per_sample"), ("registered", "registered"),
]


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def comparison_table(rows: list[dict]) -> str:
    """A Markdown table, one row per (family, dataset)."""
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        r = dict(r)
        if "modes_captured" in r:
            r["modes"] = f"{r['modes_captured']}/{r['modes_total']}"
        if "sample_seconds_per_sample" in r:
            r["ms_per_sample"] = 1000 * r["sample_seconds_per_sample"]
        lines.append("| " + " | ".join(_fmt(r.get(k)) for _, k in COLUMNS) + " |")
    return "\n".join(lines)


@task(name="report")
def report(rows: list[dict], skipped: list[str], out_dir: str, parent_run_id: str, title: str) -> str:
    from tasks.services import client

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\n{comparison_table(rows)}\n"
    failed = [r for r in rows if r["status"] != "FINISHED"]
    if failed:
        text += "\nFailed trainings:\n" + "".join(f"- {r['family']}-{r['dataset']}: {r.get('reason', '')}\n" for r in failed)
    if skipped:
        text += "\nSkipped pairings:\n" + "".join(f"- {s}\n" for s in skipped)
    (out / "comparison.md").write_text(text)
    (out / "comparison.json").write_text(json.dumps({"rows": rows, "skipped": skipped}, indent=2, default=str) + "\n")
    latest = out.parent / "latest.md"
    latest.write_text(text)
    c = client()
    c.log_artifact(parent_run_id, str(out / "comparison.md"))
    c.log_artifact(parent_run_id, str(out / "comparison.json"))
    print("\n" + text, flush=True)
    return str(out / "comparison.md")
