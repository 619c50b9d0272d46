"""The deployments of prefect.yaml, for real: a Prefect server, `prefect deploy --all`, a flow run
triggered through the API as the UI's Run button does, and a process worker that runs it.

Everything runs in subprocesses with an environment built here (a throw-away genzoo
project, its own Prefect home and MLflow store), so the test neither reads nor changes
the os.environ that tests/conftest.py's `project` fixture sets for the session.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from processes import free_port, kill_marked

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY = {
    "prepare": {"ring8": {"n_train": 2000, "n_val": 300, "n_test": 300}},
    "evaluate": {"n_samples": 500, "likelihood_examples": 200},
}




def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group this test started (the process and its children), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue






@pytest.fixture()
def ops_env(tmp_path, raw_data_dir):
    """A fresh genzoo project and the environment every subprocess of this test gets; afterwards,
    whatever those subprocesses left running is stopped."""
    from genzoo.env import QUIET
    from genzoo.scaffold import new_project

    (tmp_path / "project").mkdir()
    project = new_project(tmp_path / "project", TINY)
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GENZOO_", "MLFLOW_", "PREFECT_")) and k != "RAY_ADDRESS"}
    env.update(QUIET)
    env.update({
        "GENZOO_PROJECT_DIR": str(project),
        "GENZOO_DATA_DIR": str(raw_data_dir),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    yield env
    if sys.platform.startswith("linux"):
        kill_marked(f"GENZOO_PROJECT_DIR={project}")


@pytest.fixture()
def prefect_server(ops_env, tmp_path):
    """`prefect server start` on a free 127.0.0.1 port, healthy; stopped afterwards whatever happens."""
    port = ops_env["PREFECT_API_URL"].split(":")[-1].split("/")[0]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
                            env=ops_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # a loaded 2-core machine can take minutes
        while True:
            try:
                with urllib.request.urlopen(ops_env["PREFECT_API_URL"] + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prefect server not healthy after 300 s"
            time.sleep(0.5)
        yield ops_env["PREFECT_API_URL"]
    finally:
        stop(proc)
        log.close()


def prefect(env: dict, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=env["GENZOO_PROJECT_DIR"],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_deploy_run_from_the_api_and_worker_registers_the_model(ops_env, prefect_server, tmp_path):
    from mlflow import MlflowClient
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import StateType

    project = Path(ops_env["GENZOO_PROJECT_DIR"])
    prefect(ops_env, "work-pool", "create", "genzoo", "--type", "process")
    prefect(ops_env, "--no-prompt", "deploy", "--all")  # from the project folder, which holds no flows/

    with SyncPrefectClient(prefect_server) as client:
        deployments = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
        assert set(deployments) == {"pipeline/default", "train/default", "report/default", "retrain/default",
                                    "semi-supervised/default", "inpaint/default", "super-resolve/default",
                                    "translate/default"}
        assert deployments["inpaint/default"].entrypoint == "flows.apply.inpaint"
        assert deployments["super-resolve/default"].parameters == {"dataset": "mnist", "preset": "quick"}
        retrain = deployments["retrain/default"]
        assert retrain.work_pool_name == "genzoo" and retrain.entrypoint == "flows.retrain.retrain"
        assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in retrain.schedules] == [("0 3 * * 1", "UTC", True)]
        assert not deployments["pipeline/default"].schedules
        assert deployments["train/default"].parameters == {"family": "gan", "dataset": "ring8", "preset": "quick"}

        # What the UI's Run button (custom run) posts: the deployment with some parameters overridden.
        run = client.create_flow_run_from_deployment(
            deployments["pipeline/default"].id,
            parameters={"families": ["gan"], "datasets": ["ring8"], "preset": "smoke"})

        log = open(tmp_path / "worker.log", "w")
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "genzoo", "--run-once"],
                                  env=ops_env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            worker.wait(timeout=420)
        except subprocess.TimeoutExpired:
            pass
        finally:
            stop(worker)
            log.close()
        worker_log = (tmp_path / "worker.log").read_text()
        final = client.read_flow_run(run.id)
        assert final.state.type == StateType.COMPLETED, f"{final.state}\n{worker_log[-6000:]}"
        assert final.parameters["families"] == ["gan"] and final.parameters["preset"] == "smoke"

    uri = ops_env["MLFLOW_TRACKING_URI"]
    versions = MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions("name='gan-ring8'")
    assert len(versions) == 1, worker_log[-3000:]
    # the run worked in the throw-away project: its DVC outputs, its Ray results, its MLflow artifacts
    assert (project / "data" / "prepared" / "ring8" / "manifest.json").is_file()
    assert any((project / "ray_results").iterdir()) and any((project / "mlartifacts").iterdir())
