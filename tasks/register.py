"""Log a trained model as an MLflow pyfunc (samples on predict) and register it as <family>-<dataset>."""

from __future__ import annotations

import warnings
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.schema import ModelRequest, RunContext, Tag
from tasks.tracking import TrackedRun, client

import genzoo.serving.sampler

PYFUNC_CODE = Path(genzoo.serving.sampler.__file__)


def pip_requirements() -> list[str]:
    """Stated, not inferred (inference costs ~7 s a model and guesses)."""
    import mlflow
    import numpy
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}", f"mlflow=={mlflow.__version__}"]


def log_pyfunc(run_id: str, weights: str, data_shape: list[int]):
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([ColSpec("long", "n"), ColSpec("long", "seed")]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, *data_shape))]),
    )
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(Add type hints|An input example was not provided)")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts={"weights": weights},
            pip_requirements=pip_requirements(),
            signature=signature,
        )


def register(run_id: str, weights: str, name: str, data_shape: list[int], tags: dict[str, str]) -> str:
    """Log the servable model to the run and register it; returns the new version."""
    info = log_pyfunc(run_id, weights, data_shape)
    version = create_version(name, info, run_id, tags)
    client().set_tag(run_id, Tag.REGISTERED, f"{name}/{version.version}")
    return str(version.version)


def create_version(name: str, info, run_id: str, tags: dict[str, str]):
    """A new version of registered model `name` (created on first use) for the logged model `info`;
    through the client API, which prints nothing (mlflow.register_model prints two lines a model)."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        c.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    return c.create_model_version(name, info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id)


@task(name="register", cache_policy=NO_CACHE)
def register_and_promote(req: ModelRequest, run: TrackedRun, model_path: str, metrics: dict) -> dict[str, str]:
    """Register `<family>-<dataset>` and decide champion or challenger on the test metrics.
    Returns {registered: NAME/VERSION, decision, reason}."""
    from tasks.promote import promote
    from tasks.services import client

    name = req.name
    version = register(run.run_id, model_path, name, req.manifest["shape"],
                       {"data_hash": req.manifest["hash"], "family": req.family, "dataset": req.dataset})
    decision = promote(client(), name, version, metrics, metrics["likelihood_kind"])
    return {"registered": f"{name}/{version}", **decision}


def ensure_promoted(registered: str, metrics: dict) -> dict[str, str]:
    """The decision of a reused training's registered version NAME/VERSION; a version that was never
    decided on (its pipeline crashed between registering and promoting) is promoted now, with the
    metrics this run measured on the same data version. Returns {registered, decision, reason}."""
    from tasks.promote import decision_of, promote

    name, version = registered.rsplit("/", 1)
    decided = decision_of(client(), name, version)
    if decided is None:
        decided = promote(client(), name, version, metrics, metrics["likelihood_kind"])
    return {"registered": registered, **decided}


@task(name="register-evaluator", retries=2, retry_delay_seconds=2)
def register_evaluator(root: str, dataset: str, folder: str) -> str:
    """Register `evaluator-<dataset>` once per trained evaluator (keyed by the weights' sha256)."""
    import hashlib
    import json

    import mlflow

    import genzoo.serving.evaluator
    from tasks import tracking

    weights = Path(folder) / "evaluator.pt"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    name = f"evaluator-{dataset}"
    for v in client().search_model_versions(f"name='{name}'"):
        if v.tags.get("weights_sha256") == digest:
            return str(v.version)
    metrics = json.loads((Path(folder) / "metrics.json").read_text())
    with tracking.tracked_run(root, name, {Tag.DATASET: dataset, Tag.KIND: "evaluator"}) as run:
        run.metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
        run.params({"source": metrics["source"], "binarized": str(metrics["binarized"]),
                    "per_channel": str(metrics.get("per_channel", 0)), "data_hash": metrics["data_hash"]})
        with mlflow.start_run(run_id=run.run_id), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(Add type hints|An input example was not provided)")
            info = mlflow.pyfunc.log_model(name="model", python_model=genzoo.serving.evaluator.__file__,
                                           artifacts={"evaluator": str(folder)}, pip_requirements=pip_requirements(),
                                           signature=evaluator_signature(folder))
    version = create_version(name, info, run.run_id, {"weights_sha256": digest,
                                                      "test_accuracy": f"{metrics['test_accuracy']:.4f}"})
    return str(version.version)


def evaluator_signature(folder: str):
    """images (n, C, H, W) float32 -> class probabilities (n, classes), or (n, C, classes) per channel."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from genzoo.evaluation import networks

    net, meta = networks.load(folder)
    cfg = net.digit.config if hasattr(net, "digit") else net.config
    shape = (meta["per_channel"], *cfg.image_shape[1:]) if meta.get("per_channel") else cfg.image_shape
    out = (-1, meta["per_channel"], cfg.num_classes) if meta.get("per_channel") else (-1, cfg.num_classes)
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *shape))]),
                          outputs=Schema([TensorSpec(np.dtype("float32"), out)]))


def register_evaluators(ctx: RunContext, prepared: dict[str, str]) -> None:
    """Each image dataset's evaluator network, registered once per trained version."""
    if ctx.register:
        for name in prepared:
            if ctx.evaluators.get(name):
                register_evaluator(ctx.root, name, ctx.evaluators[name])
