"""Export: a SavedModel for TensorFlow Serving, verified, then staged for the deploy stage.

The ``serving_default`` signature takes one rank-1 input per raw feature, named after its column key
(float32 for numeric columns, string for every other kind: categorical, boolean, text, dates), and returns ``probabilities`` and ``classes`` (class names,
one row per example) for classification or ``value`` for regression (docs/contracts.md).
The model is written to a temporary directory beside the target, loaded back and checked against the
in-memory model on the test split, and only then renamed to the export's staging directory, a hidden name no
server loads; the deploy stage (``pipeline.deploy``) publishes it under ``<serving base>/<model>/<version>/``.
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.atomic import write_json_atomic
from pipeline.contracts import SIGNATURE
from pipeline.features import FeatureSpec
from pipeline.preprocess import PreprocessMeta, feature_arrays

if TYPE_CHECKING:
    import keras
    import numpy as np
    import pandas as pd

METADATA_FILE = "pipeline_metadata.json"
SCHEMA_FILE = "schema.json"
TOLERANCE = 1e-5


class ExportError(RuntimeError):
    """The export could not be written, or did not reproduce the in-memory model."""


def build_serving_module(model: "keras.Model", meta: PreprocessMeta):
    """A ``tf.Module`` holding ``model`` with a named-input ``serving_default`` signature."""
    import tensorflow as tf

    spec = meta.feature_spec
    input_signature = {c: tf.TensorSpec([None], tf.float32, name=c) for c in spec.numeric}
    input_signature.update({c: tf.TensorSpec([None], tf.string, name=c) for c in spec.categorical})
    class_names = tf.constant(meta.class_names or [""], dtype=tf.string)
    is_classifier = spec.task == "classification"

    class ServingModule(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.class_names = class_names
            # the random augmentation layers' seed states: their serving call does not draw, but the traced
            # function captures them, and the SavedModel must reach every variable it captures
            self.seed_states = _seed_states(model)

        @tf.function(input_signature=[input_signature])
        def serve(self, features):
            outputs = self.model(features, training=False)
            if is_classifier:
                probabilities = tf.cast(outputs, tf.float32)
                classes = tf.tile(tf.expand_dims(self.class_names, 0), [tf.shape(probabilities)[0], 1])
                return {"probabilities": probabilities, "classes": classes}
            return {"value": tf.reshape(tf.cast(outputs, tf.float32), [-1])}

    return ServingModule()


def _seed_states(model: "keras.Model") -> list:
    """The state variables of every ``keras.random.SeedGenerator`` held by a layer of ``model`` (nested models
    included)."""
    import keras

    states, seen, stack = [], set(), [model]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        for value in vars(layer).values():
            if isinstance(value, keras.random.SeedGenerator):
                states.append(value.state)
            elif isinstance(value, keras.layers.Layer):
                stack.append(value)
            elif isinstance(value, (list, tuple)):
                stack.extend(v for v in value if isinstance(v, keras.layers.Layer))
        stack.extend(getattr(layer, "layers", []) or [])
    return states


def signature_inputs(df: "pd.DataFrame", spec: FeatureSpec) -> dict[str, Any]:
    """The test rows as the serving signature takes them (rank-1 tensors by feature key)."""
    import tensorflow as tf

    return {k: tf.constant(v) for k, v in feature_arrays(df, spec).items()}


def predict_saved_model(path_or_loaded, df: "pd.DataFrame", spec: FeatureSpec) -> "np.ndarray":
    """Call a SavedModel's serving signature on ``df``: probabilities (n, classes) or values (n,)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path_or_loaded)) if isinstance(path_or_loaded, (str, Path)) else path_or_loaded
    fn = loaded.signatures[SIGNATURE]
    wanted = set(fn.structured_input_signature[1])
    missing = wanted - set(spec.names)
    if missing:
        raise ExportError(f"the SavedModel needs inputs this data does not have: {', '.join(sorted(missing))}")
    out = fn(**{k: v for k, v in signature_inputs(df, spec).items() if k in wanted})
    return (out["probabilities"] if "probabilities" in out else out["value"]).numpy()


def predict_keras(model: "keras.Model", df: "pd.DataFrame", meta: PreprocessMeta) -> "np.ndarray":
    from pipeline.preprocess import raw_dataset

    out = model.predict(raw_dataset(df, meta.feature_spec, 1024), verbose=0)
    return out.reshape(-1) if meta.feature_spec.task == "regression" else out


def write_candidate(model: "keras.Model", meta: PreprocessMeta, test_df: "pd.DataFrame", staging_root: str | Path,
                    metadata: dict[str, Any], schema: dict[str, Any] | None = None) -> tuple[Path, float]:
    """Write the SavedModel into a fresh temporary directory under ``staging_root``, load it back and compare
    it with ``model`` on ``test_df``.

    Returns:
        (the temporary directory, the max absolute difference between the two models' outputs).
    Raises:
        ExportError: the difference exceeds ``TOLERANCE`` (the temporary directory is removed).
    """
    import numpy as np
    import tensorflow as tf

    staging_root = Path(staging_root)
    staging_root.mkdir(parents=True, exist_ok=True)
    tmp = staging_root / f".tmp-{uuid.uuid4().hex}"
    try:
        module = build_serving_module(model, meta)
        tf.saved_model.save(module, str(tmp), signatures={SIGNATURE: module.serve})
        expected = predict_keras(model, test_df, meta)
        got = predict_saved_model(tmp, test_df, meta.feature_spec)
        diff = float(np.max(np.abs(expected - got))) if len(test_df) else 0.0
        if not diff <= TOLERANCE:
            raise ExportError(f"exported model differs from the trained model by {diff:.3g} (> {TOLERANCE}) on the test split")
        extra = tmp / "assets.extra"
        extra.mkdir(exist_ok=True)
        write_json_atomic(extra / METADATA_FILE, {**metadata, "max_abs_diff_vs_keras": diff}, indent=2, default=str)
        if schema is not None:
            write_json_atomic(extra / SCHEMA_FILE, schema, indent=2)
        return tmp, diff
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_metadata(version_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(version_dir) / "assets.extra" / METADATA_FILE).read_text())
