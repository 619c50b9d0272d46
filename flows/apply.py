"""The `apply` flows: what generative models are for, measured (genzoo/uses/). One flow per task,
each a deployment in the Prefect UI; `genzoo apply TASK` runs the same flow from a shell.

    plan -> prepare the dataset (DVC) -> every method on Ray: the family model it needs trained or
    reused (the pipeline's train step), the method run, metrics and pictures (MLflow), the predictor
    registered as <task>-<method>-<dataset> -> the task's report
"""

# NOTE: no `from __future__ import annotations`: `flow.serve()` ships the flow function by value,
# without the module globals a string annotation (e.g. 'Preset') would need to be resolved.

from typing import Any

from prefect import flow, unmapped
from prefect.states import Failed

from genzoo.config import Preset
from genzoo.env import configure
from genzoo.uses import DEFAULT_DATASET
from tasks.apply import ApplyRequest, ApplyResult, apply_method, default_methods, plan_apply, start_apply_run
from tasks.plan import BadInput
from flows.pipeline import ON_EXIT, outcome


@flow(name="apply", **ON_EXIT)
def apply(
    task: str,
    methods: list[str] | None = None,
    dataset: str = "mnist",
    preset: Preset = "quick",
    overrides: dict[str, dict[str, Any]] | None = None,
    register_models: bool = True,
    reuse_trainings: bool = True,
) -> ApplyResult:
    """Run `methods` of `task` (default: every method that works on `dataset`) with the `preset` budget."""
    from tasks import progress
    from tasks.apply_report import report
    from tasks.prepare import prepare_datasets

    root = configure()
    try:
        if methods is None:
            methods = default_methods(task, dataset)
        checked = plan_apply(ApplyRequest(task, methods, dataset, preset, overrides, register_models, reuse_trainings),
                             root)  # every input checked; nothing started or written yet
    except BadInput as exc:
        return Failed(message=str(exc), data=exc)
    prepared = prepare_datasets([dataset], str(root))  # the data version and its evaluator network (DVC)
    with start_apply_run(checked, prepared) as (parent, ctx):
        progress.open_board(ctx.run_name, len(methods))
        try:
            results = apply_method.map(methods, [checked.configs[m] for m in methods], unmapped(ctx))
            rows = results.result()
            path = report(parent.run_id, str(root / "reports"))
        finally:
            progress.close_board(ctx.run_name)
        failed = [f"{r.name}: {r.reason}" for r in rows if not r.ok]
        if failed:
            parent.fail("; ".join(failed))
    return ApplyResult(ctx.run_name, parent.run_id, rows, path)


def _task_flow(task: str, dataset: str, doc: str):
    def body(methods: list[str] | None = None, dataset: str = dataset, preset: Preset = "quick") -> ApplyResult:
        return outcome(apply(task=task, methods=methods, dataset=dataset, preset=preset, return_state=True))

    body.__doc__ = doc
    body.__name__ = body.__qualname__ = task.replace("-", "_")
    return flow(name=task, **ON_EXIT)(body)


semi_supervised = _task_flow("semi-supervised", DEFAULT_DATASET["semi-supervised"],
                             "MNIST with 100 labels: the GAN and VAE classifiers against the labels alone.")
inpaint = _task_flow("inpaint", DEFAULT_DATASET["inpaint"],
                     "Missing pixels (or table entries) completed by each family, against the mean and a regression.")
super_resolve = _task_flow("super-resolve", DEFAULT_DATASET["super-resolve"], "7x7 -> 28x28 digits: the GAN and DDPM against MSE regression.")
translate = _task_flow("translate", DEFAULT_DATASET["translate"], "Edges -> digits: pix2pix (L1 + adversarial) against L1 alone.")
