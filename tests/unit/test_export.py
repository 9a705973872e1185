from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ModelConfig, TrainingConfig
from pipeline.export import ExportError, predict_keras, predict_saved_model, write_candidate
from pipeline.features import FeatureSpec
from pipeline.preprocess import fit_preprocessing
from pipeline.train import load_model, train

SPEC = FeatureSpec(("x",), ("color",), "label", "classification")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import pandas as pd

    tmp = tmp_path_factory.mktemp("export")
    frame = pd.DataFrame({"x": [0.1, 0.2, np.nan, 2.1, 2.2, 2.3], "color": ["r", "b", None, "g", "g", "r"],
                          "label": ["a", "a", "a", "b", "b", "b"]})
    meta = fit_preprocessing(frame, SPEC)
    result = train(frame, frame, meta, ModelConfig("linear"), TrainingConfig(epochs=3, batch_size=2), tmp / "t")
    return load_model(result.model_path, meta), meta, frame


def test_signature_takes_raw_features_by_name(tmp_path, trained):
    model, meta, frame = trained
    tmp, diff = write_candidate(model, meta, frame, tmp_path, {"model_name": "m"}, {"columns": {}})
    assert diff <= 1e-5
    fn = tf.saved_model.load(str(tmp)).signatures["serving_default"]
    inputs = fn.structured_input_signature[1]
    assert {k: (v.dtype, v.shape.as_list()) for k, v in inputs.items()} == {"x": (tf.float32, [None]),
                                                                          "color": (tf.string, [None])}
    out = fn(x=tf.constant([0.1, np.nan]), color=tf.constant(["r", "never-seen"]))
    assert out["probabilities"].shape == (2, 2)
    assert out["classes"].numpy().tolist() == [[b"a", b"b"], [b"a", b"b"]]
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(predict_saved_model(tmp, frame, SPEC), predict_keras(model, frame, meta), atol=1e-6)
    assert json.loads((tmp / "assets.extra" / "pipeline_metadata.json").read_text())["model_name"] == "m"
    assert (tmp / "assets.extra" / "schema.json").exists()


def test_mismatch_is_refused_and_leaves_nothing(tmp_path, trained, monkeypatch):
    import pipeline.export as export

    model, meta, frame = trained
    monkeypatch.setattr(export, "predict_keras", lambda *a: np.zeros((len(frame), 2), dtype=np.float32))
    with pytest.raises(ExportError, match="differs from the trained model"):
        write_candidate(model, meta, frame, tmp_path, {}, None)
    assert list(tmp_path.iterdir()) == []
