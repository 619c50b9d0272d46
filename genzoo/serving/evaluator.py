"""MLflow pyfunc of a dataset's evaluator network: predict(images (n, C, H, W) in [0, 1]) -> class
probabilities (n, classes), or (n, C, classes) for a per-channel evaluator (stacked-mnist: the digit
of each channel). Registered as `evaluator-<dataset>`; logged "from code" like genzoo.pyfunc."""


import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class EvaluatorModel(PythonModel):
    def load_context(self, context):
        from pathlib import Path

        from genzoo.evaluation import networks

        self.net, self.meta = networks.load(Path(context.artifacts["evaluator"]))

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:  # images (n, C, H, W)
        from genzoo.evaluation.networks import predict_logits

        return predict_logits(self.net, np.asarray(model_input, dtype=np.float32)).softmax(-1).numpy()


mlflow.models.set_model(EvaluatorModel())
