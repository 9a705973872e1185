"""Requests to the served model: gRPC ``PredictRequest``s for the ``serving_default`` signature, the warmup file
TensorFlow Serving replays before a version takes traffic, and the REST/gRPC predict helpers of the checks."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pipeline.contracts import SIGNATURE, WARMUP_FILE
from pipeline.deploy.errors import DeployError

if TYPE_CHECKING:
    import numpy as np


def write_warmup_requests(version_dir: str | Path, model_name: str, inputs: Mapping[str, "np.ndarray"],
                          rows: int) -> Path | None:
    """``WARMUP_FILE`` (``assets.extra/tf_serving_warmup_requests``): a TFRecord of ``PredictionLog``s, one single-row
    ``PredictRequest`` per sample row, as TensorFlow Serving (and our server) replay before taking traffic."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    n = min(rows, min((len(v) for v in inputs.values()), default=0))
    if n <= 0:
        return None
    path = Path(version_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(n):
            request = predict_request(model_name, {k: v[i:i + 1] for k, v in inputs.items()})
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


# --------------------------------------------------------------------------------- requests, answers
def predict_request(model_name: str, inputs: Mapping[str, "np.ndarray"], version: int | None = None):
    """A gRPC ``PredictRequest`` for the ``serving_default`` signature."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = SIGNATURE
    if version is not None:
        request.model_spec.version.value = int(version)
    for key, value in inputs.items():
        value = np.asarray(value)
        if value.dtype.kind in "USO":
            request.inputs[key].CopyFrom(tf.make_tensor_proto([_as_bytes(v) for v in value], tf.string))
        else:
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def _as_bytes(value: Any) -> bytes:
    """A string input's element as a tensor's bytes: bytes (an image file) as they are, text UTF-8 encoded."""
    return bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else str(value).encode()


def _as_json_string(value: Any) -> Any:
    """A string input's element in a REST body: text as it is, bytes as TF Serving's ``{"b64": ...}``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        import base64

        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    return str(value)


def _pick_output(outputs: Mapping[str, Any], key: str | None) -> Any:
    if key is not None:
        return outputs[key]
    for name in ("probabilities", "value"):
        if name in outputs:
            return outputs[name]
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    raise DeployError(f"cannot tell which output to compare among {sorted(outputs)}")


def rest_predict(session, rest_url: str, model_name: str, version: int, inputs: Mapping[str, "np.ndarray"],
                 output: str | None = None) -> "np.ndarray":
    """Predict over REST (columnar ``inputs``; NaN travels as TF Serving's ``NaN`` token)."""
    import numpy as np

    body = {"signature_name": SIGNATURE,
            "inputs": {k: [_as_json_string(x) for x in v] if np.asarray(v).dtype.kind in "USO"
                       else np.asarray(v).tolist() for k, v in inputs.items()}}
    response = session.post(f"{rest_url}/v1/models/{model_name}/versions/{version}:predict",
                            data=json.dumps(body), timeout=60)
    if response.status_code != 200:
        raise DeployError(f"REST predict answered {response.status_code}: {response.text[:500]}")
    outputs = response.json()["outputs"]
    return np.asarray(_pick_output(outputs, output) if isinstance(outputs, dict) else outputs, dtype=np.float64)


def grpc_predict(stub, model_name: str, version: int, inputs: Mapping[str, "np.ndarray"],
                 output: str | None = None) -> "np.ndarray":
    import grpc
    import numpy as np
    import tensorflow as tf

    try:
        response = stub.Predict(predict_request(model_name, inputs, version), timeout=60)
    except grpc.RpcError as exc:
        raise DeployError(f"gRPC predict failed: {exc.code().name}: {exc.details()}") from None
    return np.asarray(tf.make_ndarray(_pick_output(response.outputs, output)), dtype=np.float64)

