"""Tests of pipeline.deploy.predict: warmup records and predict requests."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from pipeline.deploy import predict


def test_warmup_requests_are_prediction_logs_of_single_rows(tmp_path, templates):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    version_dir = shutil.copytree(templates["v1"], tmp_path / "1")
    inputs = {"bill_length_mm": np.array([39.1, np.nan, 50.0], np.float32), "island": np.array(["Biscoe", "", "Dream"])}
    path = predict.write_warmup_requests(version_dir, "penguins", inputs, rows=2)
    assert path == version_dir / "assets.extra" / "tf_serving_warmup_requests"
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    assert len(records) == 2
    first = records[0].predict_log.request
    assert first.model_spec.name == "penguins" and first.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(first.inputs["bill_length_mm"]).tolist() == pytest.approx([39.1])
    assert tf.make_ndarray(records[1].predict_log.request.inputs["island"]).tolist() == [b""]
    assert predict.write_warmup_requests(tmp_path / "none", "penguins", inputs, rows=0) is None
