"""MLflow bookkeeping through the thread-safe client API (tasks run in parallel threads).

`tracked_run` is the one way a run is opened: the code that opens it owns it until it ends,
FINISHED, FAILED with a reason, or KILLED when the process is interrupted (Ctrl-C, a cancel).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

from tasks.schema import Tag

from tasks.services import client, experiment_id


def flatten(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(key, v))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def start_run(root: Path, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
    all_tags = dict(tags)
    if parent_id:
        all_tags["mlflow.parentRunId"] = parent_id
    run = client().create_run(experiment_id(root), run_name=name, tags=all_tags)
    return run.info.run_id


def log_params(run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client().log_batch(run_id, params=items[i:i + 100])


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    import math
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and math.isfinite(float(v))]
    if items:
        client().log_batch(run_id, metrics=items)


def log_history(run_id: str, history: list[dict[str, float]]) -> None:
    for row in history:
        log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


def end_run(run_id: str, status: str = "FINISHED", reason: str = "") -> None:
    c = client()
    if reason:
        c.set_tag(run_id, Tag.FAILURE, reason[:5000])
    c.set_terminated(run_id, status=status)


class TrackedRun:
    """An open MLflow run; `fail` decides how it will end."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.status, self.reason = "FINISHED", ""

    def fail(self, reason: str) -> None:
        self.status, self.reason = "FAILED", reason

    def tag(self, key: str, value: str) -> None:
        client().set_tag(self.run_id, key, value)

    def params(self, values: dict[str, str]) -> None:
        log_params(self.run_id, values)

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        log_metrics(self.run_id, values, step)

    def artifact(self, path: str | Path) -> None:
        client().log_artifact(self.run_id, str(path))


@contextlib.contextmanager
def tracked_run(root: Path | str, name: str, tags: dict[str, str], parent_id: str | None = None) -> Iterator[TrackedRun]:
    """Open a run for the `with` block; it ends with the block: as `fail` said, FAILED with the
    exception that escaped, or KILLED on an interrupt."""
    run = TrackedRun(start_run(Path(root), name, tags, parent_id))
    try:
        yield run
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        end_run(run.run_id, "KILLED", "interrupted")
        raise
    except BaseException as exc:
        end_run(run.run_id, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    else:
        end_run(run.run_id, run.status, run.reason)
