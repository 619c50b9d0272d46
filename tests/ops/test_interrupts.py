"""A pipeline ended from outside, for real: cancelled through the Prefect API while it trains, and
SIGKILLed while it trains, then run again. Each pipeline runs in a subprocess against the session's
Prefect test harness, with its own local Ray, on the session project's MLflow store and DVC data; a
worker held by an injected fault (GENZOO_FAULT hold_after_epoch) makes "while it trains" exact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from processes import kill_marked

from tasks.schema import Tag

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 600  # a deadline for a loaded machine, not a timing claim


def client():
    from tasks.services import client as c

    return c()


def runs_owned_by(pid: int) -> list:
    """The MLflow runs a process opened (its parent run and the children)."""
    c = client()
    exp = c.get_experiment_by_name("genzoo")
    return c.search_runs([exp.experiment_id], f"tags.`{Tag.OWNER_PROCESS}` LIKE '{pid}:%'")


@pytest.fixture()
def launch(services, project, tmp_path):
    """launch(code) -> a Python subprocess (its own process group) running `code` in the repository
    against the test harness's API, with gan's worker held after epoch 1; whatever it and its
    descendants (Ray) leave is stopped afterwards."""
    from prefect.settings import PREFECT_API_URL

    marker = f"GENZOO_TEST_MARKER={uuid.uuid4().hex}"
    procs = []

    def start(code: str) -> subprocess.Popen:
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
               "GENZOO_FAULT": json.dumps({"family": "gan", "hold_after_epoch": 1}),
               marker.split("=")[0]: marker.split("=")[1]}
        log = open(tmp_path / f"proc{len(procs)}.log", "w")
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        proc.log = tmp_path / f"proc{len(procs)}.log"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    kill_marked(marker)


def wait_held(project: Path, proc: subprocess.Popen, seen: set[Path], failed=lambda: None) -> Path:
    """The scratch folder of the training the fault holds, once its epoch-1 checkpoint is written;
    `failed()` says why waiting is pointless (e.g. the flow run already ended)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        held = set((project / "ray_results" / "_scratch").glob("*/held")) - seen
        if held:
            return held.pop().parent
        assert proc.poll() is None, proc.log.read_text()[-4000:]
        why = failed()
        assert why is None, f"{why}\n{proc.log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, "no training held after epoch 1: " + proc.log.read_text()[-4000:]
        time.sleep(0.5)


def held_before(project: Path) -> set[Path]:
    return set((project / "ray_results" / "_scratch").glob("*/held"))


def test_a_cancel_through_the_prefect_api_leaves_no_run_running(launch, project):
    """What the UI's Cancel button does: the flow run goes Cancelling; the runner serving the flow
    stops its process and the flow's hooks end its MLflow runs KILLED."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelling

    seen = held_before(project)
    # A module entrypoint, as prefect.yaml's deployments have (a file path loads the flow's module anew).
    server = launch("from prefect.types.entrypoint import EntrypointType; from flows.pipeline import pipeline; "
                    "pipeline.serve(name='cancel-test', entrypoint_type=EntrypointType.MODULE_PATH)")
    params = {"families": ["gan"], "datasets": ["ring8"], "preset": "smoke", "register_models": False,
              "train_overrides": {"epochs": 3, "seed": 5}}
    with get_client(sync_client=True) as prefect:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                deployment = prefect.read_deployment_by_name("pipeline/cancel-test")
                break
            except Exception:
                assert server.poll() is None, server.log.read_text()[-4000:]
                assert time.monotonic() < deadline, "the flow was not served"
                time.sleep(0.5)
        run = prefect.create_flow_run_from_deployment(deployment.id, parameters=params)

        def ended():
            state = prefect.read_flow_run(run.id).state
            return f"the flow run ended {state.type}: {state.message}" if state and state.is_final() else None

        wait_held(project, server, seen, ended)
        prefect.set_flow_run_state(run.id, Cancelling(message="cancelled by the test"), force=True)
        while True:
            state = prefect.read_flow_run(run.id).state
            if state.type == StateType.CANCELLED:
                break
            assert not state.is_final(), f"flow run ended {state.type}: " + server.log.read_text()[-4000:]
            assert time.monotonic() < deadline, f"flow run still {state.type}: " + server.log.read_text()[-4000:]
            time.sleep(0.5)
    flow_run_id = str(run.id)
    c = client()
    exp = c.get_experiment_by_name("genzoo")
    deadline = time.monotonic() + WAIT_S  # the hook may still be writing when the state says CANCELLED
    while True:
        parents = c.search_runs([exp.experiment_id], f"tags.`{Tag.PREFECT_FLOW_RUN}` = '{flow_run_id}'")
        children = [ch for p in parents for ch in
                    c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{p.info.run_id}'")]
        if parents and children and all(r.info.status != "RUNNING" for r in parents + children):
            break
        assert time.monotonic() < deadline, [(r.info.run_name, r.info.status) for r in parents + children]
        time.sleep(0.5)
    gan = [ch for ch in children if ch.data.tags.get(Tag.FAMILY) == "gan"]
    assert len(parents) == 1 and len(gan) == 1, [r.info.run_name for r in parents + children]
    assert {parents[0].info.status, gan[0].info.status} == {"KILLED"}, server.log.read_text()[-3000:]
    # with the reason: the hook's ("flow run cancelled: ...") or the interrupted block's own
    assert gan[0].data.tags[Tag.FAILURE] and parents[0].data.tags[Tag.FAILURE]


def test_a_sigkilled_pipeline_is_swept_and_its_training_resumed(launch, project):
    """SIGKILL runs no hook: the killed pipeline's runs stay RUNNING until the next pipeline run
    starts, ends them KILLED (their process is gone), and resumes the training from epoch 1."""
    from flows.pipeline import pipeline

    args = dict(families=["gan"], datasets=["ring8"], preset="smoke", register_models=False,
                train_overrides={"epochs": 3, "seed": 7})
    seen = held_before(project)
    proc = launch(f"from flows.pipeline import pipeline; pipeline(**{args!r})")
    scratch = wait_held(project, proc, seen)
    assert json.loads((scratch / "progress.jsonl").read_text().splitlines()[-1])["epoch"] == 1
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stale = [r for r in runs_owned_by(proc.pid) if r.info.status == "RUNNING"]
    names = {r.info.run_name.split("-")[0] for r in stale}
    assert {"pipeline", "gan"} <= names, names  # the parent and gan's run (the baseline's may have ended)

    result = pipeline(**args)
    for run in stale:
        run = client().get_run(run.info.run_id)
        assert run.info.status == "KILLED" and "ended without closing it" in run.data.tags[Tag.FAILURE]
    row, = result.rows
    assert row.status == "FINISHED", row.reason
    assert row.resumed_from == [1] and row.reused_from is None
    tags = client().get_run(row.run_id).data.tags
    assert tags[Tag.RESUMED_FROM] == "1"
    assert [m.step for m in client().get_metric_history(row.run_id, "loss")] == [1, 2, 3]
    attempts = (project / "ray_results" / "_scratch" / row.ray_run / "attempts").read_text()
    assert "from epoch 1" in attempts  # the new run's worker started from the killed run's checkpoint
