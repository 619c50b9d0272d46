"""Data-parallel training over real Ray workers, and serving a registered model over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from genzoo.config import TrainConfig


def test_two_workers_match_one_worker_with_the_same_global_batch(services, tmp_path):
    """MADE's training step has no noise of its own, so 2 workers x 32 examples must take the
    same steps as 1 worker x 64 examples (gradients all-reduced over gloo)."""
    from tasks.ray_job import run_training

    x = (np.random.default_rng(0).random((512, 1, 4, 4)) < 0.3).astype(np.uint8)
    arrays, manifest = {"train": x, "val": x[:64]}, {"kind": "binary", "levels": 2}
    model = {"data_shape": [1, 4, 4], "data_kind": "binary", "levels": 2, "hidden": [32], "lr": 0.01}
    train = TrainConfig(epochs=2, batch_size=64, steps_per_epoch=4, cpus_per_worker=0.5, val_examples=0,
                        max_failures=0).to_dict()
    one = run_training("made", "dp", arrays, manifest, model, {**train, "num_workers": 1}, tmp_path)
    two = run_training("made", "dp", arrays, manifest, model, {**train, "num_workers": 2}, tmp_path)
    assert one.status == two.status == "FINISHED", (one.reason, two.reason)
    torch.manual_seed(0)
    import models

    initial = models.build("made", model).state_dict()
    moved = 0
    for key, a in one.state["state_dict"].items():
        b = two.state["state_dict"][key]
        assert torch.allclose(a.float(), b.float(), atol=1e-5), key
        moved += int(not torch.equal(a, initial[key]))
    assert moved > 0, "training changed nothing"
    assert one.history[-1]["loss"] == pytest.approx(two.history[-1]["loss"], rel=1e-5)


_binary = (np.random.default_rng(1).random((512, 12)) < 0.3).astype(np.uint8)
_points = np.random.default_rng(2).normal(size=(512, 4)).astype(np.float32)
# NOTE: the RBM runs with PCD only: CD shares its gradient path and noise, and PCD adds the persistent
# particles and the per-worker statistics (a CD case cost the suite ~25 s for no other line of code).
NOISY_FAMILIES = {  # family, data, model config (tiny), a per-epoch metric that must match
    "gan": ("gan", _points, {"latent_dim": 2, "hidden": 16, "depth": 2, "lr": 0.01}, "d_loss"),
    "rbm-pcd": ("rbm", _binary, {"hidden": 8, "k": 1, "persistent": True, "chains": 16, "lr": 0.1},
                "free_energy_gap"),
    "gmmn-ae": ("gmmn", _binary, {"autoencoder": True, "code_dim": 4, "ae_hidden": [8], "hidden": [8],
                                  "latent_dim": 3, "lr": 0.01, "ae_lr": 0.01}, "mmd"),
}


@pytest.mark.parametrize("case", list(NOISY_FAMILIES))
def test_families_with_their_own_regime_take_the_same_steps_on_two_workers(case, services, tmp_path):
    """GAN's two optimisers, the RBM's own gradient (PCD, with its per-worker base-rate counts and
    fantasy particles) and GMMN+AE's MMD on the gathered batch: 2 workers x 32 examples end where
    1 worker x 64 does (their training noise is each worker's stride of one draw). The two trainings
    run at once (0.5 + 2 x 0.5 CPUs), as a pipeline's do."""
    from concurrent.futures import ThreadPoolExecutor

    from tasks.ray_job import run_training

    family, x, config, metric = NOISY_FAMILIES[case]
    kind = "points" if x.dtype == np.float32 else "binary"
    arrays, manifest = {"train": x, "val": x[:64]}, {"kind": kind, "levels": 2 if kind == "binary" else 0}
    model = {"data_shape": [x.shape[1]], "data_kind": kind, **config}
    train = TrainConfig(epochs=2, batch_size=64, steps_per_epoch=4, cpus_per_worker=0.5, val_examples=0,
                        max_failures=0).to_dict()
    with ThreadPoolExecutor(2) as pool:
        one, two = pool.map(lambda n: run_training(family, f"dp{n}", arrays, manifest, model,
                                                   {**train, "num_workers": n}, tmp_path), (1, 2))
    assert one.status == two.status == "FINISHED", (one.reason, two.reason)
    import models

    torch.manual_seed(0)
    initial = models.build(family, model).state_dict()
    moved = 0
    for key, a in one.state["state_dict"].items():  # weights, and the RBM's counts and particles
        b = two.state["state_dict"][key]
        assert torch.allclose(a.double(), b.double(), atol=1e-5), key
        moved += int(not torch.equal(a, initial[key]))
    assert moved > 0, "training changed nothing"
    if family == "rbm":
        assert float(two.state["state_dict"]["data_count"]) == 2 * 4 * 64  # every worker's examples counted
    assert one.history[-1][metric] == pytest.approx(two.history[-1][metric], rel=1e-4, abs=1e-6)


def test_a_multi_worker_training_resumes_after_a_worker_failure(services, tmp_path):
    """The Ray Train path (2 workers): a worker that fails after epoch 1 is restarted by
    FailureConfig and the job resumes from the epoch-1 checkpoint."""
    from tasks.ray_job import run_training

    x = (np.random.default_rng(0).random((256, 1, 4, 4)) < 0.3).astype(np.uint8)
    arrays, manifest = {"train": x, "val": x[:64]}, {"kind": "binary", "levels": 2}
    model = {"data_shape": [1, 4, 4], "data_kind": "binary", "levels": 2, "hidden": [16], "lr": 0.01}
    train = TrainConfig(epochs=3, batch_size=64, steps_per_epoch=2, cpus_per_worker=0.5, val_examples=0,
                        max_failures=1, num_workers=2).to_dict()
    out = run_training("made", "dp", arrays, manifest, model, train, tmp_path, fail_once_at_epoch=1)
    assert out.status == "FINISHED", out.reason
    assert out.state["resumed_from"] == [1] and [h["epoch"] for h in out.history] == [1, 2, 3]
    assert (tmp_path / "_scratch" / out.ray_run / "injected-failure").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_with_samples(services, project, tmp_path):
    from flows.pipeline import pipeline

    result = pipeline(families=["gan"], datasets=["grid25"], preset="smoke")
    assert result.rows[0]["status"] == "FINISHED"
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow_bin), "models", "serve", "-m", "models:/gan-grid25@champion", "--env-manager",
                             "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"mlflow models serve did not start: {proc.stdout.read().decode()[-2000:]}")
                time.sleep(0.5)
        body = json.dumps({"dataframe_records": [{"n": 5, "seed": 3}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=60).read())
        samples = np.asarray(answer["predictions"])
        assert samples.shape == (5, 2) and np.isfinite(samples).all()
        again = json.loads(urllib.request.urlopen(req, timeout=60).read())
        assert np.array_equal(np.asarray(again["predictions"]), samples)  # same seed, same samples
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_killed_worker_resumes_from_its_checkpoint_and_registers_once(services, project):
    """SIGKILL the worker of a single-worker training (a Ray task) after its first checkpoint: Ray
    retries the task, training resumes from that checkpoint, finishes, and the model is registered
    exactly once."""
    import signal
    import threading

    from flows.pipeline import pipeline
    from tasks.services import client

    scratch = project / "ray_results" / "_scratch"
    before = {d.name for d in scratch.glob("gan-grid25-*")}
    versions_before = len(client().search_model_versions("name='gan-grid25'"))
    out: dict = {}
    flow = threading.Thread(target=lambda: out.update(result=pipeline(
        families=["gan"], datasets=["grid25"], preset="smoke", train_overrides={"epochs": 4, "steps_per_epoch": 400})))
    flow.start()
    killed, deadline = None, time.time() + 300
    while killed is None and time.time() < deadline and flow.is_alive():
        for run in scratch.glob("gan-grid25-*"):
            pid_file = run / "worker-0.pid"
            # the worker has written its first checkpoint (renamed into place whole, then the progress line)
            if run.name not in before and pid_file.exists() and (run / "progress.jsonl").exists():
                killed = int(pid_file.read_text())
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.05)
    flow.join(timeout=600)
    assert killed is not None, "never saw a checkpoint to kill the worker after"
    row = out["result"].rows[0]
    assert row["status"] == "FINISHED", row.get("reason")
    assert row["resumed_from"] and 1 <= row["resumed_from"][0] < 4  # resumed, not restarted from scratch
    assert len(client().search_model_versions("name='gan-grid25'")) == versions_before + 1
    assert client().get_run(row["run_id"]).data.tags["genzoo.resumed_from_epochs"]


def test_two_pipeline_runs_at_once_keep_their_own_outputs(services, project):
    """Concurrent runs: each has its own run folder, report, Ray run names and registry version
    (DVC's repository lock is waited for, not an error)."""
    from concurrent.futures import ThreadPoolExecutor

    from flows.pipeline import pipeline
    from tasks.services import client

    before = len(client().search_model_versions("name='vae-grid25'"))
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: pipeline(families=["vae"], datasets=["grid25"], preset="smoke",
                                                reuse_trainings=False), range(2)))
    assert runs[0].run_name != runs[1].run_name
    assert all(r.rows[0]["status"] == "FINISHED" for r in runs)
    assert runs[0].rows[0]["ray_run"] != runs[1].rows[0]["ray_run"]
    assert Path(runs[0].report).parent != Path(runs[1].report).parent
    versions = sorted(r.rows[0]["registered"] for r in runs)
    assert versions == [f"vae-grid25/{before + 1}", f"vae-grid25/{before + 2}"]
    for r in runs:
        assert Path(r.rows[0]["model_path"]).is_file() and r.run_name in r.rows[0]["model_path"]


def test_a_dataset_being_written_by_another_run_is_waited_for(services, project):
    """DVC's read-write lock: while another process writes data/prepared/ring8, a repro that needs it
    waits (instead of failing with 'is busy, it is being blocked by'), then succeeds."""
    import json
    import os
    import threading
    import time

    from tasks.prepare import dvc

    lock = project / ".dvc" / "tmp" / "rwlock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    target = str(project / "data" / "prepared" / "ring8")
    lock.write_text(json.dumps({"write": {target: {"pid": os.getpid(), "cmd": "another genzoo run"}}, "read": {}}))
    released = threading.Timer(4.0, lambda: lock.write_text("{}"))
    released.start()
    t0 = time.monotonic()
    try:
        dvc(project, "repro", "prepare@ring8")
    finally:
        released.cancel()
        lock.write_text("{}")
    assert time.monotonic() - t0 >= 3.5  # it waited for the writer to let go
