"""The MLflow pyfunc flavour of an exported SavedModel, so that MLflow can load, compare and serve it.

It calls the same ``serving_default`` signature as TensorFlow Serving, so MLflow and the endpoint agree.
(MLflow's own Keras flavour feeds NumPy string arrays to Keras 3, which rejects them.)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow.pyfunc

if TYPE_CHECKING:
    import pandas as pd


class SavedModelPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame of raw features) -> DataFrame``: one probability column per class plus
    ``predicted_class`` (classification), or ``value`` (regression)."""

    def load_context(self, context):
        import tensorflow as tf

        from pipeline.contracts import SIGNATURE

        path = Path(context.artifacts["saved_model"])
        self._fn = tf.saved_model.load(str(path)).signatures[SIGNATURE]
        self._meta = json.loads((path / "assets.extra" / "pipeline_metadata.json").read_text())

    def predict(self, context, model_input, params=None):
        import numpy as np
        import pandas as pd

        from pipeline.features import FeatureSpec
        from pipeline.export import signature_inputs

        spec = FeatureSpec(tuple(self._meta["features"]["numeric"]), tuple(self._meta["features"]["categorical"]),
                           self._meta["label"], self._meta["task"], dict(self._meta["features"].get("kinds") or {}))
        out = self._fn(**signature_inputs(pd.DataFrame(model_input), spec))
        if spec.task == "classification":
            proba = out["probabilities"].numpy()
            frame = pd.DataFrame(proba, columns=self._meta["class_names"])
            frame["predicted_class"] = np.asarray(self._meta["class_names"])[proba.argmax(axis=1)]
            return frame
        return pd.DataFrame({"value": out["value"].numpy()})


def log_pyfunc(saved_model: str | Path, example: "pd.DataFrame", name: str = "model"):
    """Log ``saved_model`` to the active MLflow run as a :class:`SavedModelPyfunc` with its signature and input
    example, and make sure that what was logged loads and answers the example; returns MLflow's ``ModelInfo``.

    MLflow itself loads the logged model and predicts the input example before it uploads it, but only warns
    when that fails; here the logged model is loaded back from the store and must answer. (Taking MLflow's
    answer through its private validator instead saved 0.13 s: docs/benchmarks.md, "Private APIs".)

    Raises:
        RuntimeError: the logged model does not load, or does not answer one row per example row.
    """
    from mlflow.models import infer_signature

    info = mlflow.pyfunc.log_model(name=name, python_model=SavedModelPyfunc(), artifacts={"saved_model": str(saved_model)},
                                   input_example=example, signature=infer_signature(example),
                                   pip_requirements=pip_requirements())
    try:
        answer = mlflow.pyfunc.load_model(info.model_uri).predict(example)
    except Exception as exc:
        raise RuntimeError(f"the logged MLflow model does not answer its input example: {type(exc).__name__}: {exc}") from exc
    if len(answer) != len(example):
        raise RuntimeError(f"the logged MLflow model answered {len(answer)} rows for {len(example)}")
    return info


def pip_requirements() -> list[str]:
    """The model's runtime requirements, pinned to what is installed here.

    Given explicitly because MLflow's own inference loads the model in a subprocess to see what it imports,
    which takes longer than the rest of the export together.
    """
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("tensorflow", "keras", "mlflow", "pandas", "numpy", "pyarrow")]
