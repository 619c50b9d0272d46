"""Start-up paid once and side by side: Prefect's temporary API server (when PREFECT_API_URL is
unset) starts in a thread while Ray starts in this one, before the flow asks for either.

NOTE: pre-warming Ray worker processes here (a no-op task per CPU importing torch and genzoo) was
tried and removed: in a demo run one of the two CPUs then ran no training for two minutes."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def warm_up() -> None:
    errors: list[BaseException] = []

    def prefect_server() -> None:
        try:
            from prefect.settings import PREFECT_API_URL

            if not PREFECT_API_URL.value():
                from prefect.server.api.server import SubprocessASGIServer

                SubprocessASGIServer().start()  # the flow's client finds this one running
        except BaseException as exc:  # the flow will start it itself and report the error there
            errors.append(exc)

    thread = threading.Thread(target=prefect_server, name="prefect-server", daemon=True)
    thread.start()
    from tasks.services import ensure_ray

    ensure_ray()
    thread.join()


def log_dir() -> str:
    """Where the services' own logs are: Ray's session logs (worker output included)."""
    try:
        import ray

        if ray.is_initialized():
            return str(Path(ray._private.worker._global_node.get_session_dir_path()) / "logs")
    except Exception:
        pass
    return os.environ.get("RAY_TMPDIR", "/tmp/ray") + "/session_latest/logs"
