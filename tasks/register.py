"""Log a trained model as an MLflow pyfunc (samples on predict) and register it as <family>-<dataset>."""

from __future__ import annotations

import warnings
from pathlib import Path

from prefect import task

import genzoo.pyfunc

PYFUNC_CODE = Path(genzoo.pyfunc.__file__)


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


@task(name="register")
def register(run_id: str, weights: str, name: str, data_shape: list[int], tags: dict[str, str]) -> str:
    """Returns the new registered version."""
    import mlflow

    from tasks.services import client

    info = log_pyfunc(run_id, weights, data_shape)
    version = mlflow.register_model(info.model_uri, name, tags=tags)
    client().set_tag(run_id, "genzoo.registered_model", f"{name}/{version.version}")
    return str(version.version)
