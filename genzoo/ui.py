"""The long-running servers of `make ui` (MLflow's and Prefect's UIs) and the environment of
`make worker` / `make deploy`: quiet (genzoo.env's telemetry settings), bound to 127.0.0.1, CORS
limited to the server's own origin, Prefect's CSRF protection on (its client fetches the token).

    python -m genzoo.ui ui [--mlflow-port 5000] [--prefect-port 4200]   both servers; Ctrl-C stops both
    python -m genzoo.ui prefect-server --port 4200
    python -m genzoo.ui mlflow-server --port 5000
    python -m genzoo.ui run -- prefect worker start --pool genzoo       any command in that environment

NOTE: MLflow 3.17 lets any http://localhost or http://127.0.0.1 origin (any port) through its CORS
check whatever --cors-allowed-origins says; the list below only narrows the other origins to none.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from genzoo.env import configure

HOST = "127.0.0.1"
MLFLOW_PORT = 5000
PREFECT_PORT = 4200


def own_origins(port: int) -> list[str]:
    """The origins a browser shows for a server on HOST:port (either loopback spelling)."""
    return [f"http://{HOST}:{port}", f"http://localhost:{port}"]


def environment(root: Path) -> dict[str, str]:
    """genzoo's quiet, project-local environment (genzoo.env.configure) plus Prefect's CSRF client support."""
    configure(root)
    return {**os.environ, "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "true"}


def prefect_server(root: Path, port: int) -> tuple[list[str], dict[str, str]]:
    env = {**environment(root),
           "PREFECT_SERVER_API_HOST": HOST,
           "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": ",".join(own_origins(port)),
           "PREFECT_SERVER_CSRF_PROTECTION_ENABLED": "true",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "true"}  # genzoo.env turns the UI off for the flows' temporary API
    return [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(port)], env


def mlflow_server(root: Path, port: int) -> tuple[list[str], dict[str, str]]:
    env = {**environment(root), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return [_bin("mlflow"), "ui", "--workers", "1", "--host", HOST, "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "mlartifacts"),
            "--allowed-hosts", ",".join(f"{h}:{port}" for h in (HOST, "localhost")),
            "--cors-allowed-origins", ",".join(own_origins(port))], env


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def serve_both(root: Path, mlflow_port: int, prefect_port: int) -> int:
    print(f"MLflow UI:  http://{HOST}:{mlflow_port}   Prefect UI: http://{HOST}:{prefect_port}", flush=True)
    procs = [subprocess.Popen(cmd, env=env) for cmd, env in (mlflow_server(root, mlflow_port),
                                                             prefect_server(root, prefect_port))]
    try:
        while all(p.poll() is None for p in procs):
            try:
                procs[0].wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m genzoo.ui", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    both = sub.add_parser("ui")
    both.add_argument("--mlflow-port", type=int, default=MLFLOW_PORT)
    both.add_argument("--prefect-port", type=int, default=PREFECT_PORT)
    sub.add_parser("prefect-server").add_argument("--port", type=int, default=PREFECT_PORT)
    sub.add_parser("mlflow-server").add_argument("--port", type=int, default=MLFLOW_PORT)
    sub.add_parser("run").add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    root = Path(os.environ.get("GENZOO_PROJECT_DIR") or os.getcwd()).resolve()
    if args.command == "ui":
        return serve_both(root, args.mlflow_port, args.prefect_port)
    if args.command == "run":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            p.error("run needs a command, e.g. run -- prefect worker start --pool genzoo")
        env = environment(root)
    else:
        cmd, env = (prefect_server if args.command == "prefect-server" else mlflow_server)(root, args.port)
    os.execvpe(cmd[0], cmd, env)  # the server replaces this process: signals reach it directly


if __name__ == "__main__":
    sys.exit(main())
