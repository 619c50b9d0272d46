"""What a pipeline run will do, decided before it does anything: the inputs checked (`plan`), the
models to build once the data is prepared (`plan_models`), and the parent MLflow run that holds
them (`start_pipeline_run`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE

from data.errors import DataError
from genzoo.config import EvalConfig, Params, TrainConfig
from models.base import ConfigError
from tasks.schema import ModelRequest, RunContext, Tag


BadInput = (DataError, ConfigError)  # what `plan` raises for a bad input: one sentence, exit 2 (genzoo/cli.py)


@dataclasses.dataclass(frozen=True)
class PipelineRequest:
    """The flow's parameters, as one value."""

    families: list[str]
    datasets: list[str]
    preset: str
    train_overrides: dict[str, Any] | None = None
    model_overrides: dict[str, dict[str, Any]] | None = None
    evaluate_overrides: dict[str, Any] | None = None
    register: bool = True
    reuse: bool = True
    fail_once_at_epoch: int | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """A checked request: the project's params (with `evaluate` overridden) and the budget's train config."""

    request: PipelineRequest
    root: Path
    params: Params
    train: TrainConfig
    # every train config a training of this run may get (the budget's, each recipe's), for `check_cluster`
    trainings: tuple[tuple[str, TrainConfig], ...] = ()

    @property
    def evaluate(self) -> EvalConfig:
        return self.params.evaluate


def plan(request: PipelineRequest, root: Path) -> Plan:
    """Check every input before anything runs or is written (the CLI calls this before any service
    starts; the flow calls it again for runs started from the Prefect UI, where a bad input fails the
    flow run with the same sentence). User datasets are read as headers (sizes bounded) and their
    values checked in chunks; overrides against the typed configs; trainings against the CPUs and
    GPUs they would need."""
    import data
    import models
    from genzoo.config import load_params

    r = request
    params = load_params(root / "params.yaml")
    if r.evaluate_overrides:
        params.evaluate = EvalConfig.from_dict({**params.evaluate.to_dict(), **r.evaluate_overrides}, "evaluate")
    if params.evaluate.fid_network == "inception":  # an offline machine fails here, not after the training
        from genzoo.evaluation import inception

        inception.network_file()
    if not r.families:
        raise models.ConfigError("no families given")
    if not r.datasets:
        raise data.DataError("no datasets given")
    for f in r.families:
        models.get_family(f)
    names = [data.dataset_name(d) for d in r.datasets]
    if len(set(names)) != len(names):
        raise data.DataError(f"datasets {r.datasets} name the same dataset twice")
    train_cfg = params.train_config(r.preset, r.train_overrides)
    for f in r.model_overrides or {}:
        if f not in r.families:
            raise models.ConfigError(f"model overrides for '{f}', which is not among the families {r.families}")
    for f in r.families:  # key and value check of every family's settings
        values = {**params.models.get(f, {}), **(r.model_overrides or {}).get(f, {})}
        _check_family_values(f, models.get_family(f).Config.from_dict({"data_shape": [1], "data_kind": "points",
                                                                        **values}))
    trainings = ((f"the {r.preset} budget's train settings", train_cfg),) + tuple(
        (f"the {recipe.name} recipe's train settings", recipe.train) for recipe in _recipes(params, r))
    check_trainings(trainings, local_capacity())
    for spec in r.datasets:
        _check_dataset(spec, params)
    return Plan(r, root, params, train_cfg, trainings)


def _recipes(params: Params, r: PipelineRequest) -> list:
    """Every recipe a family of this run may train with (whichever kind of data it meets)."""
    return [params.resolve(f, kind, r.preset, r.train_overrides, (r.model_overrides or {}).get(f))
            for f in r.families for kind in params.recipes.get(f, {})]


# Integer settings that are sizes wherever a family has them (a zero there builds an empty network).
# NOTE: a family's own config is the better place for its checks; these are the ones shared by name.
SIZE_FIELDS = ("hidden", "latent_dim", "channels", "layers", "width", "depth", "timesteps", "code_dim", "kernel")


def _check_family_values(family: str, config: Any) -> None:
    """What the families' configs do not check themselves: seeds in numpy's range, no negative (or
    zero, for sizes) integers."""
    from genzoo.config import check_seed
    from models import ConfigError

    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name == "seed":
            check_seed(f"{family}.seed", value)
        elif field.name in SIZE_FIELDS and isinstance(value, int) and value <= 0:
            raise ConfigError(f"{family}.{field.name} is a size and must be positive, got {value}")
        elif isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{family}.{field.name} must not be negative, got {value}")
        elif isinstance(value, tuple) and any(isinstance(v, int) and v <= 0 for v in value):
            raise ConfigError(f"{family}.{field.name} must hold positive sizes, got {list(value)}")


def _check_dataset(spec: str, params: Params) -> None:
    """A built-in dataset must have its DVC stage; a user's file or folder is read as headers (size
    bounded) and its values checked in chunks, so a bad one fails here, not in the prepare step."""
    import data
    from data import user

    if data.is_builtin(spec):
        if spec not in params.datasets:
            raise data.DataError(f"dataset {spec} is not in the datasets list of params.yaml, "
                                 f"so dvc.yaml has no stage for it")
        return
    user.check(Path(spec))


@dataclasses.dataclass(frozen=True)
class Capacity:
    """What a training can be given: CPUs and GPUs, and where (for the sentence)."""

    cpus: float
    gpus: int
    where: str


def local_capacity() -> Capacity | None:
    """The connected Ray cluster's resources; else this machine's (the local Ray genzoo would start);
    None for a RAY_ADDRESS cluster not yet connected (`check_cluster` checks it once connected)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        res = ray.cluster_resources()
        return Capacity(float(res.get("CPU", 0)), int(res.get("GPU", 0)), "the Ray cluster")
    if os.environ.get("RAY_ADDRESS"):
        return None
    import torch
    from ray._private.utils import get_num_cpus  # what a local ray.init would give its cluster (cgroup limits)

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpus = min(cpus, get_num_cpus())
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Capacity(float(cpus), gpus, "this machine")


def check_trainings(trainings: tuple[tuple[str, TrainConfig], ...], capacity: Capacity | None) -> None:
    """Refuse a training that could never be scheduled: more CPUs (or GPUs) than `capacity` has."""
    from models import ConfigError

    if capacity is None:
        return
    for where, t in trainings:
        need = t.num_workers * t.cpus_per_worker
        if need > capacity.cpus:
            raise ConfigError(f"{where}: num_workers {t.num_workers} x cpus_per_worker {t.cpus_per_worker:g} = "
                              f"{need:g} CPUs per training, but {capacity.where} has {capacity.cpus:g}, so it could "
                              f"never start (lower --num-workers or train.cpus_per_worker)")
        if t.use_gpu == "true" and capacity.gpus == 0:
            raise ConfigError(f"{where}: use_gpu is true but {capacity.where} has no CUDA GPU "
                              f"(use --use-gpu auto or false)")
        if t.use_gpu == "true" and t.num_workers > capacity.gpus:
            raise ConfigError(f"{where}: use_gpu is true with num_workers {t.num_workers}, but {capacity.where} has "
                              f"{capacity.gpus} GPU(s), one per worker is needed")


@contextlib.contextmanager
def cluster_for(checked: Plan) -> Iterator[None]:
    """Ray for this run (started here, or the RAY_ADDRESS cluster), its resources checked against the
    plan's trainings before anything is submitted: a flow run from the UI gets the CLI's check."""
    from tasks.services import ray_session

    with ray_session():
        check_cluster(checked)
        yield


def check_cluster(checked: Plan) -> None:
    """Once connected (the CLI calls this right after Ray starts), the trainings against the cluster's
    own resources: a RAY_ADDRESS cluster too small is refused before any training is submitted."""
    check_trainings(checked.trainings, local_capacity())


@task(name="plan-models", cache_policy=NO_CACHE)
def plan_models(checked: Plan, prepared: dict[str, str]) -> tuple[list[ModelRequest], list[str]]:
    """Which family trains on which prepared dataset with which recipe and evaluation sample count,
    and what is skipped (and why)."""
    import models
    from data.prepared import read_manifest
    from genzoo.config import recipe_kind
    from genzoo.evaluation.protocol import sample_count

    r, params = checked.request, checked.params
    requests, skipped = [], []
    for name, folder in prepared.items():
        manifest = read_manifest(folder)
        n = sample_count(manifest, params.evaluate)
        for family in r.families:
            cls = models.get_family(family)
            if manifest["kind"] not in cls.supported_kinds:
                skipped.append(f"{family} on {name}: {family} fits {', '.join(cls.supported_kinds)} data, "
                               f"{name} is {manifest['kind']}")
                continue
            recipe = params.resolve(family, recipe_kind(manifest["shape"], manifest["kind"]), r.preset,
                                    r.train_overrides, (r.model_overrides or {}).get(family))
            mcfg = {**recipe.model, "data_shape": manifest["shape"], "data_kind": manifest["kind"]}
            if manifest["levels"] >= 2:
                mcfg["levels"] = manifest["levels"]
            try:
                cls.check_data(cls.Config.from_dict(mcfg))
            except models.ConfigError as exc:  # e.g. pixelcnn on 3-channel images
                skipped.append(f"{family} on {name}: {exc}")
                continue
            requests.append(ModelRequest(family, name, folder, manifest, mcfg, recipe.train.to_dict(), recipe.name, n))
    return requests, skipped


@contextlib.contextmanager
def start_pipeline_run(checked: Plan, prepared: dict[str, str], skipped: list[str]) -> Iterator[tuple[Any, RunContext]]:
    """The parent MLflow run of a pipeline run (owned by the `with` block) and the context its models share.
    First, the runs a killed pipeline of this host left RUNNING are ended KILLED (tracking.sweep_stale_runs);
    the parent run is tagged with the Prefect flow run, so the flow's hooks find it (tracking.close_runs_hook)."""
    from tasks import tracking
    from tasks.prepare import evaluator_dir
    from tasks.progress import say

    swept = tracking.sweep_stale_runs(checked.root)
    if swept:
        say(f"ended {len(swept)} MLflow run(s) left RUNNING by a pipeline that was killed: KILLED")
    r = checked.request
    run_name, run_dir, tag = tracking.new_run_folder(checked.root, "pipeline")
    tags = {Tag.PRESET: r.preset, **tracking.flow_run_tags()}
    with tracking.tracked_run(checked.root, run_name, tags) as parent:
        parent.params({"families": ",".join(r.families), "datasets": ",".join(prepared), "preset": r.preset,
                       **tracking.flatten("train", checked.train.to_dict()),
                       **tracking.flatten("evaluate", checked.evaluate.to_dict())})
        parent.tag(Tag.SKIPPED, json.dumps(skipped))
        evaluators = {name: evaluator_dir(checked.root, name) for name in prepared}
        ctx = RunContext(str(checked.root), run_name, str(run_dir), parent.run_id, tag, checked.evaluate.to_dict(),
                         {k: None if v is None else str(v) for k, v in evaluators.items()}, r.register, r.reuse,
                         r.fail_once_at_epoch)
        yield parent, ctx


@task(name="order-trainings", cache_policy=NO_CACHE)
def order_trainings(requests: list[ModelRequest], ctx: RunContext, datasets: list[str]) -> list[ModelRequest]:
    """The cluster's admission order: the longest trainings first (two timed steps each,
    tasks/ray_job.py:cost_probe), so the short ones fill the cores at the end, then the datasets'
    baselines (references: they never hold a CPU a training is waiting for)."""
    import data
    from tasks import progress
    from tasks.ray_job import admission, cost_probe, cpu_capacity

    ordered = requests
    if sum(r.train["num_workers"] * r.train["cpus_per_worker"] for r in requests) > cpu_capacity():
        arrays = {r.prepared_dir: data.load(r.prepared_dir).arrays["train"] for r in requests}
        cost = {r.name: cost_probe(r.family, r.model, r.train, arrays[r.prepared_dir], r.manifest) for r in requests}
        ordered = sorted(requests, key=lambda r: -cost[r.name])
        progress.board(ctx.run_name).expect(cost)
    admission.queue([queue_key(ctx, r.name) for r in ordered] + [queue_key(ctx, f"baseline-{d}") for d in datasets])
    return ordered


def queue_key(ctx: RunContext, name: str) -> str:
    """A training's (or baseline's) place in the admission queue: unique across concurrent runs."""
    return f"{ctx.run_name}/{name}"


def evaluation_key(ctx: RunContext, name: str) -> str:
    """The admission key of a model's evaluation, which its training hands a CPU over to."""
    return queue_key(ctx, f"{name}/evaluation")
