"""Who used the CPUs during a window: every process's CPU time, and that of the driver's and Ray workers' threads.

On 2 cores a 2-thread fit loses whatever CPU anything else takes while it runs. The overhead benchmark
uses this to say where its pipeline's fit went slower than the bare one: it samples /proc once a second
in a daemon thread, and `between(t0, t1)` gives the CPU seconds each kind of process (and each thread
of this process and of the Ray workers) used between two wall times, from the samples nearest inside the window.

    census = Census().start()
    ...                                   # the work to account for
    census.stop(); census.between(t0, t1)  # {"window_seconds", "groups", "processes", "threads"}

Linux only (/proc); elsewhere `available` is False and `between` returns {}.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC = Path("/proc")
_WORKERS = "Ray workers (the training)"


def _cpu_seconds(stat_file: Path) -> tuple[str, float] | None:
    """(comm, utime + stime in seconds) from a /proc stat file, or None when it vanished."""
    try:
        text = stat_file.read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1: text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return comm, (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of proc(5)


def _stolen_seconds() -> float:
    """CPU time the hypervisor gave to other guests while this machine's CPUs wanted it (/proc/stat steal)."""
    try:
        fields = (_PROC / "stat").read_text().splitlines()[0].split()
    except OSError:
        return 0.0
    return int(fields[8]) / _TICK if len(fields) > 8 else 0.0


def _group(pid: int, me: int) -> str:
    """The kind of process: this driver, a Ray worker, Ray's own daemons, Prefect's server, other."""
    if pid == me:
        return "driver (this process)"
    try:
        cmd = (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmd = ""
    if not cmd:
        return "kernel threads"
    if cmd.startswith("ray::"):
        return _WORKERS
    if any(name in cmd for name in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py",
                                    "runtime_env", "ray/_private", "ray/autoscaler")):
        return "Ray daemons"
    if "prefect" in cmd or "uvicorn" in cmd:
        return "Prefect API server"
    return "other processes"


class Census:
    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self.available = (_PROC / "self" / "stat").is_file()
        self.samples: list[tuple[float, dict[str, float], dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-census", daemon=True)

    def start(self) -> "Census":
        if self.available:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _sample(self) -> tuple[float, dict[str, float], dict[str, float]]:
        me = os.getpid()
        per_pid: dict[str, float] = {}
        for entry in _PROC.iterdir():
            if entry.name.isdigit():
                got = _cpu_seconds(entry / "stat")
                if got:
                    per_pid[f"{entry.name} {_group(int(entry.name), me)}"] = got[1]
        threads: dict[str, float] = {}  # this process's threads and the Ray workers'
        watched = [str(me)] + [key.split(" ", 1)[0] for key in per_pid if key.endswith(_WORKERS)]
        for pid in watched:
            try:
                tasks = list((_PROC / pid / "task").iterdir())
            except OSError:
                continue
            for task in tasks:
                got = _cpu_seconds(task / "stat")
                if got:
                    owner = "driver" if pid == str(me) else f"worker {pid}"
                    threads[f"{owner} {task.name} {got[0]}"] = got[1]
        per_pid["0 machine: stolen by the hypervisor"] = _stolen_seconds()  # all CPUs together
        return time.time(), per_pid, threads

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._sample())
            self._stop.wait(self.every)

    def between(self, t0: float, t1: float) -> dict:
        """CPU seconds by process kind, by process, and by thread of this process and of the Ray workers,
        between the first sample at or after t0 and the last at or before t1 (a process that started or ended inside counts from
        0 or up to its last sample)."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return {}
        (w0, p0, th0), (w1, p1, th1) = inside[0], inside[-1]

        def used(before: dict[str, float], after: dict[str, float], key_of) -> dict[str, float]:
            out: dict[str, float] = {}
            for key, seconds in after.items():
                out[key_of(key)] = out.get(key_of(key), 0.0) + seconds - before.get(key, 0.0)
            return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v >= 0.01}

        return {"window_seconds": round(w1 - w0, 2),
                "groups": used(p0, p1, lambda key: key.split(" ", 1)[1]),
                "processes": dict(list(used(p0, p1, lambda key: key).items())[:6]),  # "pid kind", the busiest
                # "driver|worker PID  TID name" (Python 3.11 names no OS thread, so most are "python")
                "threads": dict(list(used(th0, th1, lambda key: key).items())[:12])}
