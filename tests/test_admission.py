"""tasks/ray_job.py:Admission: the cluster's CPUs are never oversubscribed, announced trainings
start in their announced order (the longest first), and one that never asks (or asks late) does not block."""

from __future__ import annotations

import threading
import time

from tasks.ray_job import Admission


def _run(admission: Admission, jobs: list[tuple[str | None, float, float]], capacity: float = 2.0):
    """Threads asking for slots in the listed order (a little apart); returns (start order, peak use)."""
    started, lock = [], threading.Lock()
    in_use = [0.0, 0.0]  # now, peak

    def job(key, need, seconds):
        with admission.slot(need, capacity, key):
            with lock:
                started.append(key)
                in_use[0] += need
                in_use[1] = max(in_use[1], in_use[0])
            time.sleep(seconds)
            with lock:
                in_use[0] -= need

    threads = [threading.Thread(target=job, args=spec) for spec in jobs]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(timeout=10)
    return started, in_use[1]


def test_announced_trainings_start_in_order_and_never_oversubscribe():
    a = Admission()
    a.queue(["long", "mid", "short", "tiny"])
    started, peak = _run(a, [("tiny", 1, 0.05), ("short", 1, 0.05), ("mid", 1, 0.1), ("long", 1, 0.1)])
    assert started == ["long", "mid", "short", "tiny"]
    assert peak <= 2.0


def test_a_training_that_never_asks_is_cancelled_not_waited_for():
    a = Admission()
    a.queue(["reused", "next"])
    threading.Timer(0.1, a.cancel, args=("reused",)).start()  # e.g. a reused training: no slot needed
    started, _ = _run(a, [("next", 1, 0.01)])
    assert started == ["next"]


def test_unannounced_work_goes_first_and_big_jobs_take_the_whole_cluster():
    a = Admission()
    a.queue(["two-cpus", "one-cpu"])
    started, peak = _run(a, [(None, 1, 0.1), ("one-cpu", 1, 0.01), ("two-cpus", 2, 0.05)])
    assert started[0] is None  # an evaluation, never announced, is not held behind the queue
    assert started[1:] == ["two-cpus", "one-cpu"] and peak <= 2.0


def test_a_training_late_to_ask_holds_the_next_ones_only_for_the_grace():
    """'late' is announced first but asks 0.6 s after the others (its thread busy elsewhere): the next ones
    start once they have waited the 0.2 s grace, not when 'late' arrives, and 'late' still gets a slot."""
    a = Admission()
    a.grace = 0.2
    a.queue(["late", "next", "last"])
    threading.Timer(0.6, lambda: _run(a, [("late", 1, 0.01)], capacity=2.0)).start()
    t0 = time.monotonic()
    started, peak = _run(a, [("next", 1, 0.05), ("last", 1, 0.05)])
    assert started == ["next", "last"] and peak <= 2.0
    assert time.monotonic() - t0 < 0.6  # both finished before 'late' asked
    time.sleep(0.7)
    assert a._order == []  # 'late' started too


def test_a_training_hands_a_cpu_over_to_its_evaluation():
    """'train' hands one CPU to 'eval' as it ends: 'next', waiting for a CPU, does not get it; 'eval' starts
    without waiting, and its CPU goes to 'next' when it ends. A hand-over nobody takes is given back."""
    a = Admission()
    a.queue(["other", "train", "next"])
    events, lock = [], threading.Lock()

    def note(what):
        with lock:
            events.append(what)

    def train():
        with a.slot(1, 2, "train"):
            time.sleep(0.1)
            a.hand_over("eval", 1)
        note("train ended")
        with a.slot(1, 2, "eval"):
            note("eval started")
            time.sleep(0.2)
        note("eval ended")

    def other():
        with a.slot(1, 2, "other"):
            time.sleep(0.6)

    def waiting():
        time.sleep(0.05)
        with a.slot(1, 2, "next"):
            note("next started")

    threads = [threading.Thread(target=f) for f in (other, train, waiting)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(timeout=10)
    assert events == ["train ended", "eval started", "eval ended", "next started"]
    a.hand_over("never-asks", 1)
    a.give_back("never-asks")
    started, _ = _run(a, [(None, 2, 0.01)])
    assert started == [None]  # both CPUs free again
