"""Shared fixtures: the verified raw data folder, and a throw-away genzoo project with real services."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def raw_data_dir() -> Path:
    """../shared/data (or GENZOO_DATA_DIR): the original MNIST-family files."""
    folder = Path(os.environ.get("GENZOO_DATA_DIR") or REPO.parent / "shared" / "data")
    assert (folder / "mnist").is_dir(), f"the verified dataset files are expected in {folder}"
    return folder


@pytest.fixture(scope="session")
def project(tmp_path_factory, raw_data_dir) -> Path:
    """A fresh genzoo project: dvc.yaml, params.yaml (tiny synthetic sets), DVC with a local remote,
    MLflow in a temporary SQLite store, Prefect and Ray state inside it."""
    root = tmp_path_factory.mktemp("project")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "data").mkdir()
    for f in (REPO / "data").glob("*.py"):
        shutil.copy(f, root / "data" / f.name)  # the code the prepare stages depend on
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name in ("ring8", "grid25"):
        params["prepare"][name].update(n_train=2000, n_val=300, n_test=300)
    params["evaluate"].update(n_samples=500, likelihood_examples=200)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        "GENZOO_PROJECT_DIR": str(root),
        "GENZOO_DATA_DIR": str(raw_data_dir),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "PREFECT_HOME": str(root / ".prefect"),
    }
    os.environ.update(env)
    from genzoo.env import configure

    configure(root)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=root, check=True)
    subprocess.run([*dvc, "config", "core.analytics", "false"], cwd=root, check=True)
    subprocess.run([*dvc, "remote", "add", "-d", "local", str(root / ".dvcstore")], cwd=root, check=True)
    return root


@pytest.fixture(scope="session")
def services(project):
    """Prefect's test harness (a temporary API) and a local Ray instance, once per session."""
    from prefect.testing.utilities import prefect_test_harness

    from tasks.services import ensure_ray

    ensure_ray()
    with prefect_test_harness(server_startup_timeout=120):
        yield project
    import ray

    ray.shutdown()
