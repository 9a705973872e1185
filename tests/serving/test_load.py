"""Bad requests of many kinds interleaved with good ones, from many concurrent REST and gRPC clients.

Every bad request must get its exact status and message, every good one its correct answer, the server must stay
AVAILABLE, and its thread count must not grow with the number of requests.
"""
from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import serving_models as models
import tensorflow as tf
from test_grpc_api import GRPC_ERRORS, penguins_request
from test_rest_api import PREDICT_ERRORS
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

pytestmark = pytest.mark.slow

REST_CLIENTS, GRPC_CLIENTS, ROUNDS = 12, 6, 3

ROUTE_ERRORS = [  # (method, path, body, status, exact body or None for HTML)
    ("GET", "/v1/foo", b"", 400, {"error": "Malformed request: GET /v1/foo"}),
    ("PUT", "/v1/models/penguins", b"{}", 400, {"error": "Malformed request: PUT /v1/models/penguins"}),
    ("GET", "/v1/models/penguins:predict", b"", 400, {"error": "Malformed request: GET /v1/models/penguins:predict"}),
    ("GET", "/v1/models/nope", b"", 404, {"error": "Could not find any versions of model nope"}),
    ("GET", "/healthz", b"", 404, None),
    ("POST", "/v1/models/penguins:predict", json.dumps({"instances": [1.0] * 300_000}).encode(), 413, "limit"),
]


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def _rest_cases(client: int) -> list:
    cases = [("error", "POST", f"/v1/models/{model}:predict" if body is not None else f"/v1/models/{model}:classify",
              json.dumps(body).encode() if isinstance(body, (dict, list)) else
              (body if body is not None else json.dumps({"examples": [{"x": 1.0}]}).encode()),
              status, {"error": message}) for _, model, body, status, message in PREDICT_ERRORS]
    cases += [("error",) + case for case in ROUTE_ERRORS]
    for j in range(len(cases)):  # as many good requests as bad ones, each with its own inputs
        cases.append(("penguins", 30.0 + client + j / 8, ["Biscoe", "Dream", "Torgersen"][j % 3]))
        if j % 4 == 0:
            cases.append(("half", float(client * 1000 + j)))
    return cases


def _check_rest(session: requests.Session, url: str, case) -> str | None:
    kind = case[0]
    if kind == "penguins":
        _, length, island = case
        response = session.post(url + "/v1/models/penguins:predict",
                                data=json.dumps({"instances": [{"bill_length_mm": length, "island": island}]}))
        got = response.json()["predictions"][0]
        expected = models.penguins_expected([length], [island], 1)[0]
        ok = (response.status_code == 200 and got["classes"] == models.CLASS_NAMES
              and np.allclose(got["probabilities"], expected, rtol=1e-5))
        return None if ok else f"penguins {length} {island}: {response.status_code} {response.text}"
    if kind == "half":
        response = session.post(url + "/v1/models/half_plus_two/versions/1:predict",
                                data=json.dumps({"instances": [case[1]]}))
        ok = response.status_code == 200 and response.json() == {"predictions": [0.5 * case[1] + 2]}
        return None if ok else f"half {case[1]}: {response.status_code} {response.text}"
    _, method, path, body, status, expected = case
    response = session.request(method, url + path, data=body)
    if response.status_code != status:
        return f"{method} {path}: {response.status_code} != {status}: {response.text[:200]}"
    if expected is None:
        return None if response.headers["Content-Type"].startswith("text/html") else f"{path}: not HTML"
    if expected == "limit":
        return None if "exceeds the limit" in response.json()["error"] else f"{path}: {response.text}"
    return None if response.json() == expected else f"{method} {path}: {response.text[:300]}"


def _grpc_cases(client: int) -> list:
    cases = [("error", request, code, message) for _, request, code, message in GRPC_ERRORS]
    missing = penguins_request()
    del missing.inputs["island"]
    cases.append(("error", missing, grpc.StatusCode.INVALID_ARGUMENT,
                  "input size does not match signature: 1!=2 len({bill_length_mm}) != len({bill_length_mm,island}). "
                  "Sent extra: {}. Missing but required: {island}."))
    wrong_type = penguins_request()
    wrong_type.inputs["island"].CopyFrom(tf.make_tensor_proto([1.0, 2.0], tf.float32))
    cases.append(("error", wrong_type, grpc.StatusCode.INVALID_ARGUMENT,
                  "Expects arg[1] to be string but float is provided"))
    filtered = penguins_request()
    filtered.output_filter.append("nope")
    cases.append(("error", filtered, grpc.StatusCode.INVALID_ARGUMENT,
                  "output tensor alias not found in signature: nope Outputs expected to be in the set "
                  "{classes,probabilities}."))
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "penguins"
    cases.append(("metadata_error", metadata, grpc.StatusCode.INVALID_ARGUMENT,
                  "GetModelMetadataRequest must specify at least one metadata_field"))
    for j in range(2 * len(cases)):
        length = 30.0 + client + j / 8
        island = ["Biscoe", "Dream", "Torgersen"][j % 3]
        cases.append(("good", penguins_request([length], [island]), length, island))
    return cases


def _check_grpc(stub, case) -> str | None:
    kind, request = case[0], case[1]
    if kind == "good":
        response = stub.Predict(request, timeout=60)
        got = np.asarray(response.outputs["probabilities"].float_val)
        ok = np.allclose(got, models.penguins_expected([case[2]], [case[3]], 1)[0], rtol=1e-5)
        return None if ok and response.model_spec.version.value == 1 else f"good {case[2]}: {got}"
    call = stub.GetModelMetadata if kind == "metadata_error" else stub.Predict
    try:
        call(request, timeout=60)
    except grpc.RpcError as err:
        if (err.code(), err.details()) == (case[2], case[3]):
            return None
        return f"{err.code()} {err.details()!r} != {case[2]} {case[3]!r}"
    return f"no error for {case[3]!r}"


def _round(server, seed: int) -> list[str]:
    failures: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(REST_CLIENTS + GRPC_CLIENTS)

    def rest_client(index: int) -> None:
        cases = _rest_cases(index)
        random.Random(seed * 100 + index).shuffle(cases)
        session = requests.Session()
        barrier.wait()
        for case in cases:
            try:
                problem = _check_rest(session, server.url, case)
            except Exception as exc:  # a crash or hang shows up here
                problem = f"{case[:3]}: {exc!r}"
            if problem:
                with lock:
                    failures.append(problem)

    def grpc_client(index: int) -> None:
        cases = _grpc_cases(index)
        random.Random(seed * 100 + 50 + index).shuffle(cases)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        barrier.wait()
        for case in cases:
            try:
                problem = _check_grpc(stub, case)
            except Exception as exc:
                problem = f"grpc {case[0]}: {exc!r}"
            if problem:
                with lock:
                    failures.append(problem)
        channel.close()

    threads = [threading.Thread(target=rest_client, args=(i,)) for i in range(REST_CLIENTS)]
    threads += [threading.Thread(target=grpc_client, args=(i,)) for i in range(GRPC_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    return failures


def test_bad_requests_under_concurrent_load(main_server):
    assert len(PREDICT_ERRORS) + len(ROUTE_ERRORS) >= 20
    pid = main_server.proc.pid
    failures = _round(main_server, seed=1)
    after_first = _threads(pid)
    for seed in range(2, ROUNDS + 1):
        failures += _round(main_server, seed)
    assert failures == []
    # Thread pools are bounded: more requests must not mean more threads.
    assert _threads(pid) <= after_first + 4
    for model in ("penguins", "half_plus_two", "examples"):
        states = {v["state"] for v in main_server.get(f"/v1/models/{model}").json()["model_version_status"]}
        assert states == {"AVAILABLE"}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], tf.float32))
    assert list(main_server.prediction_stub().Predict(request, timeout=60).outputs["y"].float_val) == [4.0]  # latest = v2
    assert main_server.proc.poll() is None
