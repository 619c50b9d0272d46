"""The life of one model in a pipeline run: train -> evaluate -> register, in one MLflow child run
that this task opens and closes. Models run this concurrently, so each is sampled, evaluated and
registered as soon as its own training ends, while the others still train."""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

import models
from tasks import progress
from tasks.evaluate import evaluate_model
from tasks.plan import evaluation_key, queue_key
from tasks.ray_job import admission
from tasks.register import ensure_promoted, register_and_promote
from tasks.schema import ModelRequest, ModelResult, RunContext, Tag
from tasks.tracking import first_line, tracked_run
from tasks.train import run_tags, train, training_key


def headline(metrics: dict) -> str:
    """The one or two numbers a person looks at first."""
    parts = []
    if "test_nll" in metrics:
        parts.append(f"test NLL {metrics['test_nll']:.4g}")
    if "modes_captured" in metrics:
        if "high_quality_fraction" in metrics:  # 2-D mixtures; Stacked MNIST's modes have no distance to one
            detail = f"{100 * metrics['high_quality_fraction']:.0f}% high quality"
        else:
            detail = f"KL {metrics['kl_to_uniform']:.3g}"
        parts.append(f"modes {int(metrics['modes_captured'])}/{int(metrics['modes_total'])}, {detail}")
    if "energy_distance" in metrics and "modes_captured" not in metrics:  # vectors
        parts.append(f"energy distance {metrics['energy_distance']:.3g}")
    if "fid" in metrics:
        parts.append(f"FID {metrics['fid']:.4g}")
    return ", ".join(parts) or "evaluated"


@task(name="model", cache_policy=NO_CACHE)
def build_model(req: ModelRequest, ctx: RunContext) -> ModelResult:
    """Never raises: a failure (the training's, the evaluation's, a service's) ends this model's run
    FAILED with the reason, and the row says it."""
    board = progress.board(ctx.run_name)
    result = ModelResult(req.family, req.dataset, branch=models.get_family(req.family).branch)
    stage = ["training"]
    try:
        key = training_key(req, ctx.fail_once_at_epoch)
        with tracked_run(ctx.root, req.name, run_tags(req, key, result.branch), ctx.parent_run_id) as run:
            result.run_id = run.run_id
            try:
                _train_evaluate_register(req, ctx, run, key, result, stage)
            except Exception as exc:
                result.reason = f"{stage[0]} failed: {first_line(exc)}"
            if result.reason:
                run.fail(result.reason)
    except Exception as exc:  # the tracking store itself failed
        result.reason = result.reason or f"tracking failed: {first_line(exc)}"
    finally:  # nothing stays held in the cluster's queue: its place (failed before training) ...
        admission.cancel(queue_key(ctx, req.name))
        admission.give_back(evaluation_key(ctx, req.name))  # ... and the CPU handed over to an evaluation that never ran
    result.status = "FAILED" if result.reason else "FINISHED"
    if not result.ok:
        board.finished(req.name, f"FAILED: {result.reason}")
        return result
    how = "reused" if result.reused_from else f"trained in {result.train_seconds:.0f} s"
    where = f"; registered {result.registered}" + (f" ({result.decision})" if result.decision else "")
    board.finished(req.name, f"{how}; {headline(result.metrics)}{where if result.registered else ''}")
    return result


def _train_evaluate_register(req: ModelRequest, ctx: RunContext, run, key: str, result: ModelResult,
                             stage: list[str]) -> None:
    result.started_at = time.time()
    try:
        trained = train(req, ctx, run, key, hand_over=evaluation_key(ctx, req.name))  # a CPU for evaluate_model
    finally:  # a reused training never asked for a slot: its place in the queue goes to the next
        admission.cancel(queue_key(ctx, req.name))
    result.ended_at = time.time()
    result.train_seconds, result.resumed_from = trained.train_seconds, trained.resumed_from
    result.train_steps, result.bfloat16 = trained.train_steps, trained.bfloat16
    result.ray_run, result.reused_from = trained.ray_run, trained.reused_from
    if trained.status != "FINISHED":
        result.reason = trained.reason
        return
    result.model_path = trained.model_path
    stage[0] = "evaluation"
    result.metrics = evaluate_model(req, ctx, run, trained.model_path)
    stage[0] = "registration"
    decision = None
    if trained.already_registered:  # a reused training keeps its registered version
        result.registered = trained.already_registered
        run.tag(Tag.REGISTERED, trained.already_registered)
        if ctx.register:  # and is decided on, if a crash came between its registration and promotion
            decision = ensure_promoted(trained.already_registered, result.metrics)
    elif ctx.register:
        decision = register_and_promote(req, run, trained.model_path, result.metrics)
    if decision is not None:
        result.registered, result.decision = decision["registered"], decision["decision"]
        result.decision_reason = decision["reason"]
