"""Where the project lives and the environment that keeps every service local, fast and quiet.

`configure()` only sets variables the user has not set (os.environ.setdefault),
so RAY_ADDRESS, PREFECT_API_URL, MLFLOW_TRACKING_URI etc. always win. It is
called by the CLI and the flows before any service is imported; importing
genzoo does nothing by itself.

Ray runs with token authentication (RAY_AUTH_MODE=token): the token is one file per project,
<project>/.ray/auth_token (mode 0600, made by `ray_token()` when genzoo first starts Ray), named
to Ray by RAY_AUTH_TOKEN_PATH, which Ray's own processes and workers inherit. A local cluster
(no RAY_ADDRESS) binds 127.0.0.1 only (LOCAL_ONLY below).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

QUIET = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Every Ray RPC and HTTP entry point asks for the cluster's token (Ray >= 2.52); see ray_token().
    "RAY_AUTH_MODE": "token",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_DEDUP_LOGS": "0",
    # Trainings queue for CPUs/GPUs on a busy cluster: wait for them rather than fail after 60 s.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "3600",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",  # the ephemeral API needs no UI; `make ui` starts a real server
    # The ephemeral API server starts in ~10 s, but on a busy machine (trainings running) it can need
    # more than Prefect's default 20 s: wait for it rather than fail the flow.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "DVC_NO_ANALYTICS": "1",
    # The terminal shows genzoo's progress and warnings; Prefect's task-state lines still reach its
    # API (the UI), MLflow's and SQLAlchemy's INFO lines go nowhere.
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "GIT_PYTHON_REFRESH": "quiet",
    "TOKENIZERS_PARALLELISM": "false",
}


# The project's Ray token, relative to the project folder: never $HOME (Ray's default ~/.ray/auth_token).
RAY_TOKEN_FILE = Path(".ray") / "auth_token"
# NOTE: Ray has no bind-address setting: ray.init(_node_ip_address="127.0.0.1") is turned back into the
# routable address. With this variable at 0 Ray takes 127.0.0.1 as the node address (its own default on
# macOS and Windows, "local Ray only"), and the GCS, raylet, object manager and workers then listen on
# 127.0.0.1 alone (measured with `ss -ltnp`). Set only where genzoo starts the cluster itself.
LOCAL_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def project_dir() -> Path:
    """GENZOO_PROJECT_DIR, else the current folder."""
    return Path(os.environ.get("GENZOO_PROJECT_DIR") or os.getcwd()).resolve()


def configure(root: Path | None = None) -> Path:
    root = (root or project_dir()).resolve()
    os.environ["GENZOO_PROJECT_DIR"] = str(root)
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    if os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite:"):
        # One SQLite connection per use instead of a pool of 15: a pipeline's many concurrent tasks
        # otherwise exhaust the pool on a busy machine (QueuePool timeout); SQLite's busy timeout queues writes.
        os.environ.setdefault("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")
    if not os.environ.get("RAY_AUTH_TOKEN"):  # a token given as a value wins over any file (Ray's order)
        os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(root / RAY_TOKEN_FILE))
    if not os.environ.get("RAY_ADDRESS"):
        for key, value in LOCAL_ONLY.items():
            os.environ.setdefault(key, value)
    os.environ.setdefault("DVC_SITE_CACHE_DIR", str(root / ".dvc" / "site-cache"))
    os.environ.setdefault("MPLCONFIGDIR", str(root / ".cache" / "matplotlib"))
    quiet_loggers()
    # DVC stages call `genzoo prepare`: make this interpreter's scripts folder come first on PATH.
    bindir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    return root


def ray_token(path: str | Path | None = None) -> Path:
    """The Ray token file (RAY_AUTH_TOKEN_PATH, else the project's), made once with mode 0600.

    Written to a private temporary file and linked into place, so two genzoo processes starting at
    once agree on one token and neither reads a half-written file; an existing file readable by
    others is narrowed to 0600."""
    import secrets
    import stat
    import tempfile

    path = Path(path or os.environ.get("RAY_AUTH_TOKEN_PATH") or project_dir() / RAY_TOKEN_FILE)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".token-")  # mkstemp: mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))  # 256 bits, as `ray get-auth-token --generate` makes
            os.link(tmp, path)
        except FileExistsError:  # another process made it first: use that one
            pass
        finally:
            os.unlink(tmp)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)
    return path


def quiet_loggers() -> None:
    """Library INFO chatter off the terminal; warnings that matter stay."""
    import logging
    import warnings

    for name in ("mlflow", "alembic", "sqlalchemy", "ray", "urllib3", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # genzoo.evaluation.quality's small-sample notices: the evaluation states them once per model, as a warning line.
    warnings.filterwarnings("ignore", message=".* computed on .* fewer than the .* its reference protocol uses")
