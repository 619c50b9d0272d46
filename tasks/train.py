"""The `train` task: one (family, dataset) training, tracked in the MLflow run its caller owns.

The training itself runs on Ray (tasks/ray_job.py). With `reuse`, a training that already
finished with the same key (family, data version, configuration and training code: `training_key`)
in an earlier or interrupted pipeline run is not recomputed: its weights and history are taken from
that run; one that was killed before it finished resumes from its last checkpoint.

What a run's tags promise holds when they are read: `genzoo.trained` (with the weights' SHA-256) is
set only after the weights are uploaded, and reuse downloads them and checks that digest, so an
interrupted upload leaves a run that reuse passes over.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from data.sources import sha256_file
from tasks import progress
from tasks.plan import queue_key
from tasks.ray_job import drop_checkpoint, ray_storage, run_training
from tasks.schema import ModelRequest, RunContext, Tag, training_facts
from tasks.tracking import TrackedRun, client, flatten

WEIGHTS = "model.pt"
# Beside the family's own module and the models/ modules it imports: the loop every family trains
# with and the conversion of stored data to model space. Paths relative to the package root.
TRAINING_CODE = ("genzoo/training.py", "data/prepared.py")
REUSE_CANDIDATES = 5  # finished runs of one key tried, newest first, before training anew


@dataclasses.dataclass
class Trained:
    status: str
    reason: str = ""
    model_path: str | None = None
    train_seconds: float = float("nan")
    train_steps: int = 0  # optimiser steps run (a train.budget_seconds may have cut them)
    bfloat16: bool = False  # whether its forward passes ran in bfloat16
    resumed_from: list[int] = dataclasses.field(default_factory=list)
    ray_run: str = ""
    reused_from: str | None = None
    already_registered: str | None = None  # NAME/VERSION of a reused training's registered model


def training_key(req: ModelRequest, fail_at: int | None) -> str:
    """Identity of a training: same key, same model (seeded), so a finished one need not be redone.
    The code version is in it, so a fixed family or training loop never reuses old weights."""
    body = {"family": req.family, "data": req.manifest["hash"], "model": req.model, "train": req.train,
            "fail_at": fail_at, "code": code_version(req.family)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:24]


@functools.lru_cache(maxsize=None)
def code_version(family: str) -> str:
    """Digest of the code a training of `family` runs: its module, the models/ modules it imports
    (transitively, models/base.py among them) and TRAINING_CODE. Each file counts by its syntax tree
    without docstrings, so comments, formatting and documentation change nothing, any change to
    what runs changes the digest.
    NOTE: the Ray glue (tasks/ray_job.py) and the registry (models/__init__.py) are left out: they
    change for reasons that do not change a trained model, and a digest that moves with them would
    make every edit of the platform retrain everything."""
    import inspect

    import models

    root = Path(models.__file__).resolve().parent.parent
    own = Path(inspect.getsourcefile(models.get_family(family))).resolve()
    return source_digest(root, sorted(models_imported(root, own) | {root / p for p in TRAINING_CODE}))


def source_digest(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):  # docstrings are documentation, not code
            body = getattr(node, "body", None)
            if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                    and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + ast.dump(tree).encode() + b"\0")
    return h.hexdigest()[:16]


def models_imported(root: Path, path: Path, package: str = "models") -> set[Path]:
    """`path` and every module of `package` it imports, directly or through another one."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for node in ast.walk(ast.parse(current.read_text(), str(current))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                module = root.joinpath(*parts).with_suffix(".py")
                if parts[0] == package and len(parts) > 1 and module.is_file():
                    todo.append(module)
    return seen


def run_tags(req: ModelRequest, key: str, branch: str) -> dict[str, str]:
    m = req.manifest
    return {Tag.FAMILY: req.family, Tag.DATASET: req.dataset, Tag.DATA_HASH: m["hash"], Tag.DATA_SOURCE: m["source"],
            Tag.BRANCH: branch, Tag.TRAIN_KEY: key, Tag.RECIPE: req.recipe, Tag.CODE_VERSION: code_version(req.family)}


@task(name="train", cache_policy=NO_CACHE)
def train(req: ModelRequest, ctx: RunContext, run: TrackedRun, key: str, hand_over: str | None = None) -> Trained:
    """Train (or reuse) and upload the weights to `run`; a failed training is a FAILED Trained, not an
    exception (service errors do raise: the run's owner records them). `hand_over`: the admission key that
    gets one CPU of the training's slot when it ends (the caller's evaluation, which must take it or give it back)."""
    import data

    run.params({**flatten("model", req.model), **flatten("train", req.train), "data.name": req.dataset,
                "data.hash": req.manifest["hash"], "data.shape": str(req.manifest["shape"]),
                "data.kind": req.manifest["kind"]})
    out = Path(ctx.run_dir) / req.name
    reused = _reuse_finished(key, run, out) if ctx.reuse else None
    if reused is not None:
        return reused
    arrays = data.load(req.prepared_dir).arrays
    board = progress.board(ctx.run_name)
    storage = ray_storage(Path(ctx.root))
    board.training(req.name, str(storage / "_scratch" / f"{req.name}-{ctx.tag}"))
    outcome = run_training(req.family, req.dataset, arrays, req.manifest, req.model, req.train, storage, ctx.tag,
                           ctx.fail_once_at_epoch, queue_key(ctx, req.name), train_key=key, resume=ctx.reuse,
                           hand_over=hand_over)
    for row in outcome.history:
        run.metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    run.metrics({"train_seconds": outcome.seconds})
    run.tag(Tag.RAY_RUN, outcome.ray_run)
    resumed = (outcome.state or {}).get("resumed_from", [])
    if resumed:
        run.tag(Tag.RESUMED_FROM, ",".join(map(str, resumed)))
    trained = Trained(outcome.status, outcome.reason, train_seconds=outcome.seconds, resumed_from=resumed,
                      ray_run=outcome.ray_run, **training_facts(outcome.history[-1] if outcome.history else {}))
    if outcome.status != "FINISHED":
        return trained
    import models

    out.mkdir(parents=True, exist_ok=True)
    models.from_state(outcome.state).save(out / WEIGHTS)  # weights + config only: what the registry serves
    mark_trained(run, out / WEIGHTS)
    drop_checkpoint(storage, key)  # from here on a re-run reuses the weights in MLflow
    trained.model_path = str(out / WEIGHTS)
    return trained


def mark_trained(run: TrackedRun, weights: Path) -> None:
    """Upload the weights, then (only then) tag the run trained with their digest: reusable from here on."""
    digest = sha256_file(weights)
    run.artifact(weights)
    run.tag(Tag.WEIGHTS_SHA256, digest)
    run.tag(Tag.TRAINED, "1")


def finished_trainings(key: str, limit: int = REUSE_CANDIDATES) -> list:
    """The latest runs whose training with this key finished (weights uploaded, then tagged), newest first."""
    from tasks.services import EXPERIMENT

    c = client()
    exp = c.get_experiment_by_name(EXPERIMENT)
    return c.search_runs([exp.experiment_id], f"tags.`{Tag.TRAIN_KEY}` = '{key}' and tags.`{Tag.TRAINED}` = '1'",
                         order_by=["attributes.start_time DESC"], max_results=limit)


def reusable_weights(prior, out: Path) -> Path | None:
    """The prior run's weights downloaded to `out`, when they are there and match the digest it was
    tagged with (a run tagged before this check existed has none to match: its download is enough)."""
    c = client()
    out.mkdir(parents=True, exist_ok=True)
    try:
        path = Path(c.download_artifacts(prior.info.run_id, WEIGHTS, str(out)))
    except Exception:  # tagged but the artifact is gone (a deleted or broken store)
        return None
    expected = prior.data.tags.get(Tag.WEIGHTS_SHA256)
    if not path.is_file() or (expected is not None and sha256_file(path) != expected):
        path.unlink(missing_ok=True)
        return None
    return path


def _reuse_finished(key: str, run: TrackedRun, out: Path) -> Trained | None:
    """The newest finished training of `key` whose weights check out, reused in `run`; or None."""
    for prior in finished_trainings(key):
        model_path = reusable_weights(prior, out)
        if model_path is not None:
            return _reuse(prior, run, model_path)
    return None


def _reuse(prior, run: TrackedRun, model_path: Path) -> Trained:
    c = client()
    for name in prior.data.metrics:
        if not name.startswith("eval.") and name not in ("sample_seconds_per_sample", "samples_per_second", "samples_drawn"):
            for m in c.get_metric_history(prior.info.run_id, name):
                run.metrics({name: m.value}, step=m.step)
    run.tag(Tag.REUSED_FROM, prior.info.run_id)
    mark_trained(run, model_path)
    return Trained("FINISHED", train_seconds=prior.data.metrics.get("train_seconds", float("nan")),
                   **training_facts(prior.data.metrics), reused_from=prior.info.run_id,
                   already_registered=registered_version(prior),
                   model_path=str(model_path))


def registered_version(prior) -> str | None:
    """NAME/VERSION the prior run registered: its tag, else the registry's version made from that run
    (a crash between creating the version and tagging the run)."""
    tagged = prior.data.tags.get(Tag.REGISTERED)
    if tagged:
        return tagged
    versions = client().search_model_versions(f"run_id = '{prior.info.run_id}'")
    if not versions:
        return None
    v = max(versions, key=lambda v: int(v.version))
    return f"{v.name}/{v.version}"
