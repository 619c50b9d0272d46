"""Process helpers of the ops tests: free ports, and stopping every process a test started
(found by a marker in their environment, so nothing else on the machine is touched)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def marked(marker: str) -> list[int]:
    """Processes (other than this one) whose environment holds `marker`: only a test's subprocesses
    and their descendants carry it (a flow run leaves Ray's dashboard/runtime-env agents behind)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def kill_marked(marker: str) -> None:
    """SIGTERM, then SIGKILL, every process carrying `marker`, waiting up to 5 s after each."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = marked(marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = marked(marker)
        if not pids:
            return
