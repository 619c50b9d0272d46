"""The `train` task: one (family, dataset) training, tracked in the MLflow run its caller owns.

The training itself runs on Ray (tasks/ray_job.py). With `reuse`, a training that already
finished with the same family, data version and configuration (an earlier or interrupted
pipeline run) is not recomputed: its weights and history are taken from that run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import progress
from tasks.plan import queue_key
from tasks.ray_job import ray_storage, run_training
from tasks.schema import ModelRequest, RunContext, Tag
from tasks.tracking import TrackedRun, client, flatten

WEIGHTS = "model.pt"


@dataclasses.dataclass
class Trained:
    status: str
    reason: str = ""
    model_path: str | None = None
    train_seconds: float = float("nan")
    resumed_from: list[int] = dataclasses.field(default_factory=list)
    ray_run: str = ""
    reused_from: str | None = None
    already_registered: str | None = None  # NAME/VERSION of a reused training's registered model


def training_key(req: ModelRequest, fail_at: int | None) -> str:
    """Identity of a training: same key, same model (seeded), so a finished one need not be redone."""
    body = {"family": req.family, "data": req.manifest["hash"], "model": req.model, "train": req.train,
            "fail_at": fail_at}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:24]


def run_tags(req: ModelRequest, key: str, branch: str) -> dict[str, str]:
    m = req.manifest
    return {Tag.FAMILY: req.family, Tag.DATASET: req.dataset, Tag.DATA_HASH: m["hash"], Tag.DATA_SOURCE: m["source"],
            Tag.BRANCH: branch, Tag.TRAIN_KEY: key, Tag.RECIPE: req.recipe}


@task(name="train", cache_policy=NO_CACHE)
def train(req: ModelRequest, ctx: RunContext, run: TrackedRun, key: str) -> Trained:
    """Train (or reuse) and upload the weights to `run`; a failed training is a FAILED Trained, not an
    exception (service errors do raise: the run's owner records them)."""
    import data

    run.params({**flatten("model", req.model), **flatten("train", req.train), "data.name": req.dataset,
                "data.hash": req.manifest["hash"], "data.shape": str(req.manifest["shape"]),
                "data.kind": req.manifest["kind"]})
    out = Path(ctx.run_dir) / req.name
    prior = finished_training(key) if ctx.reuse else None
    if prior is not None:
        return _reuse(prior, run, out)
    arrays = data.load(req.prepared_dir).arrays
    board = progress.board(ctx.run_name)
    storage = ray_storage(Path(ctx.root))
    board.training(req.name, str(storage / "_scratch" / f"{req.name}-{ctx.tag}"))
    outcome = run_training(req.family, req.dataset, arrays, req.manifest, req.model, req.train, storage, ctx.tag,
                           ctx.fail_once_at_epoch, queue_key(ctx, req.name))
    for row in outcome.history:
        run.metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    run.metrics({"train_seconds": outcome.seconds})
    run.tag(Tag.RAY_RUN, outcome.ray_run)
    resumed = (outcome.state or {}).get("resumed_from", [])
    if resumed:
        run.tag(Tag.RESUMED_FROM, ",".join(map(str, resumed)))
    trained = Trained(outcome.status, outcome.reason, train_seconds=outcome.seconds, resumed_from=resumed,
                      ray_run=outcome.ray_run)
    if outcome.status != "FINISHED":
        return trained
    import models

    out.mkdir(parents=True, exist_ok=True)
    models.from_state(outcome.state).save(out / WEIGHTS)  # weights + config only: what the registry serves
    run.artifact(out / WEIGHTS)
    run.tag(Tag.TRAINED, "1")  # the weights are in: reusable from here on
    trained.model_path = str(out / WEIGHTS)
    return trained


def finished_training(key: str):
    """The latest run whose training with this key finished (its weights logged), or None."""
    from tasks.services import EXPERIMENT

    c = client()
    exp = c.get_experiment_by_name(EXPERIMENT)
    runs = c.search_runs([exp.experiment_id], f"tags.`{Tag.TRAIN_KEY}` = '{key}' and tags.`{Tag.TRAINED}` = '1'",
                         order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _reuse(prior, run: TrackedRun, out: Path) -> Trained:
    c = client()
    out.mkdir(parents=True, exist_ok=True)
    model_path = Path(c.download_artifacts(prior.info.run_id, WEIGHTS, str(out)))
    for name in prior.data.metrics:
        if not name.startswith("eval.") and name not in ("sample_seconds_per_sample", "samples_per_second", "samples_drawn"):
            for m in c.get_metric_history(prior.info.run_id, name):
                run.metrics({name: m.value}, step=m.step)
    run.tag(Tag.REUSED_FROM, prior.info.run_id)
    run.tag(Tag.TRAINED, "1")
    run.artifact(model_path)
    return Trained("FINISHED", train_seconds=prior.data.metrics.get("train_seconds", float("nan")),
                   reused_from=prior.info.run_id, already_registered=prior.data.tags.get(Tag.REGISTERED),
                   model_path=str(model_path))
