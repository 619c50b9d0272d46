"""Training one (family, dataset) pair as a Ray Train job.

The driver side (`train_on_ray`) builds a `TorchTrainer` (ScalingConfig from
TrainConfig: num_workers, use_gpu, CPUs per worker; data-parallel gradient
averaging over the gloo/NCCL process group Ray sets up), checkpoints every
epoch, survives `max_failures` worker failures by resuming from the last
checkpoint, and hands back the final training state. The worker side
(`_worker`) is a thin shell around genzoo.training.fit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"
FAILURE_FILE = "nonfinite.txt"


@dataclasses.dataclass
class TrainOutcome:
    family: str
    dataset: str
    status: str  # 'FINISHED' or 'FAILED'
    reason: str
    state: dict[str, Any] | None  # training_state(...) of the last epoch
    history: list[dict[str, float]]
    seconds: float
    ray_run: str


def _worker(cfg: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray
    import ray.train
    import ray.train.torch

    from data.prepared import to_model_space
    from genzoo.config import TrainConfig
    from genzoo.training import NonFiniteLoss, fit
    import models

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, round(cfg["threads"])))  # as many threads as the CPUs this worker holds
    device = ray.train.torch.get_device()
    arrays = ray.get(cfg["data"])
    train = to_model_space(arrays["train"], cfg["manifest"])
    val = to_model_space(arrays["val"][: cfg["train"]["val_examples"]], cfg["manifest"])
    tcfg = TrainConfig(**cfg["train"])
    torch.manual_seed(tcfg.seed)  # same initial weights on every worker
    model = models.build(cfg["family"], cfg["model"]).to(device)

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=True)

    # Which process trains (operators and tests can find, watch or kill it); rewritten on restart.
    (Path(cfg["scratch"]) / f"worker-{rank}.pid").write_text(str(os.getpid()))
    (Path(cfg["scratch"]) / f"worker-{rank}.node").write_text(ray.get_runtime_context().get_node_id())
    fail_at = cfg.get("fail_once_at_epoch")
    marker = Path(cfg["scratch"]) / "injected-failure"

    def on_epoch_end(epoch: int, metrics: dict[str, float], state: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(dir=cfg["scratch"]) as d:
            ckpt = None
            if rank == 0:
                torch.save(state, Path(d) / STATE_FILE)
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report({**metrics, "epoch": epoch}, checkpoint=ckpt)
        if fail_at == epoch and rank == 0 and not marker.exists():
            marker.touch()  # fault injection (tests, chaos drills): fail once, after the checkpoint
            raise RuntimeError(f"injected worker failure after epoch {epoch}")

    log = print if rank == 0 else (lambda msg: None)
    try:
        fit(model, train, tcfg, val=val, resume=resume, rank=rank, world_size=world,
            on_epoch_end=on_epoch_end, log=lambda m: log(f"[{cfg['run_name']}] {m}"))
    except NonFiniteLoss as exc:
        # Not a worker fault: retrying from the checkpoint would only diverge again. The reason
        # travels as a last checkpoint holding only FAILURE_FILE, which the driver reads.
        with tempfile.TemporaryDirectory(dir=cfg["scratch"]) as d:
            ckpt = None
            if rank == 0:
                (Path(d) / FAILURE_FILE).write_text(str(exc))
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report({"nonfinite": 1.0}, checkpoint=ckpt)


class _Admission:
    """Admit a training only when the cluster has room for it.

    Ray would queue the extra trainings anyway, but every queued TorchTrainer
    already runs a controller process; on a small machine a dozen of them starve
    the trainings that do run. So this process submits at most what fits.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._used = 0.0

    @contextlib.contextmanager
    def slot(self, need: float, capacity: float):
        with self._cond:
            while self._used > 0 and self._used + need > capacity:
                self._cond.wait()
            self._used += need
        try:
            yield
        finally:
            with self._cond:
                self._used -= need
                self._cond.notify_all()


_admission = _Admission()


def train_on_ray(
    family: str,
    dataset: str,
    arrays: dict[str, np.ndarray],
    manifest: dict,
    model_config: dict[str, Any],
    train_config: dict[str, Any],
    storage: Path,
    run_tag: str | None = None,
    fail_once_at_epoch: int | None = None,
) -> TrainOutcome:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tasks.services import cluster_has_gpus, ensure_ray

    ensure_ray()
    t0 = time.perf_counter()
    use_gpu = {"auto": None, "true": True, "false": False}[train_config["use_gpu"]]
    if use_gpu is None:
        use_gpu = cluster_has_gpus()
    elif use_gpu and not cluster_has_gpus():
        return TrainOutcome(family, dataset, "FAILED", "use_gpu is true but the Ray cluster has no GPU",
                            None, [], 0.0, "")
    # Unique name: Ray silently resumes an old run that has the same name.
    run_name = f"{family}-{dataset}-{run_tag or uuid.uuid4().hex[:8]}"
    scratch = storage / "_scratch" / run_name
    scratch.mkdir(parents=True, exist_ok=True)
    resources = {"CPU": train_config["cpus_per_worker"]}
    if use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "family": family, "model": model_config, "train": train_config, "manifest": manifest,
            "data": ray.put({k: arrays[k] for k in ("train", "val")}), "scratch": str(scratch),
            "threads": train_config["cpus_per_worker"], "run_name": run_name,
            "fail_once_at_epoch": fail_once_at_epoch,
        },
        scaling_config=ScalingConfig(num_workers=train_config["num_workers"], use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name, storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=train_config["max_failures"]),
        ),
    )
    need = train_config["num_workers"] * (1.0 if use_gpu else train_config["cpus_per_worker"])
    capacity = ray.cluster_resources().get("GPU" if use_gpu else "CPU", 1.0)
    try:
        with _admission.slot(need, capacity):
            t0 = time.perf_counter()  # train_seconds: from admission, not counting the wait for a free slot
            result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors in TrainingFailedError
        return TrainOutcome(family, dataset, "FAILED", f"training failed: {_root_cause(exc)}", None, [],
                            time.perf_counter() - t0, run_name)
    state, failure = None, None
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            if (Path(d) / FAILURE_FILE).exists():
                failure = (Path(d) / FAILURE_FILE).read_text()
            else:
                state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    history = state["history"] if state else []
    seconds = time.perf_counter() - t0
    if failure is not None:
        return TrainOutcome(family, dataset, "FAILED", f"non-finite loss: {failure}", None, history, seconds, run_name)
    if state is None or not (state.get("finished") or state["epoch"] >= train_config["epochs"]):
        return TrainOutcome(family, dataset, "FAILED", "training ended without a final checkpoint", state, history, seconds, run_name)
    return TrainOutcome(family, dataset, "FINISHED", "", state, history, seconds, run_name)


def ray_storage(root: Path) -> Path:
    """Where Ray Train keeps checkpoints: GENZOO_RAY_STORAGE (a folder every node of a multi-node
    cluster can reach, e.g. NFS), else <project>/ray_results."""
    return Path(os.environ.get("GENZOO_RAY_STORAGE") or Path(root) / "ray_results").resolve()


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


# ---------------------------------------------------------------------- Prefect task
import time  # noqa: E402

from prefect import task  # noqa: E402


@task(name="train")
def train(
    family: str,
    dataset: str,
    prepared_dir: str,
    model_config: dict[str, Any],
    train_config: dict[str, Any],
    root: str,
    run_dir: str,
    parent_run_id: str,
    run_tag: str,
    fail_once_at_epoch: int | None = None,
    reuse: bool = True,
    recipe: str = "",
) -> dict[str, Any]:
    """One training on Ray, tracked as an MLflow child run. Never raises for a failed training:
    the run is marked FAILED with its reason and the flow carries on with the others.

    With `reuse`, a training that already finished with the same family, data version and
    configuration (an earlier or interrupted pipeline run) is not recomputed: its weights are
    taken from that run."""
    import data
    import models
    from tasks import tracking

    prepared = data.load(prepared_dir)
    root_path = Path(root)
    key = training_key(family, prepared.manifest["hash"], model_config, train_config, fail_once_at_epoch)
    run_id = tracking.start_run(
        root_path, f"{family}-{dataset}",
        tags={"genzoo.family": family, "genzoo.dataset": dataset, "genzoo.data_hash": prepared.manifest["hash"],
              "genzoo.data_source": prepared.manifest["source"], "genzoo.branch": models.get_family(family).branch,
              "genzoo.train_key": key, "genzoo.recipe": recipe},
        parent_id=parent_run_id,
    )
    tracking.log_params(run_id, {**tracking.flatten("model", model_config), **tracking.flatten("train", train_config),
                                 "data.name": dataset, "data.hash": prepared.manifest["hash"],
                                 "data.shape": str(prepared.manifest["shape"]), "data.kind": prepared.kind})
    out = Path(run_dir) / f"{family}-{dataset}"
    started = time.time()
    try:
        return _train_tracked(family, dataset, prepared, model_config, train_config, root_path, run_id, out, key,
                              started, run_tag, fail_once_at_epoch, reuse)
    except Exception as exc:  # a service error (MLflow, Ray) ends this training's run, not the flow
        reason = f"training task failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"[genzoo] {family}-{dataset} FAILED: {reason}", flush=True)
        try:
            tracking.end_run(run_id, "FAILED", reason)
        except Exception as again:  # the tracking store itself is unreachable: say so, keep the first reason
            print(f"[genzoo] could not mark run {run_id} FAILED in MLflow: {again}", flush=True)
        return _row(family, dataset, run_id, "FAILED", reason, started)


def _train_tracked(family, dataset, prepared, model_config, train_config, root_path, run_id, out, key, started,
                   run_tag, fail_once_at_epoch, reuse) -> dict[str, Any]:
    import models
    from tasks import tracking

    prior = finished_training(key) if reuse else None
    if prior is not None:
        return _reuse(prior, run_id, out, family, dataset, started)
    outcome = train_on_ray(family, dataset, prepared.arrays, prepared.manifest, model_config, train_config,
                           ray_storage(root_path), run_tag, fail_once_at_epoch)
    tracking.log_history(run_id, outcome.history)
    tracking.log_metrics(run_id, {"train_seconds": outcome.seconds})
    if outcome.state and outcome.state.get("resumed_from"):
        tracking.client().set_tag(run_id, "genzoo.resumed_from_epochs", ",".join(map(str, outcome.state["resumed_from"])))
    summary = _row(family, dataset, run_id, outcome.status, outcome.reason, started,
                   resumed_from=(outcome.state or {}).get("resumed_from", []), train_seconds=outcome.seconds,
                   ray_run=outcome.ray_run)
    if outcome.status != "FINISHED":
        print(f"[genzoo] {family}-{dataset} FAILED: {outcome.reason}", flush=True)
        tracking.end_run(run_id, "FAILED", outcome.reason)
        return summary
    out.mkdir(parents=True, exist_ok=True)
    model = models.from_state(outcome.state)
    model.save(out / "model.pt")  # weights + config only: what the registry serves
    tracking.client().log_artifact(run_id, str(out / "model.pt"))
    tracking.client().set_tag(run_id, "genzoo.trained", "1")  # the weights are in: reusable from here on
    return {**summary, "model_path": str(out / "model.pt"), "out_dir": str(out)}


def training_key(family: str, data_hash: str, model_config: dict, train_config: dict, fail_at: int | None) -> str:
    """Identity of a training: same key, same model (seeded), so a finished one need not be redone."""
    import hashlib
    import json

    body = {"family": family, "data": data_hash, "model": model_config, "train": train_config, "fail_at": fail_at}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:24]


def finished_training(key: str):
    """The latest run whose training with this key finished (its weights logged), or None."""
    from tasks.services import EXPERIMENT, client

    c = client()
    exp = c.get_experiment_by_name(EXPERIMENT)
    runs = c.search_runs([exp.experiment_id], f"tags.`genzoo.train_key` = '{key}' and tags.`genzoo.trained` = '1'",
                         order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _reuse(prior, run_id: str, out: Path, family: str, dataset: str, started: float) -> dict[str, Any]:
    from tasks import tracking

    c = tracking.client()
    out.mkdir(parents=True, exist_ok=True)
    model_path = Path(c.download_artifacts(prior.info.run_id, "model.pt", str(out)))
    for name in prior.data.metrics:
        if not name.startswith("eval.") and name not in ("sample_seconds_per_sample", "samples_per_second", "samples_drawn"):
            for m in c.get_metric_history(prior.info.run_id, name):
                tracking.log_metrics(run_id, {name: m.value}, step=m.step)
    c.set_tag(run_id, "genzoo.reused_training_from", prior.info.run_id)
    c.set_tag(run_id, "genzoo.trained", "1")
    c.log_artifact(run_id, str(model_path))
    registered = prior.data.tags.get("genzoo.registered_model")
    print(f"[genzoo] {family}-{dataset}: reusing the finished training of run {prior.info.run_id}", flush=True)
    return _row(family, dataset, run_id, "FINISHED", "", started,
                train_seconds=prior.data.metrics.get("train_seconds", float("nan")), reused_from=prior.info.run_id,
                already_registered=registered, model_path=str(model_path), out_dir=str(out))


def _row(family: str, dataset: str, run_id: str, status: str, reason: str, started: float,
         **extra: Any) -> dict[str, Any]:
    """What a train task returns to the flow: one row of the comparison (extra keys win)."""
    return {"family": family, "dataset": dataset, "run_id": run_id, "status": status, "reason": reason,
            "resumed_from": [], "train_seconds": float("nan"), "ray_run": "", "started_at": started,
            "ended_at": time.time(), **extra}
