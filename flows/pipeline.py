"""The `pipeline` flow: plan -> prepare (DVC) -> every model trained on Ray, then evaluated and
registered as soon as its training ends (MLflow) -> report.

Parameters are typed, so the Prefect UI shows them as a form. The flow runs on Prefect's
ephemeral API when PREFECT_API_URL is unset. Cancelled (the UI, the API), crashed (Ctrl-C, SIGTERM)
or failed, it leaves no MLflow run RUNNING: its hooks end them KILLED or FAILED (`ON_EXIT`).
"""

# NOTE: no `from __future__ import annotations`: `flow.serve()` ships the flow function by value,
# without the module globals a string annotation (e.g. 'Preset') would need to be resolved.

from typing import Any

from prefect import flow, unmapped
from prefect.states import Failed

from genzoo.config import Preset
from genzoo.env import configure
from tasks.plan import BadInput, PipelineRequest, cluster_for, order_trainings, plan, plan_models, start_pipeline_run
from tasks.schema import PipelineResult
from tasks.tracking import close_runs_hook

# The flows' state hooks: whatever way a flow run ends early, its MLflow runs end with it.
ON_EXIT = {"on_cancellation": [close_runs_hook("KILLED")], "on_crashed": [close_runs_hook("KILLED")],
           "on_failure": [close_runs_hook("FAILED")]}

def outcome(state):
    """A subflow's result, or its failure passed on as this flow's own state: a bad input's sentence
    stays the state message (the UI's) with no traceback, and a direct call still raises the error."""
    if state.is_failed():
        return Failed(message=state.message, data=state.result(raise_on_failure=False))
    return state.result()


DEFAULT_FAMILIES = ["gan", "vae"]
DEFAULT_DATASETS = ["ring8", "grid25", "digits", "mnist"]


@flow(name="pipeline", **ON_EXIT)
def pipeline(
    families: list[str] = DEFAULT_FAMILIES,
    datasets: list[str] = DEFAULT_DATASETS,
    preset: Preset = "quick",
    train_overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, dict[str, Any]] | None = None,
    register_models: bool = True,
    reuse_trainings: bool = True,
    fail_once_at_epoch: int | None = None,
    evaluate_overrides: dict[str, Any] | None = None,
) -> PipelineResult:
    """Train and compare `families` on `datasets` with the `preset` budget."""
    from genzoo.training import flush_denormals
    from tasks import progress
    from tasks.evaluate import evaluate_baseline
    from tasks.model import build_model
    from tasks.prepare import prepare_datasets
    from tasks.register import register_evaluators
    from tasks.report import report

    root = configure()
    flush_denormals()  # the task threads (evaluation computes in them) start from this one and inherit it
    request = PipelineRequest(families, datasets, preset, train_overrides, model_overrides, evaluate_overrides,
                              register_models, reuse_trainings, fail_once_at_epoch)
    try:
        checked = plan(request, root)  # every input checked; nothing started or written yet
    except BadInput as exc:  # the flow run fails with the sentence itself (the UI's state message), no traceback
        return Failed(message=str(exc), data=exc)  # a direct call raises `exc`
    prepared = prepare_datasets(datasets, str(root))  # data versions and evaluator networks (DVC)
    requests, skipped = plan_models(checked, prepared)
    with cluster_for(checked), start_pipeline_run(checked, prepared, skipped) as (parent, ctx):
        progress.open_board(ctx.run_name, len(requests))
        try:
            requests = order_trainings(requests, ctx, list(prepared))  # the longest first, baselines last
            models = build_model.map(requests, unmapped(ctx))  # train -> evaluate -> register, each as it can
            baselines = [evaluate_baseline.submit(ctx, name, folder)
                         for name, folder in prepared.items()]
            register_evaluators(ctx, prepared)
            rows = models.result()
            [b.result() for b in baselines]
            path = report(parent.run_id, str(root / "reports"))
        finally:
            progress.close_board(ctx.run_name)
        failed = [f"{r.name}: {r.reason}" for r in rows if not r.ok]
        if failed:
            parent.fail("; ".join(failed))
    return PipelineResult(ctx.run_name, parent.run_id, rows, skipped, path)
