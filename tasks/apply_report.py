"""The report of an apply run, rebuilt from MLflow: the task's table (one row per method, the
generative ones beside the baselines), the families refused and why, each method's notes, and its
pictures. Written to reports/<run>/<task>.{md,html,json}, at reports/<task>.md (the latest of each
task) and gathered in reports/uses.md (every task's latest table)."""

from __future__ import annotations

import base64
import html
import json
import math
import shutil
import tempfile
from pathlib import Path

from prefect import task

from tasks.apply import METRIC_PREFIX, NOTES_FILE, PICTURES, MethodResult, UseTag
from tasks.schema import Tag


def rows_from_mlflow(parent_run_id: str) -> tuple[dict, list[MethodResult]]:
    from tasks.services import client

    c = client()
    parent = c.get_run(parent_run_id)
    children = c.search_runs([parent.info.experiment_id],
                             f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{UseTag.METHOD}` != ''",
                             order_by=["attributes.start_time ASC"])
    info = {"name": parent.info.run_name, "task": parent.data.tags.get(UseTag.TASK, ""),
            "dataset": parent.data.tags.get(Tag.DATASET, ""), "preset": parent.data.params.get("preset", "")}
    rows = []
    for run in children:
        tags, metrics = run.data.tags, run.data.metrics
        rows.append(MethodResult(tags.get(UseTag.TASK, ""), tags.get(UseTag.METHOD, ""), tags.get(Tag.DATASET, ""),
                                 status=run.info.status, reason=tags.get(Tag.FAILURE, ""), run_id=run.info.run_id,
                                 seconds=metrics.get("seconds", math.nan), registered=tags.get(Tag.REGISTERED),
                                 metrics={k[len(METRIC_PREFIX):]: v for k, v in metrics.items()
                                          if k.startswith(METRIC_PREFIX)}))
    return info, rows


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _layout(columns: tuple[tuple[str, str], ...]) -> tuple[list[str], list[tuple[str, str]]]:
    """A task's columns as (groups, measures): keys `GROUP.MEASURE` (e.g. inpaint's `bottom.psnr`) give one
    line per method and group with a column per measure; plain keys, one line per method ([""] groups)."""
    if not all("." in key for key, _ in columns):
        return [""], list(columns)
    groups = list(dict.fromkeys(key.split(".", 1)[0] for key, _ in columns))
    measures, seen = [], set()
    for key, title in columns:
        group, measure = key.split(".", 1)
        if measure not in seen:
            seen.add(measure)
            measures.append((measure, title[len(group):].strip() if title.startswith(group) else title))
    return groups, measures


def table(info: dict, rows: list[MethodResult]) -> list[list[str]]:
    """Header and the lines of each method (one per group of its measures where the task has groups):
    the task's columns, then time and the registered version."""
    from genzoo.uses import get_use

    use = get_use(info["task"])
    groups, measures = _layout(use.columns)
    grouped = groups != [""]
    head = ["method", "kind"] + (["on"] if grouped else []) + [title for _, title in measures] + ["seconds", "registered"]
    body = []
    for r in rows:
        method = use.methods.get(r.method)
        kind = "generative" if method is None or method.generative else "baseline"
        if not r.ok:
            body.append([r.method, kind, f"FAILED: {r.reason}"] + [""] * (len(head) - 3))
            continue
        for group in groups:
            keys = [f"{group}.{m}" if grouped else m for m, _ in measures]
            if grouped and not any(k in r.metrics for k in keys):
                continue  # a method measured on other groups (e.g. a table's method on no image mask)
            body.append([r.method, kind] + ([group] if grouped else []) + [_fmt(r.metrics.get(k)) for k in keys]
                        + [_fmt(r.seconds), r.registered or "-"])
    return [head] + body


def markdown(info: dict, rows: list[MethodResult], notes: dict[str, list[str]], pictures: dict[str, list[str]]) -> str:
    from genzoo.uses import get_use

    use = get_use(info["task"])
    head, *body = table(info, rows)
    lines = [f"# {info['task']} on {info['dataset']} ({info['preset']}): {info['name']}", "", use.summary, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    for r in rows:
        method = use.methods.get(r.method)
        lines += ["", f"**{r.method}**: {method.summary if method else ''}"]
        lines += [f"- {note}" for note in notes.get(r.method, [])]
        lines += [f"![{r.method} {Path(p).stem}]({p})" for p in pictures.get(r.method, [])]
    if use.refusals:
        lines += ["", "Families that cannot do this task:"]
        lines += [f"- {family}: {why}" for family, why in use.refusals.items()]
    return "\n".join(lines) + "\n"


def html_page(info: dict, rows: list[MethodResult], notes: dict[str, list[str]], folder: Path,
              pictures: dict[str, list[str]]) -> str:
    from genzoo.uses import get_use

    use = get_use(info["task"])
    head, *body = table(info, rows)
    cells = "".join(f"<tr>{''.join(f'<td>{html.escape(c)}</td>' for c in line)}</tr>" for line in body)
    parts = []
    for r in rows:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in notes.get(r.method, []))
        figs = "".join(f'<figure><img src="data:image/png;base64,{base64.b64encode((folder / p).read_bytes()).decode()}">'
                       f"<figcaption>{html.escape(Path(p).stem)}</figcaption></figure>" for p in pictures.get(r.method, []))
        parts.append(f"<h2>{html.escape(r.method)}</h2><ul>{items}</ul>{figs}")
    refused = "".join(f"<li>{html.escape(f)}: {html.escape(w)}</li>" for f, w in use.refusals.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(info['name'])}</title>
<style>body{{font-family:sans-serif}}td,th{{border:1px solid #ccc;padding:3px 6px}}table{{border-collapse:collapse}}
figure{{display:inline-block;margin:4px}}img{{image-rendering:pixelated;max-width:480px}}</style></head><body>
<h1>{html.escape(info['task'])} on {html.escape(info['dataset'])} ({html.escape(info['preset'])})</h1>
<p>{html.escape(use.summary)}</p><table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{cells}</table>
{''.join(parts)}{f'<h2>Families that cannot do this task</h2><ul>{refused}</ul>' if refused else ''}</body></html>
"""


def write_report(parent_run_id: str, reports_dir: Path) -> Path:
    from tasks.services import client

    info, rows = rows_from_mlflow(parent_run_id)
    out = Path(reports_dir) / info["name"]
    (out / PICTURES).mkdir(parents=True, exist_ok=True)
    c = client()
    notes: dict[str, list[str]] = {}
    pictures: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in rows:
            if not r.ok:
                continue
            try:
                notes[r.method] = json.loads(Path(c.download_artifacts(r.run_id, NOTES_FILE, tmp)).read_text())
                folder = Path(c.download_artifacts(r.run_id, PICTURES, str(Path(tmp) / r.method)))
            except Exception:  # a run without notes or pictures
                continue
            for png in sorted(folder.glob("*.png")):
                target = out / PICTURES / f"{r.method}-{png.name}"
                shutil.copy(png, target)
                pictures.setdefault(r.method, []).append(f"{PICTURES}/{target.name}")
    name = info["task"]
    text = markdown(info, rows, notes, pictures)
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.html").write_text(html_page(info, rows, notes, out, pictures))
    (out / f"{name}.json").write_text(json.dumps({"run": info, "rows": [
        {"method": r.method, "status": r.status, "reason": r.reason, "seconds": r.seconds, "registered": r.registered,
         **r.metrics} for r in rows]}, indent=2) + "\n")
    for suffix in (".md", ".html", ".json"):
        c.log_artifact(parent_run_id, str(out / f"{name}{suffix}"))
    latest = Path(reports_dir) / f"{name}.md"  # the latest of each task, its pictures linked from its run's folder
    latest.write_text(text.replace(f"]({PICTURES}/", f"]({info['name']}/{PICTURES}/"))
    gather(Path(reports_dir))
    return out / f"{name}.md"


def gather(reports_dir: Path) -> Path:
    """reports/uses.md: the latest table of every task run so far."""
    from genzoo.uses import TASKS

    parts = ["# What the generative models are for: the latest run of each task", ""]
    for name in TASKS:
        path = reports_dir / f"{name}.md"
        parts.append(path.read_text() if path.is_file() else f"# {name}\n\nnot run yet: `genzoo apply {name}`\n")
    out = reports_dir / "uses.md"
    out.write_text("\n".join(parts))
    return out


@task(name="apply-report", retries=2, retry_delay_seconds=2)
def report(parent_run_id: str, reports_dir: str) -> str:
    return str(write_report(parent_run_id, Path(reports_dir)))
