"""Connections to the real services: Ray (local or RAY_ADDRESS) and MLflow (local SQLite or MLFLOW_TRACKING_URI)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

_lock = threading.Lock()
EXPERIMENT = "genzoo"


def ensure_ray() -> bool:
    """Connect to RAY_ADDRESS when set, else start (or reuse) a local Ray instance.
    Returns True when this call connected (so the caller owns the shutdown)."""
    import ray

    with _lock:
        if ray.is_initialized():
            return False
        address = os.environ.get("RAY_ADDRESS") or None
        # Worker output goes to Ray's log files, not this terminal: the progress display says what
        # trains (tasks/progress.py) and genzoo.startup.log_dir() names where the logs are.
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address is None:
            # Keep the object store modest: the datasets here are small and /dev/shm is shared.
            kwargs["object_store_memory"] = int(os.environ.get("GENZOO_RAY_OBJECT_STORE_BYTES", 1_000_000_000))
        before = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
        ray.init(address=address, **kwargs)
        if before is not None:  # NOTE: ray.init replaces the SIGTERM handler with sys.exit; keep Prefect's
            signal.signal(signal.SIGTERM, before)  # (a cancel from the UI then ends the flow run Cancelled)
        return True


@contextlib.contextmanager
def ray_session():
    """Ray for the `with` block: the cluster already connected, RAY_ADDRESS's, or a local one this
    block starts and stops."""
    owns = ensure_ray()
    try:
        yield
    finally:
        if owns:
            import ray

            ray.shutdown()


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def tracking_uri() -> str:
    return os.environ["MLFLOW_TRACKING_URI"]


def client():
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def experiment_id(root: Path) -> str:
    """The 'genzoo' experiment; with a local store its artifacts live in <project>/mlartifacts."""
    c = client()
    with _lock:
        exp = c.get_experiment_by_name(EXPERIMENT)
        if exp is not None:
            return exp.experiment_id
        local = tracking_uri().startswith(("sqlite:", "file:")) or "://" not in tracking_uri()
        location = (root / "mlartifacts").as_uri() if local else None
        return c.create_experiment(EXPERIMENT, artifact_location=location)
