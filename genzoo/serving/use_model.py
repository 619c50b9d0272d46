"""The MLflow pyfunc that a use's registered predictor is logged as ("models from code"):
`<task>-<method>-<dataset>`, e.g. `semi-supervised-gan-mnist` (labels for images) or
`super-resolve-ddpm-mnist` (28x28 digits for 7x7 ones).

`predict` takes a numpy array (or a DataFrame of flattened rows) and returns the predictor's
answer (genzoo/uses/: each method documents its input and output). The weights travel as the
artifact "predictor" (a weights-only torch file), so no Python object is pickled.
"""

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class GenzooPredictor(PythonModel):
    def load_context(self, context):
        from genzoo.uses import load_predictor

        self.predictor = load_predictor(context.artifacts["predictor"])

    # The hint names what `mlflow models serve` passes (an array works too); MLflow infers nothing from it.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        x = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
        return self.predictor.predict(x)


mlflow.models.set_model(GenzooPredictor())
