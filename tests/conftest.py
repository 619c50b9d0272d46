"""Shared fixtures: the verified raw data folder, and a throw-away genzoo project with real services."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs two workers) each worker gets its share of the CPUs (at least
    one) for torch's intra-op threads, so the workers' unit tests do not oversubscribe the machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


# Test modules that start real services, longest first (seconds of one run under two workers, `--junitxml`
# sums per module, 2026-12-02: 241, 211, 82, 79, 73, 71, 64, 60, 40, 24). `make test` hands out whole modules
# (--dist loadfile) in collection order (--no-loadscope-reorder), so putting these first lets the workers end
# together (longest-processing-time first) instead of one running the longest module alone at the end.
LONGEST_FIRST = (
    "tests/pipeline/test_distributed_and_serving.py", "tests/pipeline/test_apply.py", "tests/ops/test_security.py",
    "tests/ops/test_interrupts.py", "tests/pipeline/test_pipeline.py", "tests/ops/test_ray_cluster.py",
    "tests/ops/test_deployments.py", "tests/ops/test_bad_input.py", "tests/models/test_gan_recipes.py",
    "tests/pipeline/test_reproduce.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: on a shared 2-core machine extra intra-op threads only add contention
    (measured 10x slower under load). Modules opt in with pytestmark usefixtures."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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
    from genzoo.scaffold import new_project

    root = new_project(tmp_path_factory.mktemp("project"), {
        "prepare": {**{name: {"n_train": 2000, "n_val": 300, "n_test": 300} for name in ("ring8", "grid25")},
                    **{name: {"max_examples": 600} for name in ("mnist", "binarized-mnist")}},  # genzoo apply's tests
        "evaluate": {"n_samples": 500, "n_image_samples": 200, "likelihood_examples": 200, "parzen_examples": 100,
                     "real_examples": 180},
        "evaluators": {"digits": {"epochs": 3}, "mnist": {"epochs": 1}, "binarized-mnist": {"epochs": 1}},
    })
    env = {
        "GENZOO_PROJECT_DIR": str(root),
        "GENZOO_DATA_DIR": str(raw_data_dir),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "PREFECT_HOME": str(root / ".prefect"),
    }
    os.environ.update(env)
    from genzoo.env import configure

    configure(root)
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
