"""Connections to the real services: Ray (local or RAY_ADDRESS) and MLflow (local SQLite or MLFLOW_TRACKING_URI).

Ray always runs with token authentication (genzoo.env): a local cluster gets the project's token
file (made on first start) and listens on 127.0.0.1 only; a RAY_ADDRESS cluster is reached with the
token its nodes were started with (README, "Cluster set-up").
"""

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
        _prepare_auth(address)
        # Worker output goes to Ray's log files, not this terminal: the progress display says what
        # trains (tasks/progress.py) and genzoo.startup.log_dir() names where the logs are.
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address is None:
            _loopback_only()
            # Keep the object store modest: the datasets here are small and /dev/shm is shared.
            kwargs["object_store_memory"] = int(os.environ.get("GENZOO_RAY_OBJECT_STORE_BYTES", 1_000_000_000))
        before = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
        ray.init(address=address, **kwargs)
        if before is not None:  # NOTE: ray.init replaces the SIGTERM handler with sys.exit; keep Prefect's
            signal.signal(signal.SIGTERM, before)  # (a cancel from the UI then ends the flow run Cancelled)
        return True


def _prepare_auth(address: str | None) -> None:
    """Make the token exist (a local cluster) or check it does (RAY_ADDRESS), and let an already
    imported Ray see the mode: Ray reads RAY_AUTH_MODE into its config when first imported.

    NOTE: a process that imported ray before genzoo.env.configure() set RAY_AUTH_MODE (a test
    session) would otherwise start a cluster that demands a token from a driver sending none;
    Config.initialize("") is what Ray's own token set-up calls to re-read it."""
    from ray._raylet import AuthenticationMode, Config, get_authentication_mode

    from genzoo.env import ray_token

    token_mode = os.environ.get("RAY_AUTH_MODE", "disabled").lower() == "token"
    if token_mode and not os.environ.get("RAY_AUTH_TOKEN"):
        path = os.environ.get("RAY_AUTH_TOKEN_PATH")
        if address is None:
            os.environ["RAY_AUTH_TOKEN_PATH"] = str(ray_token(path))
        elif not path or not Path(path).is_file():
            from models.base import ConfigError

            raise ConfigError(f"RAY_ADDRESS={address} is reached with token authentication (RAY_AUTH_MODE=token), "
                              f"but the token file {path or '(RAY_AUTH_TOKEN_PATH unset)'} does not exist: copy the "
                              f"cluster's token there or set RAY_AUTH_TOKEN (README: Cluster set-up)")
    if token_mode != (get_authentication_mode() == AuthenticationMode.TOKEN):
        Config.initialize("")


def _loopback_only() -> None:
    """A local cluster listens on 127.0.0.1 only (genzoo.env.LOCAL_ONLY); Ray reads the variable
    when first imported, so a Ray imported before configure() is told here too."""
    from ray._private import ray_constants

    from genzoo.env import LOCAL_ONLY

    if all(os.environ.get(key) == value for key, value in LOCAL_ONLY.items()):
        ray_constants.ENABLE_RAY_CLUSTER = False


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
