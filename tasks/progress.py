"""What a person watching a pipeline run sees: one line per event (a training starts, reports an
epoch, ends, is evaluated, registered, or fails), with the time, what is left and an ETA.

Workers write their epochs to <scratch>/progress.jsonl (tasks/ray_job.py); a daemon thread here
follows those files and prints at most one epoch line per training every `EVERY` seconds, always
the last one. Lines go to the terminal (the process's real stdout, past Prefect's print capture).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from tasks.ray_job import PROGRESS

EVERY = 5.0  # seconds between two epoch lines of one training
SKIP = {"epoch", "epochs", "elapsed", "lr", "steps", "mask", "epoch_seconds", "bfloat16"}


def say(message: str) -> None:
    """One line to the terminal, stamped; thread-safe."""
    with _lock:
        sys.__stdout__.write(f"{time.strftime('%H:%M:%S')}  {message}\n")
        sys.__stdout__.flush()


_lock = threading.Lock()


class Board:
    """The trainings of one pipeline run: their progress files, counts, and the ETA."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.time()
        self._cost: dict[str, float] = {}  # expected seconds of each training (the ETA's weights)
        self._done_cost = 0.0
        # name -> (file, bytes read, last printed at, newest line not printed yet)
        self._follow: dict[str, tuple[Path, int, float, dict | None]] = {}
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="genzoo-progress", daemon=True)
        self._thread.start()

    def expect(self, costs: dict[str, float]) -> None:
        """The trainings' expected costs (tasks/ray_job.py:cost_probe): the ETA weighs by them."""
        self._cost = dict(costs)

    def training(self, name: str, scratch: str) -> None:
        with self._mutex:
            self._follow[name] = (Path(scratch) / PROGRESS, 0, 0.0, None)

    def finished(self, name: str, message: str) -> None:
        self._drain(name, final=True)
        with self._mutex:
            self._follow.pop(name, None)
            self.done += 1
            self._done_cost += self._cost.get(name, 0.0)
            done, total = self.done, self.total
        say(f"{name:<20} {message}  [{done}/{total} models{self._eta(done, total)}]")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _eta(self, done: int, total: int) -> str:
        if not done or done >= total:
            return ""
        elapsed = time.time() - self.started
        all_cost = sum(self._cost.values())
        if self._done_cost > 0 and all_cost > self._done_cost:  # by the work left, not the count
            left = elapsed / self._done_cost * (all_cost - self._done_cost)
        else:
            left = elapsed / done * (total - done)
        return f", about {left / 60:.0f} min left" if left >= 90 else f", about {left:.0f} s left"

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            with self._mutex:
                names = list(self._follow)
            for name in names:
                self._drain(name)

    def _drain(self, name: str, final: bool = False) -> None:
        with self._mutex:
            if name not in self._follow:
                return
            path, offset, last, pending = self._follow[name]
            if not path.exists():
                return
            with open(path) as f:
                f.seek(offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind("\n") + 1]
            lines = [json.loads(x) for x in complete.splitlines() if x.strip()]
            newest = lines[-1] if lines else pending
            now = time.time()
            show = newest is not None and (final or now - last >= EVERY)
            self._follow[name] = (path, offset + len(complete), now if show else last, None if show else newest)
        if show:
            say(f"{name:<20} {epoch_line(newest)}")


def epoch_line(m: dict) -> str:
    values = "  ".join(f"{k} {v:.4g}" for k, v in m.items() if k not in SKIP and isinstance(v, (int, float)))
    return f"epoch {m['epoch']:>3}/{m['epochs']:<3} {values}  ({m['elapsed']:.0f} s)"


_boards: dict[str, Board] = {}


def open_board(run_name: str, total: int) -> Board:
    _boards[run_name] = Board(total)
    return _boards[run_name]


def board(run_name: str) -> Board:
    """The board of a pipeline run (a silent one when the run has none, e.g. a task called alone)."""
    return _boards.get(run_name) or _boards.setdefault(run_name, Board(0))


def close_board(run_name: str) -> None:
    b = _boards.pop(run_name, None)
    if b is not None:
        b.close()
