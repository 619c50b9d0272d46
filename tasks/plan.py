"""What a pipeline run will do, decided before it does anything: the inputs checked (`plan`), the
models to build once the data is prepared (`plan_models`), and the parent MLflow run that holds
them (`start_pipeline_run`)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any, Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE

from genzoo.config import EvalConfig, Params, TrainConfig
from tasks.schema import ModelRequest, RunContext, Tag


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

    @property
    def evaluate(self) -> EvalConfig:
        return self.params.evaluate


def plan(request: PipelineRequest, root: Path) -> Plan:
    """Check every input before anything runs or is written (the CLI calls this before any service
    starts; the flow calls it again for runs started from the Prefect UI)."""
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
        models.get_family(f).Config.from_dict({"data_shape": [1], "data_kind": "points", **values})
    return Plan(r, root, params, train_cfg)


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
    from prefect.runtime import flow_run

    from tasks import tracking
    from tasks.prepare import evaluator_dir
    from tasks.progress import say

    swept = tracking.sweep_stale_runs(checked.root)
    if swept:
        say(f"ended {len(swept)} MLflow run(s) left RUNNING by a pipeline that was killed: KILLED")
    r = checked.request
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    tag = uuid.uuid4().hex[:6]
    run_name = f"pipeline-{stamp}-{tag}"
    run_dir = checked.root / "runs" / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    tags = {Tag.PRESET: r.preset}
    if flow_run.get_id():
        tags.update({Tag.PREFECT_FLOW_RUN: str(flow_run.get_id()),
                     Tag.PREFECT_ROOT_FLOW_RUN: str(flow_run.get_root_flow_run_id())})
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
