"""The typed objects a pipeline run passes along: what to build (ModelRequest), what every model of
the run shares (RunContext), and what came of it (ModelResult, one schema for the flow's return value
and the report's rows, which are rebuilt from MLflow), plus the MLflow tag names, once."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any


class Tag:
    """MLflow tag names genzoo writes (runs and model versions)."""

    PRESET = "genzoo.preset"
    SKIPPED = "genzoo.skipped"
    FAMILY = "genzoo.family"
    DATASET = "genzoo.dataset"
    BRANCH = "genzoo.branch"
    DATA_HASH = "genzoo.data_hash"
    DATA_SOURCE = "genzoo.data_source"
    RECIPE = "genzoo.recipe"
    TRAIN_KEY = "genzoo.train_key"
    TRAINED = "genzoo.trained"
    REUSED_FROM = "genzoo.reused_training_from"
    RESUMED_FROM = "genzoo.resumed_from_epochs"
    REGISTERED = "genzoo.registered_model"
    FAILURE = "genzoo.failure_reason"
    RAY_RUN = "genzoo.ray_run"
    KIND = "genzoo.kind"  # 'evaluator' on an evaluator network's run
    CODE_VERSION = "genzoo.code_version"  # digest of the training code (tasks/train.py: code_version)
    WEIGHTS_SHA256 = "genzoo.weights_sha256"  # of the uploaded model.pt; set with TRAINED, after the upload
    OWNER_HOST = "genzoo.owner_host"  # the process that opened a run, so a stale RUNNING run can be
    OWNER_PROCESS = "genzoo.owner_process"  # told from a live one: "<pid>:<start time>:<boot id>"
    PREFECT_FLOW_RUN = "genzoo.prefect_flow_run"  # the pipeline flow run that opened a parent run
    PREFECT_ROOT_FLOW_RUN = "genzoo.prefect_root_flow_run"  # its outermost flow run (train, retrain)


@dataclasses.dataclass(frozen=True)
class ModelRequest:
    """One (family, dataset) training the plan decided on, with its resolved configs."""

    family: str
    dataset: str
    prepared_dir: str
    manifest: dict
    model: dict[str, Any]
    train: dict[str, Any]
    recipe: str  # e.g. gan/points/quick
    n_samples: int  # drawn for evaluation (the protocol's count for this data)

    @property
    def name(self) -> str:
        return f"{self.family}-{self.dataset}"


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What every model of one pipeline run shares."""

    root: str
    run_name: str
    run_dir: str
    parent_run_id: str
    tag: str  # suffix of the Ray run names
    evaluate: dict[str, Any]  # EvalConfig.to_dict()
    evaluators: dict[str, str | None]  # dataset -> trained evaluator folder
    register: bool = True
    reuse: bool = True
    fail_once_at_epoch: int | None = None


def training_facts(metrics: Mapping[str, float]) -> dict[str, Any]:
    """What a training ran, from its metrics (an epoch row of `fit`'s history, or a run's latest metrics):
    the optimiser steps (`steps`) and whether its forward passes ran in bfloat16 (`bfloat16`)."""
    return {"train_steps": int(metrics.get("steps", 0)), "bfloat16": bool(metrics.get("bfloat16", 0))}


@dataclasses.dataclass
class ModelResult:
    """One row of the comparison: a model (or a dataset's baseline) and what was measured."""

    family: str
    dataset: str
    status: str = "FAILED"  # FINISHED or FAILED
    reason: str = ""
    run_id: str = ""
    branch: str = ""
    train_seconds: float = math.nan
    train_steps: int = 0  # optimiser steps the training ran
    bfloat16: bool = False  # its forward passes ran in bfloat16
    resumed_from: list[int] = dataclasses.field(default_factory=list)
    ray_run: str = ""
    reused_from: str | None = None
    model_path: str | None = None
    registered: str | None = None  # NAME/VERSION
    decision: str | None = None  # champion / challenger
    decision_reason: str | None = None
    started_at: float = math.nan  # wall clock of the training (or reuse) step
    ended_at: float = math.nan
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # eval.* without the prefix, sampling

    @property
    def name(self) -> str:
        return f"{self.family}-{self.dataset}"

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED"

    def get(self, key: str, default: Any = None) -> Any:
        """A field or a metric by name (the report's columns)."""
        if key in self.metrics:
            return self.metrics[key]
        return getattr(self, key, default) if key in _FIELDS else default

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return self.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self.metrics or key in _FIELDS

    def to_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in _FIELDS if f != "metrics"}
        return {**out, **self.metrics}

    @classmethod
    def from_mlflow(cls, run) -> "ModelResult":
        """The row of a child run as MLflow holds it (the report's source)."""
        tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
        values: dict[str, Any] = {k[len("eval."):]: v for k, v in metrics.items() if k.startswith("eval.")}
        for key in ("sample_seconds_per_sample", "samples_drawn"):
            if key in metrics:
                values[key] = metrics[key]
        method = params.get("eval.likelihood_method")
        values["likelihood_method"] = None if method in (None, "none") else method
        if "modes_captured" in values:
            values["modes"] = f"{int(values['modes_captured'])}/{int(values['modes_total'])}"
        if "classes_hit" in values:
            values["classes"] = f"{int(values['classes_hit'])}/{int(values['classes_total'])}"
        if "sample_seconds_per_sample" in values:
            values["ms_per_sample"] = 1000 * values["sample_seconds_per_sample"]
        resumed = tags.get(Tag.RESUMED_FROM, "")
        return cls(family=tags.get(Tag.FAMILY, ""), dataset=tags.get(Tag.DATASET, ""), status=run.info.status,
                   reason=tags.get(Tag.FAILURE, ""), run_id=run.info.run_id, branch=tags.get(Tag.BRANCH, ""),
                   train_seconds=metrics.get("train_seconds", math.nan), **training_facts(metrics),
                   resumed_from=[int(x) for x in resumed.split(",") if x], ray_run=tags.get(Tag.RAY_RUN, ""),
                   reused_from=tags.get(Tag.REUSED_FROM), registered=tags.get(Tag.REGISTERED), metrics=values)


_FIELDS = tuple(f.name for f in dataclasses.fields(ModelResult))


@dataclasses.dataclass
class PipelineResult:
    run_name: str
    parent_run_id: str
    rows: list[ModelResult]  # the models, in submission order (baselines are in the report)
    skipped: list[str]
    report: str  # path of comparison.md

    @property
    def failed(self) -> list[ModelResult]:
        return [r for r in self.rows if not r.ok]
