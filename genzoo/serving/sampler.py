"""The MLflow pyfunc that registered genzoo models are logged as ("models from code").

`predict` takes how many samples and a seed -- a dict {"n": 16, "seed": 0} or a
DataFrame with columns n and seed (what `mlflow models serve` passes) -- and
returns an array of shape (n, *data_shape). The weights travel as the artifact
"weights" (a weights-only torch file), so no Python object is pickled.

`genzoo fetch`/`score` never import this stored file: genzoo.serving.registry builds the model from
the weights with the installed code. `mlflow.pyfunc.load_model` and `mlflow models serve` do import it.
"""

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class GenzooSampler(PythonModel):
    def load_context(self, context):
        import models

        self.model = models.load(context.artifacts["weights"])
        self.model.eval()

    # The hint names what `mlflow models serve` passes (a dict works too); MLflow infers nothing from
    # it, and the logged signature (n, seed) -> samples stays the contract.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        from genzoo.serving.registry import draw

        if hasattr(model_input, "to_dict"):  # DataFrame
            rows = model_input.to_dict(orient="records")
            if len(rows) != 1:
                raise ValueError(f"send exactly one row (n, seed), got {len(rows)}")
            model_input = rows[0]
        return draw(self.model, int(model_input.get("n", 16)), int(model_input.get("seed", 0)))


mlflow.models.set_model(GenzooSampler())
