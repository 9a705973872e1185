"""A folder of labelled images to a served model: `pipeline generate --images digits`, then `pipeline train
--source <folder>` as a user runs it (a real Airflow run, MLflow, the deploy gate with its sandbox checks and
warmup requests), then `pipeline serve` answering the encoded PNG bytes over REST (``{"b64": ...}``, as
TensorFlow Serving takes DT_STRING) and gRPC with the SavedModel's own answers."""
from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.e2e

SERVING_TESTS = Path(__file__).resolve().parents[1] / "serving"


def _server_class():
    sys.path.insert(0, str(SERVING_TESTS))
    spec = importlib.util.spec_from_file_location("serving_conftest_images", SERVING_TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ServerProcess


def test_an_image_folder_trains_deploys_and_is_served_over_rest_and_grpc(tmp_path, run_train):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    folder = tmp_path / "digits"
    made = subprocess.run([str(Path(sys.executable).parent / "pipeline"), "generate", "--images", "digits",
                           "--out", str(folder)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    home = tmp_path / "home"
    result = run_train(home, "--source", str(folder), "--label", "digit", "--model-name", "digits",
                       "--epochs", "10")
    assert result.returncode == 0, result.stdout[-5000:]
    assert "Deployed:" in result.stdout and "Champion:         version 1" in result.stdout
    assert "model builder 'cnn'" in (home / "logs").joinpath(
        sorted(p.name for p in (home / "logs").iterdir())[-1]).read_text(errors="replace")

    version_dir = home / "serving" / "digits" / "1"
    meta = json.loads((version_dir / "assets.extra" / "pipeline_metadata.json").read_text())
    assert meta["features"]["kinds"] == {"image": "image"} and meta["task"] == "classification"
    assert meta["metrics"]["accuracy"] >= 0.85, meta["metrics"]
    assert (version_dir / "assets.extra" / "tf_serving_warmup_requests").is_file()

    # The test split's files, as a client has them: PNG bytes
    test_split = next(home.glob("runs/*/split/test.parquet"))
    rows = pd.read_parquet(test_split).head(16)
    images = [bytes(b) for b in rows["image"]]
    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    direct = fn(image=tf.constant(images))["probabilities"].numpy()
    assert (np.array(meta["class_names"])[direct.argmax(1)] == rows["digit"].to_numpy()).mean() >= 0.75

    ServerProcess = _server_class()
    server = ServerProcess(tmp_path, ["--model_name", "digits", "--model_base_path", str(home / "serving" / "digits"),
                                      "--request_log", "--request_log_dir", str(tmp_path / "request_logs")])
    server.start()
    try:
        server.wait_ready("digits")
        body = {"instances": [{"image": {"b64": base64.b64encode(b).decode()}} for b in images]}
        response = server.post("/v1/models/digits:predict", body)
        assert response.status_code == 200, response.text
        rest = np.array([p["probabilities"] for p in response.json()["predictions"]])
        assert np.abs(rest - direct).max() <= 1e-5
        assert response.json()["predictions"][0]["classes"] == meta["class_names"]

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "digits"
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(images, tf.string))
        reply = server.prediction_stub().Predict(request, timeout=60)
        grpc = tf.make_ndarray(reply.outputs["probabilities"])
        assert np.abs(grpc - direct).max() <= 1e-5

        bad = server.post("/v1/models/digits:predict",
                          {"instances": [{"image": {"b64": base64.b64encode(b"not an image").decode()}}]})
        assert bad.status_code == 400 and "image" in bad.json()["error"].lower()
        still = server.post("/v1/models/digits:predict", {"instances": body["instances"][:1]})
        assert still.status_code == 200, "a bad request does not take the model down"
    finally:
        server.stop()
