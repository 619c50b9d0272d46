"""A real multi-node Ray cluster: a head and one worker node started here with `ray start`, and a
pipeline run (`genzoo run`, in a subprocess) that uses it through RAY_ADDRESS.

Each node has 1 CPU and each training asks for 1 CPU, so the two trainings of the run can only
run side by side on different nodes: the test checks that the Ray Train workers really ran on
both nodes of the cluster, and that both models reached the project's MLflow registry.

Every process here (the `ray start` daemons, the pipeline run and whatever they spawn) carries
a marker in its environment; afterwards the processes carrying it are stopped by id, so the
test never touches a Ray instance it did not start (`ray stop` would stop every one on the machine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from processes import free_port, kill_marked

BIN = Path(sys.executable).parent
TINY = {"prepare": {"ring8": {"n_train": 2000, "n_val": 300, "n_test": 300}},
        "evaluate": {"n_samples": 500, "likelihood_examples": 200}}

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to stop its processes")

NODES_SCRIPT = """
import json, os, ray
ray.init(address=os.environ["RAY_ADDRESS"], include_dashboard=False, configure_logging=False, log_to_driver=False)
print("NODES=" + json.dumps(sorted((n["NodeID"], n["NodeManagerAddress"], n["Resources"].get("CPU", 0))
                                  for n in ray.nodes() if n["Alive"])))
"""








def run(cmd: list[str], env: dict, timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def alive_nodes(env: dict) -> list[tuple[str, str, float]]:
    out = run([sys.executable, "-c", NODES_SCRIPT], env, timeout=60).stdout
    return [tuple(n) for n in json.loads(out.split("NODES=")[-1].splitlines()[0])]


@pytest.fixture()
def cluster(tmp_path, raw_data_dir):
    """A throw-away project and a 2-node local Ray cluster (1 CPU per node); yields the subprocess
    environment (RAY_ADDRESS included). Everything started is stopped afterwards, even on failure."""
    from genzoo.env import QUIET, RAY_TOKEN_FILE, ray_token
    from genzoo.scaffold import new_project

    marker = f"GENZOO_RAY_CLUSTER_TEST={uuid.uuid4().hex}"
    # Short temp dirs: Ray puts unix sockets under them (108-byte path limit).
    temp = Path(tempfile.mkdtemp(prefix="gzrc-", dir="/tmp"))
    (tmp_path / "project").mkdir()
    project = new_project(tmp_path / "project", TINY)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GENZOO_", "MLFLOW_", "PREFECT_", "RAY_"))}
    env.update(QUIET)
    env.update({
        marker.split("=")[0]: marker.split("=")[1],
        "GENZOO_PROJECT_DIR": str(project),
        "GENZOO_DATA_DIR": str(raw_data_dir),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "PREFECT_HOME": str(project / ".prefect"),
        "RAY_USAGE_STATS_ENABLED": "0",
        # Token authentication (QUIET's RAY_AUTH_MODE=token) as README's cluster set-up: every node
        # and the pipeline read the project's token file.
        "RAY_AUTH_TOKEN_PATH": str(ray_token(project / RAY_TOKEN_FILE)),
        "TMPDIR": str(temp),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    ray = str(BIN / "ray")
    common = ["--num-cpus", "1", "--num-gpus", "0", "--object-store-memory", str(100 * 1024 ** 2),
              "--disable-usage-stats"]
    try:
        head = run([ray, "start", "--head", "--port", str(free_port()), "--include-dashboard=false",
                    "--temp-dir", str(temp / "head"), *common], env, timeout=120)
        found = re.search(r"ray start --address='([^']+)'", head.stdout)
        assert found, f"no cluster address in `ray start --head` output:\n{head.stdout}"
        address = found.group(1)
        run([ray, "start", "--address", address, "--temp-dir", str(temp / "worker"), *common], env, timeout=120)
        env["RAY_ADDRESS"] = address
        deadline = time.monotonic() + 60
        while len(nodes := alive_nodes(env)) < 2:
            assert time.monotonic() < deadline, f"the worker node did not join: {nodes}"
            time.sleep(1)
        yield env
    finally:
        kill_marked(marker)
        shutil.rmtree(temp, ignore_errors=True)


def test_pipeline_trains_on_both_nodes_of_a_ray_cluster(cluster):
    from mlflow import MlflowClient

    env = cluster
    project = Path(env["GENZOO_PROJECT_DIR"])
    nodes = alive_nodes(env)
    assert len(nodes) == 2 and [cpus for _, _, cpus in nodes] == [1.0, 1.0], nodes
    cluster_ids = {node_id for node_id, _, _ in nodes}

    proc = subprocess.run([str(BIN / "genzoo"), "run", "--families", "gan,vae", "--datasets", "ring8",
                           "--preset", "smoke", "--set", "train.cpus_per_worker=1"],
                          env=env, cwd=project, capture_output=True, text=True, timeout=400)
    log = f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, log

    scratch = project / "ray_results" / "_scratch"
    placed = {d.name: (d / "worker-0.node").read_text().strip() for d in sorted(scratch.iterdir())
              if (d / "worker-0.node").exists()}
    assert sorted(name.rsplit("-", 1)[0] for name in placed) == ["gan-ring8", "vae-ring8"], (placed, log)
    assert set(placed.values()) == cluster_ids, f"trainings ran on {placed}, cluster nodes {nodes}"
    assert len(alive_nodes(env)) == 2  # neither node died along the way

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    for name in ("gan-ring8", "vae-ring8"):
        assert client.search_model_versions(f"name='{name}'"), f"{name} not registered:\n{log}"
