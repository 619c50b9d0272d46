"""`genzoo apply TASK`: the Prefect tasks that run the methods of a use (genzoo/uses/) on Ray and
track them in MLflow.

    plan_apply        every input checked before anything starts (the CLI and the flow call it)
    start_apply_run   the parent MLflow run of one apply run (owned by its `with` block)
    apply_method      one method: its own child run; the family model it needs trained or reused by
                      the pipeline's train task (a nested run, reusable by `genzoo run` and back);
                      the method run on a Ray worker; metrics, pictures, notes logged; the predictor
                      registered as <task>-<method>-<dataset>
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from data.errors import DataError
from genzoo.config import Params
from models.base import ConfigError
from tasks.schema import Tag

METRIC_PREFIX = "use."  # a method's metrics in MLflow: use.<key>
NOTES_FILE = "notes.json"
PICTURES = "pictures"  # artifact folder of a method's pictures (PNG)
POLL_SECONDS = 2.0  # how often the driver forwards a Ray worker's log lines


class UseTag:
    TASK = "genzoo.use.task"
    METHOD = "genzoo.use.method"
    PRESET = "genzoo.apply_preset"  # not Tag.PRESET: that one marks a pipeline run (tasks/report.py finds them by it)


@dataclasses.dataclass(frozen=True)
class ApplyRequest:
    """The apply flow's parameters, as one value."""

    task: str
    methods: list[str]
    dataset: str
    preset: str
    overrides: dict[str, dict[str, Any]] | None = None  # method -> setting -> value (--set <method>.<key>=...)
    register: bool = True
    reuse: bool = True  # family models: reuse a finished training of the same key


@dataclasses.dataclass(frozen=True)
class ApplyPlan:
    request: ApplyRequest
    root: Path
    params: Params
    configs: dict[str, dict[str, Any]]  # method -> its checked settings for the budget
    cpus: float  # per method run (the budget's train.cpus_per_worker)


@dataclasses.dataclass(frozen=True)
class ApplyContext:
    """What every method of one apply run shares."""

    root: str
    task: str
    dataset: str
    prepared_dir: str
    evaluator_dir: str | None
    preset: str
    run_name: str
    run_dir: str
    parent_run_id: str
    tag: str
    cpus: float
    register: bool
    reuse: bool


@dataclasses.dataclass
class MethodResult:
    """One row of a task's table."""

    task: str
    method: str
    dataset: str
    status: str = "FAILED"
    reason: str = ""
    run_id: str = ""
    seconds: float = float("nan")
    registered: str | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.task}-{self.method}-{self.dataset}"

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED"


@dataclasses.dataclass
class ApplyResult:
    run_name: str
    parent_run_id: str
    rows: list[MethodResult]
    report: str

    @property
    def failed(self) -> list[MethodResult]:
        return [r for r in self.rows if not r.ok]


def default_methods(task: str, dataset: str) -> list[str]:
    """Every method of `task` that works on `dataset` (all of them when none does: plan_apply then says why)."""
    from genzoo.uses import get_use

    methods = get_use(task).methods
    return [m for m, spec in methods.items() if dataset in spec.datasets] or list(methods)


def plan_apply(request: ApplyRequest, root: Path) -> ApplyPlan:
    """Check the task, its methods (a family that cannot do the task is refused with the reason), the
    dataset each method works on, the budget and every setting, before anything starts."""
    import data
    from genzoo.config import load_params
    from genzoo.uses import get_use
    from tasks.plan import check_trainings, local_capacity

    r = request
    params = load_params(Path(root) / "params.yaml")
    use = get_use(r.task)
    if not r.methods:
        raise ConfigError(f"no methods given for {r.task} (known: {', '.join(use.methods)})")
    if len(set(r.methods)) != len(r.methods):
        raise ConfigError(f"methods {r.methods} name the same method twice")
    if not data.is_builtin(r.dataset):
        raise DataError(f"{r.task} runs on built-in datasets only, got '{r.dataset}'")
    for m in r.methods:
        method = use.method(m)  # unknown or refused: the sentence says which and why
        if r.dataset not in method.datasets:
            raise DataError(f"{m} does not do {r.task} on {r.dataset} (it works on: {', '.join(method.datasets)})")
    for m in r.overrides or {}:
        if m not in r.methods:
            raise ConfigError(f"settings for '{m}', which is not among the methods {r.methods}")
    train = params.train_config(r.preset)
    configs = {m: params.use_settings(r.task, m, r.preset, (r.overrides or {}).get(m)).to_dict() for m in r.methods}
    check_trainings(((f"the {r.preset} budget's train settings", train),), local_capacity())
    if r.dataset not in params.datasets:
        raise DataError(f"dataset {r.dataset} is not in the datasets list of params.yaml, so dvc.yaml has no stage for it")
    return ApplyPlan(r, Path(root), params, configs, train.cpus_per_worker)


@contextlib.contextmanager
def start_apply_run(checked: ApplyPlan, prepared: dict[str, str]) -> Iterator[tuple[Any, ApplyContext]]:
    """The parent MLflow run of an apply run and the context its methods share."""
    from tasks import tracking
    from tasks.prepare import evaluator_dir

    tracking.sweep_stale_runs(checked.root)
    r = checked.request
    run_name, run_dir, tag = tracking.new_run_folder(checked.root, f"apply-{r.task}")
    tags = {UseTag.TASK: r.task, Tag.DATASET: r.dataset, UseTag.PRESET: r.preset, **tracking.flow_run_tags()}
    evaluator = evaluator_dir(checked.root, r.dataset)
    with tracking.tracked_run(checked.root, run_name, tags) as parent:
        parent.params({"task": r.task, "methods": ",".join(r.methods), "dataset": r.dataset, "preset": r.preset})
        ctx = ApplyContext(str(checked.root), r.task, r.dataset, prepared[r.dataset],
                           None if evaluator is None else str(evaluator), r.preset, run_name, str(run_dir),
                           parent.run_id, tag, checked.cpus, r.register, r.reuse)
        yield parent, ctx


@task(name="apply-method", cache_policy=NO_CACHE)
def apply_method(method: str, config: dict[str, Any], ctx: ApplyContext) -> MethodResult:
    """Never raises: a failure ends this method's run FAILED with the reason, and the row says it."""
    from genzoo.uses import get_use
    from tasks import progress
    from tasks.tracking import first_line, flatten, tracked_run

    result = MethodResult(ctx.task, method, ctx.dataset)
    spec = get_use(ctx.task).method(method)
    manifest = json.loads((Path(ctx.prepared_dir) / "manifest.json").read_text())
    tags = {UseTag.TASK: ctx.task, UseTag.METHOD: method, Tag.DATASET: ctx.dataset, Tag.DATA_HASH: manifest["hash"],
            UseTag.PRESET: ctx.preset}
    stage = "family training"
    try:
        with tracked_run(ctx.root, result.name, tags, ctx.parent_run_id) as run:
            result.run_id = run.run_id
            run.params(flatten("use", config))
            try:
                weights = family_weights(spec.family, ctx, run.run_id) if spec.family else None
                stage = "method"
                started = time.time()
                out = run_on_ray(ctx, method, config, weights, result.name)
                result.seconds = time.time() - started
                stage = "logging"
                result.metrics, result.notes = out["metrics"], out["notes"]
                log_outcome(run, out, result.seconds)
                if ctx.register and out["predictor"] is not None:
                    stage = "registration"
                    result.registered = register_predictor(run.run_id, out["predictor"], result.name, manifest)
            except Exception as exc:
                result.reason = f"{stage} failed: {first_line(exc)}"
                run.fail(result.reason)
    except Exception as exc:  # the tracking store itself failed
        result.reason = result.reason or f"tracking failed: {first_line(exc)}"
    result.status = "FAILED" if result.reason else "FINISHED"
    progress.say(f"{result.name:<20} " + (f"FAILED: {result.reason}" if result.reason else
                 f"done in {result.seconds:.0f} s" + (f"; registered {result.registered}" if result.registered else "")))
    return result


def family_weights(family: str, ctx: ApplyContext, run_id: str) -> str:
    """The weights of `family` trained on the dataset with its recipe for this budget: the pipeline's
    own train step (on Ray, or a finished training of the same key reused), in a run nested under the
    method's, so `genzoo run` reuses it and this reuses `genzoo run`'s."""
    import models
    from tasks.plan import PipelineRequest, plan, plan_models
    from tasks.schema import RunContext
    from tasks.tracking import tracked_run
    from tasks.train import run_tags, train, training_key

    checked = plan(PipelineRequest([family], [ctx.dataset], ctx.preset), Path(ctx.root))
    requests, skipped = plan_models.fn(checked, {ctx.dataset: ctx.prepared_dir})
    if not requests:
        raise ConfigError(skipped[0] if skipped else f"{family} cannot train on {ctx.dataset}")
    req = requests[0]
    key = training_key(req, None)
    rctx = RunContext(ctx.root, ctx.run_name, ctx.run_dir, run_id, ctx.tag, checked.evaluate.to_dict(), {},
                      register=False, reuse=ctx.reuse)
    with tracked_run(ctx.root, req.name, run_tags(req, key, models.get_family(family).branch), run_id) as frun:
        trained = train(req, rctx, frun, key)
        if trained.status != "FINISHED":
            frun.fail(trained.reason)
            raise RuntimeError(f"training {req.name} failed: {trained.reason}")
    return trained.model_path


@dataclasses.dataclass(frozen=True)
class UseJob:
    """What the Ray worker needs for one method run."""

    task: str
    method: str
    dataset: str
    prepared_dir: str
    evaluator_dir: str | None
    config: dict[str, Any]
    family_weights: str | None
    cpus: float
    log_file: str


def _run_use(job: UseJob) -> dict[str, Any]:
    """The Ray worker's body: data, evaluator and family model loaded, the method run."""
    import torch

    import data
    import models
    from genzoo.evaluation import networks
    from genzoo.training import flush_denormals
    from genzoo.uses import UseInputs, get_use

    flush_denormals()  # before this worker's first torch operation (genzoo.training.flush_denormals)
    torch.set_num_threads(max(1, round(job.cpus)))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log_file = open(job.log_file, "a", buffering=1)

    def log(message: str) -> None:
        log_file.write(message.rstrip() + "\n")

    method = get_use(job.task).method(job.method)
    family_model = models.load(job.family_weights, map_location=device).eval() if job.family_weights else None
    evaluator = networks.load(job.evaluator_dir)[0].to(device) if job.evaluator_dir else None
    history: list[dict[str, float]] = []
    inputs = UseInputs(job.task, job.method, job.dataset, data.load(job.prepared_dir), method.Config(**job.config),
                       device, evaluator, family_model, log, history.append)
    try:
        outcome = method.run(inputs)
    finally:
        log_file.close()
    predictor = None
    if outcome.predictor is not None:
        p = outcome.predictor
        predictor = {"task": job.task, "method": job.method, "config": p.config,
                     "state_dict": {k: v.detach().cpu() for k, v in p.state_dict().items()}}
    return {"metrics": {k: float(v) for k, v in outcome.metrics.items()}, "notes": list(outcome.notes),
            "pictures": {k: np.asarray(v, dtype=np.float32) for k, v in outcome.pictures.items()},
            "history": history, "predictor": predictor}


def run_on_ray(ctx: ApplyContext, method: str, config: dict[str, Any], weights: str | None, name: str) -> dict:
    """The method on a Ray worker holding the budget's CPUs (a GPU where the cluster has one); its log
    lines are forwarded to this terminal as they come."""
    import ray

    from tasks import progress
    from tasks.services import cluster_has_gpus, ensure_ray

    ensure_ray()
    scratch = Path(ctx.run_dir) / name
    scratch.mkdir(parents=True, exist_ok=True)
    log_file = scratch / "log.txt"
    log_file.touch()
    job = UseJob(ctx.task, method, ctx.dataset, ctx.prepared_dir, ctx.evaluator_dir, config, weights, ctx.cpus,
                 str(log_file))
    remote = ray.remote(_run_use).options(num_cpus=ctx.cpus, num_gpus=1 if cluster_has_gpus() else 0,
                                          max_retries=0, name=f"{name}-{ctx.tag}")
    ref = remote.remote(job)
    seen = 0
    while True:
        done, _ = ray.wait([ref], timeout=POLL_SECONDS)
        lines = log_file.read_text().splitlines()
        for line in lines[seen:]:
            progress.say(f"{name:<20} {line}")
        seen = len(lines)
        if done:
            return ray.get(ref)


def log_outcome(run, out: dict, seconds: float) -> None:
    """Metrics (use.<key>, per-epoch history as steps), pictures (PNG) and notes, on the method's run."""
    from genzoo.plots import save_picture

    for step, row in enumerate(out["history"], start=1):
        run.metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=int(row.get("epoch", step)))
    run.metrics({f"{METRIC_PREFIX}{k}": v for k, v in out["metrics"].items() if np.isfinite(v)})
    run.metrics({"seconds": seconds})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / PICTURES
        folder.mkdir()
        for name, image in out["pictures"].items():
            save_picture(image, folder / f"{name}.png")
        (Path(tmp) / NOTES_FILE).write_text(json.dumps(out["notes"], indent=1) + "\n")
        from tasks.tracking import client

        client().log_artifacts(run.run_id, str(folder), PICTURES)
        run.artifact(Path(tmp) / NOTES_FILE)


def register_predictor(run_id: str, predictor: dict, name: str, manifest: dict) -> str:
    """The predictor logged as an MLflow pyfunc (genzoo/serving/use_model.py) and registered as `name`;
    returns NAME/VERSION."""
    import warnings

    import mlflow
    import torch

    from genzoo.uses import PREDICTOR_FILE
    from tasks.register import create_version, pip_requirements
    from tasks.services import client

    import genzoo.serving.use_model

    with tempfile.TemporaryDirectory() as tmp, _quiet("mlflow.pyfunc"):
        path = Path(tmp) / PREDICTOR_FILE
        torch.save(predictor, path)
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(Add type hints|An input example was not provided)")
            # no signature: each task's predictor documents its own input and output (genzoo/uses/), and
            # MLflow's attempt to infer one from the type hint is a warning a run, silenced here
            info = mlflow.pyfunc.log_model(name="model", python_model=str(Path(genzoo.serving.use_model.__file__)),
                                           artifacts={"predictor": str(path)}, pip_requirements=pip_requirements())
    version = create_version(name, info, run_id, {"data_hash": manifest["hash"], "task": predictor["task"],
                                                  "method": predictor["method"]})
    registered = f"{name}/{version.version}"
    client().set_tag(run_id, Tag.REGISTERED, registered)
    return registered


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    import logging

    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
