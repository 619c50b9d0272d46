"""The `pipeline` flow: prepare (DVC) -> train every (family, dataset) in parallel on Ray ->
sample, evaluate, register (MLflow) -> report.

Parameters are typed, so the Prefect UI shows them as a form. The flow runs on
Prefect's ephemeral API when PREFECT_API_URL is unset.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

from genzoo.config import Preset
from prefect import flow, get_run_logger

from genzoo.env import configure

DEFAULT_FAMILIES = ["gan", "vae"]
DEFAULT_DATASETS = ["ring8", "grid25", "digits", "mnist"]


def plan(families: list[str], datasets: list[str], preset: str, root: Path,
         train_overrides: dict[str, Any] | None, model_overrides: dict[str, dict] | None,
         evaluate_overrides: dict[str, Any] | None = None):
    """Check every input before anything runs or is written; returns the checked configs
    (params, with `evaluate` overridden; the train config; the model configs)."""
    import data
    import models
    from genzoo.config import EvalConfig, load_params

    params = load_params(root / "params.yaml")
    if evaluate_overrides:
        params.evaluate = EvalConfig.from_dict({**params.evaluate.to_dict(), **evaluate_overrides}, "evaluate")
    if params.evaluate.fid_network == "inception":  # an offline machine fails here, not after the training
        from genzoo import inception

        inception.network_file()
    if not families:
        raise models.ConfigError("no families given")
    if not datasets:
        raise data.DataError("no datasets given")
    for f in families:
        models.get_family(f)
    names = [data.dataset_name(d) for d in datasets]
    if len(set(names)) != len(names):
        raise data.DataError(f"datasets {datasets} name the same dataset twice")
    train_cfg = params.train_config(preset, train_overrides)
    for f, over in (model_overrides or {}).items():
        if f not in families:
            raise models.ConfigError(f"model overrides for '{f}', which is not among the families {families}")
    model_cfgs = {}
    for f in families:
        values = {**params.models.get(f, {}), **(model_overrides or {}).get(f, {})}
        models.get_family(f).Config.from_dict({"data_shape": [1], "data_kind": "points", **values})  # key/value check
        model_cfgs[f] = values
    return params, train_cfg, model_cfgs


def sample_count(manifest: dict, ecfg) -> int:
    """Samples drawn for evaluation: the 2-D protocol's or the image protocol's count, and on Stacked
    MNIST enough to count its 1,000 modes."""
    n = ecfg.n_samples if len(manifest["shape"]) == 1 else ecfg.n_image_samples
    return max(n, ecfg.n_mode_samples) if manifest.get("modes") else n


@flow(name="pipeline", log_prints=True)
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
) -> dict[str, Any]:
    """Train and compare `families` on `datasets` with the `preset` budget."""
    from tasks.prepare import prepare_datasets
    from tasks.services import ensure_ray

    root = configure()
    logger = get_run_logger()
    params, train_cfg, model_cfgs = plan(families, datasets, preset, root, train_overrides, model_overrides,
                                         evaluate_overrides)
    prepared = prepare_datasets(datasets, str(root))
    owns_ray = ensure_ray()  # a flow run that started Ray (e.g. on a Prefect worker) also stops it
    try:
        return _run(params, train_cfg, model_cfgs, prepared, families, preset, register_models,
                    reuse_trainings, fail_once_at_epoch, root, logger, train_overrides, model_overrides)
    finally:
        if owns_ray:
            import ray

            ray.shutdown()


def _run(params, train_cfg, model_cfgs, prepared, families, preset, register_models, reuse_trainings,
         fail_once_at_epoch, root, logger, train_overrides=None, model_overrides=None) -> dict[str, Any]:
    import models
    from genzoo.config import recipe_kind
    from data.prepared import read_manifest
    from tasks import tracking
    from tasks.evaluate import evaluate, evaluate_baseline, sample
    from tasks.prepare import evaluator_dir
    from tasks.promote import promote
    from tasks.register import register, register_evaluator
    from tasks.report import report
    from tasks.train import train

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    tag = uuid.uuid4().hex[:6]
    run_name = f"pipeline-{stamp}-{tag}"
    run_dir = root / "runs" / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    parent = tracking.start_run(root, run_name, tags={"genzoo.preset": preset})
    tracking.log_params(parent, {"families": ",".join(families), "datasets": ",".join(prepared), "preset": preset,
                                 **tracking.flatten("train", train_cfg.to_dict()),
                                 **tracking.flatten("evaluate", params.evaluate.to_dict())})

    manifests = {name: read_manifest(folder) for name, folder in prepared.items()}
    futures, skipped = [], []
    for name, folder in prepared.items():
        manifest = manifests[name]
        for family in families:
            cls = models.get_family(family)
            if manifest["kind"] not in cls.supported_kinds:
                skipped.append(f"{family} on {name}: {family} fits {', '.join(cls.supported_kinds)} data, {name} is {manifest['kind']}")
                continue
            recipe = params.resolve(family, recipe_kind(manifest["shape"], manifest["kind"]), preset,
                                    train_overrides, (model_overrides or {}).get(family))
            mcfg = {**recipe.model, "data_shape": manifest["shape"], "data_kind": manifest["kind"]}
            if manifest["levels"] >= 2:
                mcfg["levels"] = manifest["levels"]
            try:
                cls.check_data(cls.Config.from_dict(mcfg))
            except models.ConfigError as exc:  # e.g. pixelcnn on 3-channel images
                skipped.append(f"{family} on {name}: {exc}")
                continue
            futures.append((family, name, train.submit(family, name, folder, mcfg, recipe.train.to_dict(), str(root),
                                                       str(run_dir), parent, tag, fail_once_at_epoch, reuse_trainings,
                                                       recipe.name)))
    for s in skipped:
        logger.warning("skipped %s", s)
    tracking.client().set_tag(parent, "genzoo.skipped", json.dumps(skipped))
    evaluators = {name: evaluator_dir(root, name) for name in prepared}
    for name, folder in evaluators.items():
        if folder is not None and register_models:
            register_evaluator(str(root), name, str(folder))

    for name, folder in prepared.items():  # while the trainings run: each dataset's trivial baseline
        evaluate_baseline(str(root), parent, name, folder, sample_count(manifests[name], params.evaluate),
                          params.evaluate.to_dict(), None if evaluators[name] is None else str(evaluators[name]))

    rows = []
    for family, name, fut in futures:
        try:
            res = fut.result()
        except Exception as exc:  # the task failed before its MLflow run existed: one FAILED row, not a dead flow
            res = {"family": family, "dataset": name, "status": "FAILED", "reason": f"training task failed: {exc}"}
        row = dict(res)
        if res["status"] == "FINISHED":
            try:
                ecfg = params.evaluate
                manifest = manifests[res["dataset"]]
                s = sample(res["model_path"], res["dataset"], sample_count(manifest, ecfg), ecfg.seed, ecfg.sample_budget_seconds,
                           res["out_dir"], res["run_id"])
                row.update(s)
                ev = evaluators[res["dataset"]]
                ev_metrics = evaluate(res["model_path"], res["dataset"], prepared[res["dataset"]], s["samples"],
                                      ecfg.to_dict(), res["run_id"], None if ev is None else str(ev))
                row.update(ev_metrics)
                if res.get("already_registered"):  # a reused training keeps its registered version
                    row["registered"] = res["already_registered"]
                    tracking.client().set_tag(res["run_id"], "genzoo.registered_model", res["already_registered"])
                elif register_models:
                    name = f"{res['family']}-{res['dataset']}"
                    version = register(res["run_id"], res["model_path"], name, manifest["shape"],
                                       {"data_hash": manifest["hash"], "family": res["family"],
                                        "dataset": res["dataset"]})
                    decision = promote(tracking.client(), name, version, ev_metrics, ev_metrics["likelihood_kind"])
                    row.update(registered=f"{name}/{version}", decision=decision["decision"],
                               decision_reason=decision["reason"])
                tracking.end_run(res["run_id"])
            except Exception as exc:  # evaluation of one model must not sink the others
                row.update(status="FAILED", reason=f"evaluation failed: {exc}")
                tracking.end_run(res["run_id"], "FAILED", row["reason"])
        rows.append(row)
    path = report(parent, str(root / "reports"))
    failed = [f"{r['family']}-{r['dataset']}: {r['reason']}" for r in rows if r["status"] != "FINISHED"]
    tracking.end_run(parent, "FAILED" if failed else "FINISHED", "; ".join(failed))
    return {"run_name": run_name, "parent_run_id": parent, "rows": rows, "skipped": skipped, "report": path}
