"""MLflow bookkeeping through the thread-safe client API (tasks run in parallel threads).

`tracked_run` is the one way a run is opened: the code that opens it owns it until it ends,
FINISHED, FAILED with a reason, or KILLED when the process is interrupted (Ctrl-C, a cancel).

Two safety nets for what a `with` block cannot see:
- a flow that is cancelled, crashes or fails runs `close_runs_hook` (Prefect's on_cancellation /
  on_crashed / on_failure): every run still RUNNING under that flow run (found by the Prefect flow
  run id tagged on the parent run) ends KILLED or FAILED, the children of other threads included;
- a process killed outright (SIGKILL, power loss) runs nothing: each run is tagged with the host
  and the process (pid and start time) that opened it, and `sweep_stale_runs` (called when a
  pipeline run starts) ends KILLED the RUNNING runs of this host whose process is gone. Runs opened
  on other hosts are left alone: from here it cannot be told whether their process lives.
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

from tasks.schema import Tag

from tasks.services import EXPERIMENT, client, experiment_id


def flatten(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(key, v))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def owner_tags() -> dict[str, str]:
    """Which process opens a run: this host, and this process's pid with its start time (a pid alone
    may be reused by another process later)."""
    import psutil

    me = psutil.Process()
    return {Tag.OWNER_HOST: socket.gethostname(), Tag.OWNER_PROCESS: f"{me.pid}:{me.create_time():.3f}"}


def owner_alive(owner: str) -> bool:
    """Whether the process "<pid>:<start time>" of this host still runs."""
    import psutil

    pid, _, started = owner.partition(":")
    try:
        return abs(psutil.Process(int(pid)).create_time() - float(started)) < 1.0
    except (psutil.NoSuchProcess, ValueError):
        return False


def start_run(root: Path, name: str, tags: dict[str, str], parent_id: str | None = None) -> str:
    all_tags = {**owner_tags(), **tags}
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


def sweep_stale_runs(root: Path | str) -> list[str]:
    """End KILLED every RUNNING run of the experiment opened on this host by a process that is gone;
    returns their ids. Safe beside live pipelines: their processes run."""
    host = socket.gethostname()
    runs = client().search_runs([experiment_id(Path(root))],
                                f"attributes.status = 'RUNNING' and tags.`{Tag.OWNER_HOST}` = '{host}'",
                                max_results=5000)
    swept = []
    for run in runs:
        owner = run.data.tags.get(Tag.OWNER_PROCESS, "")
        if owner and not owner_alive(owner):
            end_run(run.info.run_id, "KILLED",
                    f"stale: its process (pid {owner.partition(':')[0]} on {host}) ended without closing it")
            swept.append(run.info.run_id)
    return swept


def end_flow_run_runs(flow_run_id: str, status: str, reason: str) -> list[str]:
    """End `status` every run still RUNNING under Prefect flow run `flow_run_id` (the parent runs it
    or a subflow of it opened, and their children); returns their ids."""
    c = client()
    exp = c.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    parents = {}
    for tag in (Tag.PREFECT_FLOW_RUN, Tag.PREFECT_ROOT_FLOW_RUN):
        for run in c.search_runs([exp.experiment_id], f"tags.`{tag}` = '{flow_run_id}'", max_results=1000):
            parents[run.info.run_id] = run
    ended = []
    for parent_id, parent in parents.items():
        children = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and "
                                 "attributes.status = 'RUNNING'", max_results=5000)
        for run in [*children, parent]:
            if c.get_run(run.info.run_id).info.status == "RUNNING":
                end_run(run.info.run_id, status, reason)
                ended.append(run.info.run_id)
    return ended


def close_runs_hook(status: str) -> Callable:
    """A Prefect flow state hook (on_cancellation, on_crashed, on_failure) that ends the flow run's
    MLflow runs still RUNNING with `status` and the state's message as the reason. It may run in
    another process than the flow's (a worker runs on_cancellation), so it configures the env first."""

    def close_runs(flow, flow_run, state) -> None:
        from genzoo.env import configure

        configure()
        message = (state.message or "").strip() or "no message"
        end_flow_run_runs(str(flow_run.id), status, f"flow run {state.type.value.lower()}: {message}")

    close_runs.__name__ = f"close_runs_{status.lower()}"
    return close_runs


@contextlib.contextmanager
def tracked_run(root: Path | str, name: str, tags: dict[str, str], parent_id: str | None = None) -> Iterator[TrackedRun]:
    """Open a run for the `with` block; it ends with the block: as `fail` said, FAILED with the
    exception that escaped, or KILLED on an interrupt."""
    from prefect.exceptions import TerminationSignal

    run = TrackedRun(start_run(Path(root), name, tags, parent_id))
    try:
        yield run
    except (KeyboardInterrupt, SystemExit, GeneratorExit, TerminationSignal) as exc:  # Ctrl-C, SIGTERM, a cancel
        end_run(run.run_id, "KILLED", f"interrupted ({type(exc).__name__})")
        raise
    except BaseException as exc:
        end_run(run.run_id, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    else:
        end_run(run.run_id, run.status, run.reason)


def first_line(exc: BaseException) -> str:
    """An exception as a run's failure reason: its type and the first line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def new_run_folder(root: Path, prefix: str) -> tuple[str, Path, str]:
    """A parent run's name (<prefix>-<UTC time>-<tag>), its folder under runs/ (created) and the tag."""
    import datetime as dt
    import uuid

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    tag = uuid.uuid4().hex[:6]
    name = f"{prefix}-{stamp}-{tag}"
    folder = Path(root) / "runs" / name
    folder.mkdir(parents=True, exist_ok=True)
    return name, folder, tag


def flow_run_tags() -> dict[str, str]:
    """The Prefect flow run (and its outermost one) a parent run belongs to, so the flows' hooks find it
    (close_runs_hook); none outside a flow run."""
    from prefect.runtime import flow_run

    if not flow_run.get_id():
        return {}
    return {Tag.PREFECT_FLOW_RUN: str(flow_run.get_id()), Tag.PREFECT_ROOT_FLOW_RUN: str(flow_run.get_root_flow_run_id())}
