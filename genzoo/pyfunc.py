"""The MLflow pyfunc that registered genzoo models are logged as ("models from code").

`predict` takes how many samples and a seed -- a dict {"n": 16, "seed": 0} or a
DataFrame with columns n and seed (what `mlflow models serve` passes) -- and
returns an array of shape (n, *data_shape). The weights travel as the artifact
"weights" (a weights-only torch file), so no Python object is pickled.
"""

import warnings

import mlflow
from mlflow.pyfunc import PythonModel


class GenzooSampler(PythonModel):
    def load_context(self, context):
        import models

        self.model = models.load(context.artifacts["weights"])
        self.model.eval()

    def predict(self, context, model_input, params=None):
        import torch

        if hasattr(model_input, "to_dict"):  # DataFrame
            rows = model_input.to_dict(orient="records")
            if len(rows) != 1:
                raise ValueError(f"send exactly one row (n, seed), got {len(rows)}")
            model_input = rows[0]
        n, seed = int(model_input.get("n", 16)), int(model_input.get("seed", 0))
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        return self.model.sample(n, torch.Generator().manual_seed(seed)).numpy()


with warnings.catch_warnings():
    # MLflow asks for type hints on predict; the logged signature (n, seed) -> samples is explicit instead.
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
    mlflow.models.set_model(GenzooSampler())
