"""The MLflow pyfunc flavour of an exported SavedModel, so that MLflow can load, compare and serve it.

It calls the same ``serving_default`` signature as TensorFlow Serving, so MLflow and the endpoint agree.
(MLflow's own Keras flavour feeds NumPy string arrays to Keras 3, which rejects them.)
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc


class SavedModelPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame of raw features) -> DataFrame``: one probability column per class plus
    ``predicted_class`` (classification), or ``value`` (regression)."""

    def load_context(self, context):
        import tensorflow as tf

        path = Path(context.artifacts["saved_model"])
        self._fn = tf.saved_model.load(str(path)).signatures["serving_default"]
        self._meta = json.loads((path / "assets.extra" / "pipeline_metadata.json").read_text())

    def predict(self, context, model_input, params=None):
        import numpy as np
        import pandas as pd

        from pipeline.features import FeatureSpec
        from pipeline.export import signature_inputs

        spec = FeatureSpec(tuple(self._meta["features"]["numeric"]), tuple(self._meta["features"]["categorical"]),
                           self._meta["label"], self._meta["task"])
        out = self._fn(**signature_inputs(pd.DataFrame(model_input), spec))
        if spec.task == "classification":
            proba = out["probabilities"].numpy()
            frame = pd.DataFrame(proba, columns=self._meta["class_names"])
            frame["predicted_class"] = np.asarray(self._meta["class_names"])[proba.argmax(axis=1)]
            return frame
        return pd.DataFrame({"value": out["value"].numpy()})


def pip_requirements() -> list[str]:
    """The model's runtime requirements, pinned to what is installed here.

    Given explicitly because MLflow's own inference loads the model in a subprocess to see what it imports,
    which takes longer than the rest of the export together.
    """
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("tensorflow", "keras", "mlflow", "pandas", "numpy", "pyarrow")]
