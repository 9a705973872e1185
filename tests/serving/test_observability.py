"""Dynamic batching, Prometheus metrics and the request log (docs/contracts.md), on the shared server."""
from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time

import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

METRICS = "/monitoring/prometheus/metrics"


def metric(server, name: str, **labels) -> float:
    """The value of one sample (0 when absent)."""
    text = server.get(METRICS).text
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([^{ ]+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if got == {k: str(v) for k, v in labels.items()}:
            return float(match.group(3))
    return 0.0


def test_metrics_endpoint_is_prometheus_text(main_server):
    response = main_server.get(METRICS)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE :tensorflow:serving:request_count counter" in response.text
    assert "# TYPE :tensorflow:serving:request_latency histogram" in response.text


def test_request_count_by_model_version_and_status(main_server):
    ok = dict(model_name="examples", version="1", entrypoint="REST", API="regress", status="OK")
    bad = dict(model_name="examples", version="", entrypoint="REST", API="regress", status="INVALID_ARGUMENT")
    before_ok, before_bad = metric(main_server, ":tensorflow:serving:request_count", **ok), \
        metric(main_server, ":tensorflow:serving:request_count", **bad)
    main_server.post("/v1/models/examples:regress", {"signature_name": "regress_x", "examples": [{"x": 1.0}]})
    main_server.post("/v1/models/examples:regress", {"signature_name": "regress_x", "examples": []})
    assert metric(main_server, ":tensorflow:serving:request_count", **ok) == before_ok + 1
    assert metric(main_server, ":tensorflow:serving:request_count", **bad) == before_bad + 1


def test_latency_histogram_by_api(main_server):
    labels = dict(model_name="examples", API="regress", entrypoint="REST")
    before = metric(main_server, ":tensorflow:serving:request_latency_count", **labels)
    main_server.post("/v1/models/examples:regress", {"signature_name": "regress_x", "examples": [{"x": 1.0}]})
    assert metric(main_server, ":tensorflow:serving:request_latency_count", **labels) == before + 1
    assert metric(main_server, ":tensorflow:serving:request_latency_bucket", le="+Inf", **labels) == before + 1

    grpc_labels = dict(model_name="penguins", API="predict", entrypoint="GRPC")
    before = metric(main_server, ":tensorflow:serving:request_latency_count", **grpc_labels)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "penguins"
    request.inputs["bill_length_mm"].CopyFrom(tf.make_tensor_proto([1.0], tf.float32))
    request.inputs["island"].CopyFrom(tf.make_tensor_proto(["Dream"]))
    main_server.prediction_stub().Predict(request, timeout=60)
    assert metric(main_server, ":tensorflow:serving:request_latency_count", **grpc_labels) == before + 1


def test_concurrent_requests_are_merged_into_batches(main_server):
    """32 clients x 4 one-row requests to a signature no other test uses: fewer model calls than requests."""
    clients, per_client = 32, 4
    barrier = threading.Barrier(clients)
    answers: list[tuple[float, object]] = []

    def client(index: int) -> None:
        session = requests.Session()
        barrier.wait()
        for j in range(per_client):
            x = float(index * 100 + j)
            response = session.post(main_server.url + "/v1/models/half_plus_two/versions/1:predict",
                                    data=json.dumps({"signature_name": "double", "instances": [x]}), timeout=60)
            answers.append((x, response.json()))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == clients * per_client
    assert all(body == {"predictions": [2 * x]} for x, body in answers)  # nobody got a neighbour's rows
    labels = dict(model_name="half_plus_two", version="1", signature_name="double")
    calls = metric(main_server, ":tensorflow:serving:batching_session:processed_batch_size_count", **labels)
    rows = metric(main_server, ":tensorflow:serving:batching_session:processed_batch_size_sum", **labels)
    assert rows == clients * per_client
    assert calls < rows  # merged
    assert metric(main_server, ":tensorflow:serving:batching_session:processed_batch_size_bucket",
                  le="1", **labels) < calls  # at least one call carried more than one request


def _log_records(server, model: str, request_id: str, rows: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        records = []
        for path in (server.request_log_dir / model).glob("*/*.jsonl"):
            records += [json.loads(line) for line in path.read_text().splitlines()
                        if f'"{request_id}"' in line]
        if len(records) >= rows:
            return sorted(records, key=lambda r: r["row"])
        time.sleep(0.1)
    raise AssertionError(f"no request log records for {request_id}")


def test_request_log_rest_rows_follow_the_contract(main_server):
    rows = [{"bill_length_mm": 39.1, "island": "Biscoe"}, {"bill_length_mm": float("nan"), "island": ""}]
    response = main_server.post("/v1/models/penguins:predict",
                                json.dumps({"instances": rows}), headers={"X-Request-Id": "rest-req-1"})
    assert response.status_code == 200
    records = _log_records(main_server, "penguins", "rest-req-1", 2)
    assert [r["row"] for r in records] == [0, 1]
    first = records[0]
    assert set(first) == {"request_id", "row", "ts", "model_name", "model_version", "signature_name", "api",
                          "features", "outputs"}
    assert first["model_name"] == "penguins" and first["model_version"] == 1
    assert first["signature_name"] == "serving_default" and first["api"] == "rest"
    assert first["features"] == {"bill_length_mm": 39.1, "island": "Biscoe"}
    assert records[1]["features"] == {"bill_length_mm": None, "island": ""}  # NaN as null
    assert first["outputs"]["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    expected = response.json()["predictions"][0]["probabilities"]
    assert [round(p, 5) for p in first["outputs"]["probabilities"]] == [round(p, 5) for p in expected]
    ts = dt.datetime.fromisoformat(first["ts"])
    assert ts.utcoffset() == dt.timedelta(0)
    path = next((main_server.request_log_dir / "penguins").glob(f"{ts:%Y-%m-%d}/{ts:%H}-*.jsonl"))
    assert re.fullmatch(r"\d\d-\d+\.jsonl", path.name)


def test_request_log_grpc_uses_metadata_request_id(main_server):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "penguins"
    request.inputs["bill_length_mm"].CopyFrom(tf.make_tensor_proto([45.0], tf.float32))
    request.inputs["island"].CopyFrom(tf.make_tensor_proto(["Dream"]))
    main_server.prediction_stub().Predict(request, timeout=60, metadata=[("x-request-id", "grpc-req-1")])
    (record,) = _log_records(main_server, "penguins", "grpc-req-1", 1)
    assert record["api"] == "grpc" and record["features"] == {"bill_length_mm": 45.0, "island": "Dream"}


def test_request_log_generates_ids_and_skips_failed_requests(main_server):
    main_server.post("/v1/models/penguins:predict", {"instances": [1.0]}, headers={"X-Request-Id": "bad-req"})
    response = main_server.post("/v1/models/penguins:predict",
                                {"instances": [{"bill_length_mm": 40.0, "island": "Dream"}]})
    assert response.status_code == 200
    time.sleep(0.5)
    ids = set()
    for path in (main_server.request_log_dir / "penguins").glob("*/*.jsonl"):
        ids |= {json.loads(line)["request_id"] for line in path.read_text().splitlines()}
    assert "bad-req" not in ids
    assert any(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
