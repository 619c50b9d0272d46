"""The comparison report of a pipeline run, rebuilt from MLflow (so `genzoo report RUN` and the
flow's last step are one code path): Markdown + self-contained HTML under reports/<run>/, a DVC
metrics file, and copies logged to the parent MLflow run."""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from pathlib import Path

from prefect import task

from tasks.schema import ModelResult, Tag

COLUMNS = [  # (header, row key)
    ("branch", "branch"), ("family", "family"), ("dataset", "dataset"), ("status", "status"),
    ("likelihood", "likelihood_method"), ("test NLL (nats)", "test_nll"), ("bits/dim", "test_bits_per_dim"),
    ("Parzen (nats, legacy)", "parzen_ll"), ("FID", "fid"), ("Inception FID", "inception_fid"), ("KID", "kid"),
    ("precision", "precision"), ("recall", "recall"), ("density", "density"), ("coverage", "coverage"),
    ("energy dist.", "energy_distance"), ("marginal W1", "marginal_w1"), ("corr. error", "correlation_error"),
    ("co-occur. error", "cooccurrence_error"),
    ("modes", "modes"), ("high-quality", "high_quality_fraction"), ("KL(modes||unif)", "kl_to_uniform"),
    ("classes", "classes"), ("max class share", "max_class_share"), ("beats baseline", "beats_baseline"),
    ("train s", "train_seconds"), ("ms/sample", "ms_per_sample"), ("registered", "registered"),
]
ALWAYS = {"branch", "family", "dataset", "status", "beats_baseline", "train_seconds", "ms_per_sample", "registered"}


def columns(rows: list[ModelResult]) -> list[tuple[str, str]]:
    """The columns that apply to these rows: the identity and cost ones always, a measure only when
    some row has it (vector measures for vectors, FID & co. for images, Inception FID when asked for)."""
    return [(h, k) for h, k in COLUMNS if k in ALWAYS or any(r.get(k) is not None for r in rows)]


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.4g}" if abs(v) < 10000 else f"{v:.0f}"
    return str(v)


def rows_from_mlflow(parent_run_id: str) -> tuple[dict, list[ModelResult], list[str]]:
    """(parent info, one row per child run in taxonomy order, skipped pairings)."""
    from genzoo import baselines
    from models import FAMILIES
    from tasks.services import client

    c = client()
    parent = c.get_run(parent_run_id)
    children = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                             max_results=1000)
    rows = [ModelResult.from_mlflow(ch) for ch in children]
    order = {name: i for i, name in enumerate(FAMILIES)} | {baselines.NAME: -1}
    rows.sort(key=lambda r: (r.dataset, order.get(r.family, 99)))
    reference = {r.dataset: r for r in rows if r.family == baselines.NAME and r.ok}
    for r in rows:
        if r.family != baselines.NAME and r.dataset in reference and r.ok:
            verdict = baselines.beats_baseline(r.metrics, reference[r.dataset].metrics)
            r.metrics["beats_baseline"] = None if verdict is None else ("yes" if verdict else "NO")
    skipped = json.loads(parent.data.tags.get(Tag.SKIPPED, "[]"))
    info = {"run_id": parent_run_id, "name": parent.info.run_name, "preset": parent.data.params.get("preset", "")}
    return info, rows, skipped


def markdown(info: dict, rows: list[ModelResult], skipped: list[str]) -> str:
    lines = [f"# genzoo comparison: {info['name']} ({info['preset']})", "",
             "| " + " | ".join(h for h, _ in columns(rows)) + " |", "|" + "---|" * len(columns(rows))]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for _, k in columns(rows)) + " |" for r in rows]
    failed = [r for r in rows if not r.ok]
    if failed:
        lines += ["", "Failed trainings:"] + [f"- {r.name}: {r.reason}" for r in failed]
    if skipped:
        lines += ["", "Skipped pairings:"] + [f"- {s}" for s in skipped]
    lines += ["", "Protocols: test NLL is the family's own likelihood (exact, bound or estimate, see `likelihood`) "
              "in nats per example; Parzen is the legacy Gaussian-window estimate (Goodfellow et al. 2014; "
              "Theis et al. 2016 show it can rank models wrongly); FID/KID/precision/recall/density/coverage use "
              "the dataset's own evaluator network (`evaluator-<dataset>` in MLflow), so they compare models "
              "within genzoo, not with published Inception scores (Inception FID, when evaluate.fid_network is "
              "'inception', uses the standard FID Inception-v3); vectors: energy distance (Szekely & Rizzo), mean "
              "per-feature Wasserstein-1, correlation (real) or co-occurrence (binary) error of the samples "
              "against the test rows (genzoo/evaluation/vectors.py); modes: PacGAN/VEEGAN protocol."]
    return "\n".join(lines) + "\n"


def html_page(info: dict, rows: list[ModelResult], skipped: list[str], pictures: dict[str, bytes]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in columns(rows))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(k)))}</td>" for _, k in columns(rows)) + "</tr>"
                   for r in rows)
    figs = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{html.escape(key)}">'
        f"<figcaption>{html.escape(key)}</figcaption></figure>" for key, png in pictures.items())
    notes = "".join(f"<li>{html.escape(s)}</li>" for s in skipped)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>genzoo {html.escape(info['name'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}figure{{display:inline-block;margin:6px}}
img{{max-width:260px}}</style></head><body><h1>genzoo comparison: {html.escape(info['name'])}
({html.escape(info['preset'])})</h1><table><tr>{head}</tr>{body}</table>
{f'<h2>Skipped pairings</h2><ul>{notes}</ul>' if notes else ''}<h2>Samples</h2>{figs}</body></html>
"""


def find_pipeline_run(run: str | None = None) -> str:
    """The id of the pipeline (parent) run named or identified by `run`; the latest one when None."""
    from tasks.services import EXPERIMENT, client, tracking_uri

    c = client()
    exp = c.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        raise LookupError(f"no genzoo runs in {tracking_uri()} yet: run `genzoo run` first")
    if run:
        found = c.search_runs([exp.experiment_id], f"attributes.run_name = '{run}'") or \
            c.search_runs([exp.experiment_id], f"attributes.run_id = '{run}'")
    else:
        found = c.search_runs([exp.experiment_id], "tags.`genzoo.preset` != ''",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        raise LookupError(f"no pipeline run named '{run}' in {tracking_uri()}")
    return found[0].info.run_id


def write_report(parent_run_id: str, reports_dir: Path) -> Path:
    from tasks.services import client

    info, rows, skipped = rows_from_mlflow(parent_run_id)
    out = Path(reports_dir) / info["name"]
    out.mkdir(parents=True, exist_ok=True)
    c = client()
    pictures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in rows:
            if r.ok:
                try:
                    pictures[r.name] = Path(c.download_artifacts(r.run_id, "samples.png", tmp)).read_bytes()
                except Exception:  # a run without a picture (e.g. failed before sampling)
                    pass
    text = markdown(info, rows, skipped)
    (out / "comparison.md").write_text(text)
    (out / "comparison.html").write_text(html_page(info, rows, skipped, pictures))
    table = [r.to_dict() for r in rows]
    (out / "comparison.json").write_text(json.dumps({"run": info, "rows": table, "skipped": skipped}, indent=2) + "\n")
    numbers = {f"{r['family']}-{r['dataset']}": {k: v for k, v in r.items() if isinstance(v, (int, float))
                                                   and not isinstance(v, bool) and math.isfinite(v)}
               for r in table}
    (out / "metrics.json").write_text(json.dumps(numbers, indent=2, sort_keys=True) + "\n")
    # the latest report at fixed paths: what dvc.yaml declares as metrics
    for name in ("comparison.md", "comparison.html", "metrics.json"):
        (Path(reports_dir) / name).write_text((out / name).read_text())
    for name in ("comparison.md", "comparison.html", "comparison.json", "metrics.json"):
        c.log_artifact(parent_run_id, str(out / name))
    return out / "comparison.md"


@task(name="report", retries=2, retry_delay_seconds=2)
def report(parent_run_id: str, reports_dir: str) -> str:
    return str(write_report(parent_run_id, Path(reports_dir)))
