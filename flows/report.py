"""The `report` flow: rebuild the comparison report of a pipeline run from MLflow.

The evaluation numbers live in MLflow (each training's child run); this flow turns a
pipeline run's numbers and sample pictures into reports/<run>/comparison.{md,html,json}
and reports/metrics.json again, e.g. after the report format changed. In the Prefect UI
it is the `report/default` deployment; from a shell, `genzoo report [RUN]`.
"""

from __future__ import annotations

from prefect import flow

from genzoo.env import configure


@flow(name="report", log_prints=True)
def report(run: str | None = None) -> str:
    """Rebuild the report of pipeline run `run` (a run name or id; default: the latest)."""
    from tasks.report import find_pipeline_run
    from tasks.report import report as report_task

    root = configure()
    return report_task(find_pipeline_run(run), str(root / "reports"))
