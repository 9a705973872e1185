"""Requests are served concurrently: a model call never runs on the event loop that serves every connection.

A slow request (the ``slow`` model: ``x[0]`` rounds of a matmul) is put in flight, then other requests (status,
metrics, a fast predict, over REST and gRPC) must be answered while it is still running; the REST timeout
(``--rest_api_timeout_in_ms``) must cut a call that runs past it; and made-up model names in clients' URLs must not
become metric labels.
"""
from __future__ import annotations

import json
import signal
import threading
import time

import pytest
import serving_models as models
import tensorflow as tf
from conftest import ServerProcess
from tensorflow_serving.apis import get_model_status_pb2, predict_pb2

pytestmark = pytest.mark.slow

SLOW_ROUNDS = 20000  # seconds of work on these machines: far longer than any answer below takes


def _start(templates, workdir, timeout_ms: int) -> ServerProcess:
    """``slow`` and ``half_plus_two``, without batching, metrics on ``/metrics``."""
    serving = workdir / "home" / "serving"
    models.copy_version(templates["slow_1"], serving / "slow", 1)
    models.copy_version(templates["half_plus_two_1"], serving / "half_plus_two", 1)
    (workdir / "monitoring.config").write_text('prometheus_config { enable: true, path: "/metrics" }\n')
    server = ServerProcess(workdir, ["--rest_api_timeout_in_ms", str(timeout_ms), "--rest_api_num_threads", "4",
                                     "--monitoring_config_file", str(workdir / "monitoring.config")],
                           env={"PIPELINE_SERVING_BASE": ""})
    server.start()
    try:
        server.wait_ready("slow")
        server.wait_ready("half_plus_two")
        assert server.post("/v1/models/slow:predict", {"instances": [1.0]}).json() == {"predictions": [1.0]}
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


@pytest.fixture(scope="module")
def slow_server(templates, tmp_path_factory):
    server = _start(templates, tmp_path_factory.mktemp("concurrency"), timeout_ms=600_000)
    yield server
    server.stop(signal.SIGKILL)


def _in_flight(call) -> tuple[threading.Thread, dict]:
    """Start ``call`` in a thread; returns the thread and the dict its result (or error) lands in."""
    out: dict = {}

    def run():
        try:
            out["result"] = call()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.5)  # let it reach the server: the checks below need it in flight, not that it is quick
    return thread, out


def _others_answer(server: ServerProcess) -> None:
    """Status and metrics over REST, a fast predict over REST and gRPC, gRPC status: all answered."""
    assert server.get("/v1/models/half_plus_two").status_code == 200
    assert server.get("/metrics").status_code == 200
    assert server.post("/v1/models/half_plus_two:predict", {"instances": [2.0]}).json() == {"predictions": [3.0]}
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([4.0], tf.float32))
    assert list(server.prediction_stub().Predict(request, timeout=60).outputs["y"].float_val) == [4.0]
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "half_plus_two"
    assert server.model_stub().GetModelStatus(status, timeout=60).model_version_status[0].version == 1


def test_a_slow_rest_call_does_not_stall_other_requests(slow_server):
    thread, out = _in_flight(lambda: slow_server.http.post(
        slow_server.url + "/v1/models/slow:predict", data=json.dumps({"instances": [float(SLOW_ROUNDS)]}),
        timeout=300))
    _others_answer(slow_server)
    assert thread.is_alive(), f"the slow call ended before the others were answered: {out}"
    thread.join(timeout=300)
    assert out["result"].json() == {"predictions": [float(SLOW_ROUNDS)]}


def test_a_slow_grpc_call_does_not_stall_other_requests(slow_server):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "slow"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([float(SLOW_ROUNDS)], tf.float32))
    thread, out = _in_flight(lambda: slow_server.prediction_stub().Predict(request, timeout=300))
    _others_answer(slow_server)
    assert thread.is_alive(), f"the slow call ended before the others were answered: {out}"
    thread.join(timeout=300)
    assert list(out["result"].outputs["y"].float_val) == [float(SLOW_ROUNDS)]


def test_rest_timeout_cuts_a_call_that_runs_past_it(templates, tmp_path):
    server = _start(templates, tmp_path, timeout_ms=500)
    try:
        response = server.post("/v1/models/slow:predict", {"instances": [float(SLOW_ROUNDS)]})
        assert (response.status_code, response.json()) == (504, {"error": "Deadline Exceeded"})
        assert server.get("/v1/models/slow").status_code == 200  # and the server goes on serving
    finally:
        server.stop(signal.SIGKILL)


def test_made_up_model_names_do_not_become_metric_labels(slow_server):
    for i in range(5):
        assert slow_server.post(f"/v1/models/made_up_{i}:predict", {"instances": [1.0]}).status_code == 404
        assert slow_server.post(f"/v1/models/half_plus_two/versions/{900 + i}:predict",
                                {"instances": [1.0]}).status_code == 404
    metrics = slow_server.get("/metrics").text
    assert "made_up" not in metrics and 'version="90' not in metrics
    assert 'model_name="",version="",entrypoint="REST",API="predict",status="NOT_FOUND"} 5' in metrics
    assert 'model_name="half_plus_two",version="",entrypoint="REST",API="predict",status="NOT_FOUND"} 5' in metrics
