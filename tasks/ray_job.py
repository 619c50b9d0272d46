"""One training on the Ray cluster (no Prefect, no MLflow here: tasks/train.py tracks it).

Two ways in, one training loop (genzoo.training.fit) and one checkpoint format:

- one worker: a plain Ray task holding the CPUs (or GPU) it computes on. Ray keeps its worker
  processes warm between tasks, so a training starts in well under a second instead of the ~13 s
  a Ray Train controller, placement group and worker group cost. The task checkpoints every epoch
  to its scratch folder; Ray retries it (`max_failures`) after an error or a dead worker process,
  and the retry resumes from that checkpoint.
- several workers: a Ray Train `TorchTrainer` job (data-parallel over gloo/NCCL, checkpoints via
  ray.train.report, FailureConfig(max_failures)).

Either way the worker writes one JSON line per epoch to <scratch>/progress.jsonl (what the
driver's progress display reads), one line per attempt to <scratch>/attempts, and its pid and node
to worker-<rank>.pid/.node (operators and tests find, watch or kill it there).

The last epoch's checkpoint lives where the training's key says (<storage>/_checkpoints/<key>.pt),
not where the pipeline run says: a new pipeline run of the same training (after a crash, a kill or
a cancel) finds it, checks that it is whole and of the same key, and resumes from it. Once the
weights are in MLflow the checkpoint is dropped (tasks/train.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"
FAILURE_FILE = "nonfinite.txt"
CHECKPOINT = "checkpoint.pt"  # the last epoch, when no training key names its place
CHECKPOINTS = "_checkpoints"  # <storage>/_checkpoints/<training key>.pt
PROGRESS = "progress.jsonl"
ATTEMPTS = "attempts"  # one line per attempt (Ray retries after a failure)
HELD = "held"  # written by a worker held by an injected fault
# An announced training holds the ones announced after it only until they have waited this long for it to ask
# (its thread may be slow to reach the cluster: the tracking store, a data load); then it no longer blocks them.
ARRIVAL_GRACE_SECONDS = 5.0
FAULT_ENV = "GENZOO_FAULT"


@dataclasses.dataclass(frozen=True)
class Fault:
    """Fault injection for tests and chaos drills, read from GENZOO_FAULT (JSON) in the driver's
    environment when a training of `family` is submitted, e.g. '{"family": "gan", "hold_after_epoch": 1}':

    - hold_after_epoch: after that epoch's checkpoint the worker writes <scratch>/held and stops
      making progress (a hung node); the pipeline is then killed or cancelled from outside;
    - fail_every_attempt: the worker raises before training, on every attempt, so the retries
      (train.max_failures) are exhausted.
    It never enters the training key: it changes how a training is interrupted, not what it computes."""

    family: str
    hold_after_epoch: int | None = None
    fail_every_attempt: bool = False

    @classmethod
    def from_env(cls, family: str) -> "Fault | None":
        text = os.environ.get(FAULT_ENV)
        if not text:
            return None
        fault = cls(**json.loads(text))
        return fault if fault.family == family else None


@dataclasses.dataclass
class TrainOutcome:
    status: str  # 'FINISHED' or 'FAILED'
    reason: str
    state: dict[str, Any] | None  # training_state(...) of the last epoch
    history: list[dict[str, float]]
    seconds: float
    ray_run: str


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs, shipped once through the object store."""

    family: str
    model: dict[str, Any]
    train: dict[str, Any]
    manifest: dict
    data: Any  # ray.ObjectRef of {"train": array, "val": array}
    scratch: str
    run_name: str
    fail_once_at_epoch: int | None = None
    checkpoint: str = ""  # the last epoch's checkpoint file (see the module docstring)
    train_key: str | None = None  # written into every checkpoint and checked before resuming from one
    fault: Fault | None = None


def _fit(job: TrainJob, rank: int, world: int, device: torch.device, resume: dict | None,
         save_checkpoint, node_id: str) -> None:
    """The body every worker runs: data to model space, build, fit, checkpoint each epoch."""
    import ray

    import models
    from data.prepared import to_model_space
    from genzoo.config import TrainConfig
    from genzoo.training import fit, flush_denormals

    flush_denormals()  # before this worker's first torch operation, so its thread pool computes without denormals
    torch.set_num_threads(max(1, round(job.train["cpus_per_worker"])))  # the CPUs this worker holds
    arrays = ray.get(job.data) if isinstance(job.data, ray.ObjectRef) else job.data
    train = to_model_space(arrays["train"], job.manifest)
    val = to_model_space(arrays["val"][: job.train["val_examples"]], job.manifest)
    tcfg = TrainConfig(**job.train)
    torch.manual_seed(tcfg.seed)  # same initial weights on every worker
    model = models.build(job.family, job.model).to(device)
    scratch = Path(job.scratch)
    (scratch / f"worker-{rank}.pid").write_text(str(os.getpid()))
    (scratch / f"worker-{rank}.node").write_text(node_id)
    if rank == 0:
        with open(scratch / ATTEMPTS, "a") as f:
            f.write(f"{time.time():.3f} pid {os.getpid()} from epoch {resume['epoch'] if resume else 0}\n")
    if job.fault and job.fault.fail_every_attempt:
        raise RuntimeError("injected worker failure (every attempt)")
    marker = scratch / "injected-failure"
    started = time.time()

    def on_epoch_end(epoch: int, metrics: dict[str, float], state: dict[str, Any]) -> None:
        save_checkpoint(epoch, metrics, state)
        if rank == 0:
            line = {"epoch": epoch, "epochs": tcfg.epochs, "elapsed": time.time() - started, **metrics}
            with open(scratch / PROGRESS, "a") as f:
                f.write(json.dumps(line) + "\n")
        if job.fail_once_at_epoch == epoch and rank == 0 and not marker.exists():
            marker.touch()  # fault injection (tests, chaos drills): fail once, after the checkpoint
            raise RuntimeError(f"injected worker failure after epoch {epoch}")
        if job.fault and job.fault.hold_after_epoch == epoch and rank == 0:
            (scratch / HELD).write_text(str(epoch))
            while True:  # injected hang: only a kill or a cancel from outside ends this worker
                time.sleep(1)

    quiet = (lambda msg: None) if rank else (lambda msg: print(f"[{job.run_name}] {msg}", flush=True))
    fit(model, train, tcfg, val=val, resume=resume, rank=rank, world_size=world, on_epoch_end=on_epoch_end,
        log=quiet)  # the worker's own log (Ray's log files); the driver prints progress.jsonl


def _task_body(job: TrainJob) -> dict[str, Any]:
    """A single-worker training as a Ray task: resumes from its own checkpoint when Ray retries it.
    Returns {"state": ...} or {"nonfinite": reason}."""
    import ray

    from genzoo.training import NonFiniteLoss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # Ray sets CUDA_VISIBLE_DEVICES
    ckpt = Path(job.checkpoint)
    resume = load_checkpoint(ckpt, job.train_key, job.train["epochs"], device)
    last: dict[str, Any] = {}

    def save(epoch: int, metrics: dict, state: dict) -> None:
        save_checkpoint(ckpt, job.train_key, state)
        last["state"] = state

    try:
        _fit(job, 0, 1, device, resume, save, ray.get_runtime_context().get_node_id())
    except NonFiniteLoss as exc:  # not a worker fault: a retry from the checkpoint would only diverge again
        return {"nonfinite": str(exc)}
    return {"state": _to_cpu(last["state"] if "state" in last else resume)}  # resumed at the end: nothing left


def save_checkpoint(path: Path, key: str | None, state: dict) -> None:
    """Write `state` (with the training key) atomically: a worker killed mid-write leaves the previous
    epoch's checkpoint whole. The temporary name is this writer's own, so two trainings of one key
    (two pipelines at once) never write into each other's file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.tmp")
    torch.save({**state, "train_key": key}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, key: str | None, epochs: int, device: torch.device | str = "cpu") -> dict | None:
    """The checkpoint at `path` when it is a whole file of this training (same key, an epoch within the
    budget), else None: the training then starts from zero rather than from someone else's state."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated or not a checkpoint at all
        print(f"not resuming from {path}: unreadable ({type(exc).__name__}: {exc})", flush=True)
        return None
    if not isinstance(state, dict) or state.get("train_key") != key:
        print(f"not resuming from {path}: it belongs to another training", flush=True)
        return None
    if not 0 < int(state.get("epoch", 0)) <= epochs:
        print(f"not resuming from {path}: its epoch {state.get('epoch')} is outside 1..{epochs}", flush=True)
        return None
    return state


def checkpoint_path(storage: Path, key: str | None, scratch: Path) -> Path:
    """Where a training's last epoch is kept: by its key when it has one, else in its run's scratch."""
    if key is None:
        return scratch / CHECKPOINT
    (storage / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    return storage / CHECKPOINTS / f"{key}.pt"


def drop_checkpoint(storage: Path, key: str) -> None:
    """The training's weights are in MLflow: its checkpoint is no longer needed to resume."""
    (storage / CHECKPOINTS / f"{key}.pt").unlink(missing_ok=True)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _train_worker(job: TrainJob) -> None:
    """Runs on every Ray Train worker (multi-worker trainings)."""
    import ray
    import ray.train
    import ray.train.torch

    from genzoo.training import NonFiniteLoss

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restart within this job (FailureConfig)
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=True)
    else:  # an earlier pipeline run's training of the same key, if it left one
        resume = load_checkpoint(Path(job.checkpoint), job.train_key, job.train["epochs"], device)

    def save(epoch: int, metrics: dict, state: dict) -> None:
        with tempfile.TemporaryDirectory(dir=job.scratch) as d:
            ckpt = None
            if rank == 0:
                torch.save(state, Path(d) / STATE_FILE)
                save_checkpoint(Path(job.checkpoint), job.train_key, state)
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report({**metrics, "epoch": epoch}, checkpoint=ckpt)

    try:
        _fit(job, rank, world, device, resume, save, ray.get_runtime_context().get_node_id())
    except NonFiniteLoss as exc:
        # The reason travels as a last checkpoint holding only FAILURE_FILE, which the driver reads.
        with tempfile.TemporaryDirectory(dir=job.scratch) as d:
            ckpt = None
            if rank == 0:
                (Path(d) / FAILURE_FILE).write_text(str(exc))
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report({"nonfinite": 1.0}, checkpoint=ckpt)


class Admission:
    """Admit work only when the cluster has room for it: trainings (and the driver's evaluations,
    which hold one CPU) never oversubscribe it. Ray would queue extra trainings anyway, but a queued
    Ray Train job already runs a controller process; so this process submits at most what fits.

    Trainings announced with `queue` start in the announced order (the pipeline announces the
    longest first, so the short ones fill in at the end instead of one long one running alone);
    work that was not announced goes before them. One announced earlier that has not asked yet
    holds the later ones for ARRIVAL_GRACE_SECONDS of their wait, not longer: a core is not left
    idle for a thread that is late for another reason. A training hands one CPU of its slot over to
    its model's evaluation (`hand_over`, then `slot` with the same key), so each model is evaluated
    as soon as its training ends instead of after every training waiting for that CPU.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._used = 0.0
        self._order: list[str] = []  # announced trainings not started yet, in the order they may start
        self._asking: set[str] = set()  # announced trainings waiting in `slot` now
        self._handed: dict[str, float] = {}  # key -> CPUs kept for it by the work before it (`hand_over`)
        self.grace = ARRIVAL_GRACE_SECONDS

    def queue(self, keys: list[str]) -> None:
        with self._cond:
            self._order.extend(keys)

    def cancel(self, key: str) -> None:
        """An announced training that will not ask for a slot (reused, or failed before training)."""
        with self._cond:
            if key in self._order:
                self._order.remove(key)
                self._cond.notify_all()

    def hand_over(self, key: str, need: float) -> None:
        """Keep `need` CPUs of the caller's slot, which it is about to leave, for the `slot` of `key`."""
        with self._cond:
            self._handed[key] = self._handed.get(key, 0.0) + need
            self._used += need

    def give_back(self, key: str) -> None:
        """CPUs handed over to `key` that it will not take (its work failed before asking)."""
        with self._cond:
            self._used -= self._handed.pop(key, 0.0)
            self._cond.notify_all()

    @contextlib.contextmanager
    def slot(self, need: float, capacity: float, key: str | None = None):
        with self._cond:
            if key in self._handed:  # kept for it: no wait, and the use is counted already
                need = self._handed.pop(key)
            else:
                self._wait(need, capacity, key)
                self._used += need
        try:
            yield
        finally:
            with self._cond:
                self._used -= need
                self._cond.notify_all()

    def _wait(self, need: float, capacity: float, key: str | None) -> None:
        """Until `key` may start (the condition's lock held); then it is no longer in the queue."""
        asked = time.monotonic()
        if key is not None:
            self._asking.add(key)
        try:
            while True:
                patient = time.monotonic() - asked < self.grace  # still waiting for those ahead to ask
                if self._may_start(need, capacity, key, patient):
                    break
                self._cond.wait(timeout=max(0.0, self.grace - (time.monotonic() - asked)) if patient else None)
        finally:
            self._asking.discard(key)
        if key in self._order:
            self._order.remove(key)

    def _may_start(self, need: float, capacity: float, key: str | None, patient: bool) -> bool:
        fits = self._used == 0 or self._used + need <= capacity
        ahead = self._order[:self._order.index(key)] if key in self._order else []
        return fits and not any(patient or k in self._asking for k in ahead)


admission = Admission()


def cost_probe(family: str, model_config: dict[str, Any], train_config: dict[str, Any], train: np.ndarray,
               manifest: dict) -> float:
    """Seconds a training is expected to take, from two timed steps on one batch at one thread:
    (seconds per step) x (steps). Only an ordering key for `Admission.queue`."""
    import models
    from data.prepared import to_model_space

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = models.build(family, model_config)
        batch = to_model_space(train[: train_config["batch_size"]], manifest)
        optimizers = model.configure_optimizers()
        model.training_step(batch, optimizers)  # warm-up
        t0 = time.perf_counter()
        for _ in range(2):
            model.training_step(batch, optimizers)
        per_step = (time.perf_counter() - t0) / 2
    finally:
        torch.set_num_threads(threads)
    steps = train_config["steps_per_epoch"] or max(1, len(train) // train_config["batch_size"])
    return per_step * train_config["epochs"] * steps


def cpu_capacity() -> float:
    import ray

    return ray.cluster_resources().get("CPU", 1.0)


def run_training(family: str, dataset: str, arrays: dict[str, np.ndarray], manifest: dict,
                 model_config: dict[str, Any], train_config: dict[str, Any], storage: Path,
                 run_tag: str | None = None, fail_once_at_epoch: int | None = None,
                 queue_key: str | None = None, train_key: str | None = None, resume: bool = True,
                 hand_over: str | None = None) -> TrainOutcome:
    """Train on the cluster (starting a local one if none is connected); never raises for a failed
    training: the outcome says FAILED and why. `queue_key`: its place in `admission`'s order.
    `train_key`: the training's identity, which names its checkpoint; with `resume`, a checkpoint an
    earlier (killed) run of that key left is continued, without it the training starts from zero.
    `hand_over`: the key whose `admission.slot` gets one CPU of this training's slot when it finishes
    (its model's evaluation, which then starts at once)."""
    import ray

    from tasks.services import cluster_has_gpus, ensure_ray

    ensure_ray()
    use_gpu = {"auto": None, "true": True, "false": False}[train_config["use_gpu"]]
    if use_gpu is None:
        use_gpu = cluster_has_gpus()
    elif use_gpu and not cluster_has_gpus():
        return TrainOutcome("FAILED", "use_gpu is true but the Ray cluster has no GPU", None, [], 0.0, "")
    # Unique name: Ray Train silently resumes an old run that has the same name.
    run_name = f"{family}-{dataset}-{run_tag or uuid.uuid4().hex[:8]}"
    scratch = storage / "_scratch" / run_name
    scratch.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint_path(storage, train_key, scratch)
    if not resume:
        ckpt.unlink(missing_ok=True)
    job = TrainJob(family, model_config, train_config, manifest, ray.put({k: arrays[k] for k in ("train", "val")}),
                   str(scratch), run_name, fail_once_at_epoch, str(ckpt), train_key, Fault.from_env(family))
    workers = train_config["num_workers"]
    need = workers * (1.0 if use_gpu else train_config["cpus_per_worker"])
    capacity = ray.cluster_resources().get("GPU" if use_gpu else "CPU", 1.0)
    t0 = time.perf_counter()
    try:
        with admission.slot(need, capacity, queue_key):
            t0 = time.perf_counter()  # train_seconds: from admission, not counting the wait for a free slot
            if workers == 1:
                state, failure = _run_task(job, use_gpu)
            else:
                state, failure = _run_trainer(job, use_gpu, storage)
            if hand_over is not None and not use_gpu and failure is None and state is not None:
                admission.hand_over(hand_over, min(need, 1.0))
    except Exception as exc:  # Ray wraps worker errors (TrainingFailedError, RayTaskError)
        return TrainOutcome("FAILED", f"training failed{_attempts(scratch, train_config)}: {_root_cause(exc)}", None,
                            [], time.perf_counter() - t0, run_name)
    history = state["history"] if state else []
    seconds = time.perf_counter() - t0
    if failure is not None:
        return TrainOutcome("FAILED", f"non-finite loss: {failure}", None, history, seconds, run_name)
    if state is None or not (state.get("finished") or state["epoch"] >= train_config["epochs"]):
        return TrainOutcome("FAILED", "training ended without a final checkpoint", state, history, seconds, run_name)
    return TrainOutcome("FINISHED", "", state, history, seconds, run_name)


def _run_task(job: TrainJob, use_gpu: bool) -> tuple[dict | None, str | None]:
    import ray

    retries = job.train["max_failures"]
    remote = ray.remote(_task_body).options(
        num_cpus=job.train["cpus_per_worker"], num_gpus=1 if use_gpu else 0, name=job.run_name,
        max_retries=retries, retry_exceptions=True,
        scheduling_strategy="SPREAD")  # on a multi-node cluster, trainings go to different nodes first
    out = ray.get(remote.remote(job))
    return out.get("state"), out.get("nonfinite")


def _run_trainer(job: TrainJob, use_gpu: bool, storage: Path) -> tuple[dict | None, str | None]:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": job.train["cpus_per_worker"], **({"GPU": 1} if use_gpu else {})}
    trainer = TorchTrainer(
        _train_worker, train_loop_config=job,
        scaling_config=ScalingConfig(num_workers=job.train["num_workers"], use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=job.run_name, storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=job.train["max_failures"])),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        return None, None
    with result.checkpoint.as_directory() as d:
        if (Path(d) / FAILURE_FILE).exists():
            return None, (Path(d) / FAILURE_FILE).read_text()
        return torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True), None


def ray_storage(root: Path) -> Path:
    """Where trainings keep checkpoints: GENZOO_RAY_STORAGE (a folder every node of a multi-node
    cluster can reach, e.g. NFS), else <project>/ray_results."""
    return Path(os.environ.get("GENZOO_RAY_STORAGE") or Path(root) / "ray_results").resolve()


def _attempts(scratch: Path, train_config: dict[str, Any]) -> str:
    """' on attempt 3 of 3 (train.max_failures=2)' when the worker's attempts were counted."""
    path = scratch / ATTEMPTS
    made = len(path.read_text().splitlines()) if path.is_file() else 0
    allowed = train_config["max_failures"] + 1
    return f" on attempt {made} of {allowed} (train.max_failures={allowed - 1})" if made else ""


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
