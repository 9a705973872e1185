"""``--workers 2``: two server processes on the same ports under a supervisor (pipeline/serving/workers.py).

Which worker answers a REST request is the kernel's choice (``SO_REUSEPORT`` spreads new connections), so every
request here goes on a connection of its own, and the request log (one file per worker pid) tells which worker
served it. Everything a single server offers must hold for the pair: both answer, metrics are summed over both,
a new version and a reloaded config reach both, a dead worker is replaced, SIGTERM stops all of them, and a
supervisor that disappears takes its workers with it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import grpc
import pytest
import requests
import serving_models as models
from conftest import ServerProcess, write_models_config
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.config import model_server_config_pb2
from test_lifecycle import ROW, served_version, wait_for
from test_observability import metric

pytestmark = pytest.mark.slow

METRICS = "/monitoring/prometheus/metrics"


def children(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_workers_serving(server: ServerProcess, count: int, after: int = 0) -> None:
    """Until the supervisor has logged ``after + count`` "worker N (pid P) serving" lines."""
    def serving() -> bool:
        if server.proc.poll() is not None:
            raise AssertionError(f"supervisor exited with {server.proc.returncode}:\n{server.log_tail()}")
        return len(re.findall(r"worker \d+ \(pid \d+\) serving", server.log_path.read_text())) >= after + count
    wait_for(serving, timeout=300, what=f"{count} workers serving")


def fresh_post(server: ServerProcess, path: str, body, request_id: str) -> requests.Response:
    """A request on a connection of its own, so that either worker may get it."""
    return requests.post(server.url + path, data=json.dumps(body), headers={"X-Request-Id": request_id,
                                                                            "Connection": "close"}, timeout=60)


def log_pids(server: ServerProcess, prefix: str, model: str = "penguins") -> dict[str, tuple[int, int]]:
    """Request id -> (pid of the worker that logged it, model version), for the ids starting with ``prefix``."""
    found = {}
    for path in (server.request_log_dir / model).glob("*/*.jsonl"):
        pid = int(path.stem.split("-")[1])
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["request_id"].startswith(prefix):
                found[record["request_id"]] = (pid, record["model_version"])
    return found


def logged(server: ServerProcess, prefix: str, count: int, model: str = "penguins") -> dict[str, tuple[int, int]]:
    """Waits until the request log holds ``count`` requests whose id starts with ``prefix``."""
    def complete():
        found = log_pids(server, prefix, model)
        return found if len(found) == count else None
    return wait_for(complete, timeout=30, what="request log records")


def spread(server: ServerProcess, prefix: str, path: str = "/v1/models/penguins:predict", body=None,
           model: str = "penguins", minimum: int = 40) -> dict[str, tuple[int, int]]:
    """Requests on fresh connections until both workers have logged some: request id -> (pid, version)."""
    body = body or {"instances": [ROW]}
    sent = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for _ in range(10):
            response = fresh_post(server, path, body, f"{prefix}-{sent}")
            assert response.status_code == 200, response.text
            sent += 1
        if sent >= minimum:
            found = logged(server, prefix, sent, model)
            if len({pid for pid, _ in found.values()}) == 2:
                return found
    raise AssertionError(f"{sent} requests on fresh connections never reached both workers")


@pytest.fixture(scope="module")
def pool(templates, tmp_path_factory):
    work = tmp_path_factory.mktemp("workers")
    base = work / "models"
    models.copy_version(templates["penguins_1"], base / "penguins", 1)
    config = write_models_config(work / "models.config", [
        f'config {{ name: "penguins" base_path: "{base / "penguins"}" model_platform: "tensorflow" }}'])
    (work / "monitoring.config").write_text(f'prometheus_config {{ enable: true path: "{METRICS}" }}\n')
    server = ServerProcess(work, [
        "--workers", "2", "--model_config_file", str(config), "--file_system_poll_wait_seconds", "0.2",
        "--monitoring_config_file", str(work / "monitoring.config"),
        "--request_log", "--request_log_dir", str(work / "request_logs")])
    server.base, server.request_log_dir, server.templates = base, work / "request_logs", templates
    server.start()
    try:
        wait_workers_serving(server, 2)
        yield server
    finally:
        server.stop(signal.SIGKILL)


def test_both_workers_answer_and_metrics_sum_over_them(pool):
    workers = children(pool.proc.pid)
    assert len(workers) == 2 and pool.proc.pid not in workers
    found = spread(pool, "both")
    pids = {pid for pid, _ in found.values()}
    assert pids == workers  # each of the two workers served some of them
    labels = {"model_name": "penguins", "version": "1", "entrypoint": "REST", "API": "predict", "status": "OK"}
    # Any worker answers the scrape with the sum over both (these requests are the only ones so far).
    for _ in range(4):
        scraped = requests.get(pool.url + METRICS, headers={"Connection": "close"}, timeout=60).text
        assert f'{":tensorflow:serving:request_count"}{{model_name="penguins",version="1",entrypoint="REST",' \
               f'API="predict",status="OK"}} {len(found)}' in scraped
    assert metric(pool, ":tensorflow:serving:request_latency_count", model_name="penguins", API="predict",
                  entrypoint="REST") == len(found)
    assert metric(pool, ":tensorflow:serving:model_load_count", model_name="penguins", status="OK") == 2  # one each
    assert metric(pool, ":tensorflow:serving:request_count", **labels) == len(found)


def test_grpc_is_served_by_both_workers(pool):
    from test_grpc_api import penguins_request

    pids = set()
    for i in range(40):  # a channel of its own each time: one connection, either worker
        with grpc.insecure_channel(f"127.0.0.1:{pool.grpc_port}",
                                   options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            from tensorflow_serving.apis import prediction_service_pb2_grpc

            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(penguins_request(), timeout=60, metadata=[("x-request-id", f"grpc-{i}")])
        if i >= 9 and i % 10 == 9:
            found = logged(pool, "grpc-", i + 1)
            pids = {pid for pid, _ in found.values()}
            if len(pids) == 2:
                break
    assert pids == children(pool.proc.pid)


def test_a_new_version_is_served_by_both_workers(pool):
    shutil.copytree(pool.templates["penguins_2"], pool.base / "penguins" / "2")
    # Each worker polls on its own: wait until fresh connections only ever see version 2 ...
    wait_for(lambda: all(served_version(fresh_post(pool, "/v1/models/penguins:predict", {"instances": [ROW]},
                                                   f"probe-{time.monotonic()}")) == 2 for _ in range(10)),
             what="version 2 everywhere")
    # ... and check that both workers answered with it.
    found = spread(pool, "v2")
    assert {version for _, version in found.values()} == {2}
    assert {pid for pid, _ in found.values()} == children(pool.proc.pid)


def test_a_reloaded_config_reaches_both_workers(pool, templates):
    models.copy_version(templates["half_plus_two_1"], pool.base / "half_plus_two", 1)
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.config.add(name="penguins", base_path=str(pool.base / "penguins"),
                                        model_platform="tensorflow")
    config.model_config_list.config.add(name="half_plus_two", base_path=str(pool.base / "half_plus_two"),
                                        model_platform="tensorflow")
    response = pool.model_stub().HandleReloadConfigRequest(
        model_management_pb2.ReloadConfigRequest(config=config), timeout=120)
    assert response.status.error_code == 0
    # When the call returns, every worker serves the new model: no waiting here.
    found = spread(pool, "half", "/v1/models/half_plus_two:predict", {"instances": [2.0]}, model="half_plus_two")
    assert {pid for pid, _ in found.values()} == children(pool.proc.pid)


def test_a_killed_worker_is_replaced(pool):
    before = children(pool.proc.pid)
    victim = min(before)
    served = len(re.findall(r"worker \d+ \(pid \d+\) serving", pool.log_path.read_text()))
    os.kill(victim, signal.SIGKILL)
    wait_workers_serving(pool, 1, after=served)
    def replaced() -> set[int] | None:
        now = children(pool.proc.pid)
        return now if len(now) == 2 and victim not in now else None
    after = wait_for(replaced, what="a new worker")
    assert after & before == before - {victim}
    # The replacement serves what the others serve, including the config reloaded through gRPC before it started.
    found = spread(pool, "replaced-half", "/v1/models/half_plus_two:predict", {"instances": [2.0]},
                   model="half_plus_two")
    assert {pid for pid, _ in found.values()} == after


def test_sigterm_stops_every_worker_and_the_supervisor(pool):
    workers = children(pool.proc.pid)
    state_dirs = _state_dirs(pool)
    assert len(workers) == 2 and state_dirs
    assert pool.stop(signal.SIGTERM, timeout=120) == 0
    assert not any(alive(pid) for pid in workers)
    assert not any(path.exists() for path in state_dirs)  # the metrics and reload files went with it


def test_a_killed_supervisor_takes_its_workers_with_it(templates, tmp_path):
    models.copy_version(templates["half_plus_two_1"], tmp_path / "models" / "half_plus_two", 1)
    server = ServerProcess(tmp_path, ["--workers", "2", "--model_name", "half_plus_two",
                                      "--model_base_path", str(tmp_path / "models" / "half_plus_two")]).start()
    try:
        wait_workers_serving(server, 2)
        workers = children(server.proc.pid)
        assert len(workers) == 2
        (state_dir,) = _state_dirs(server)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=30)
        wait_for(lambda: not any(alive(pid) for pid in workers), timeout=60, what="workers to stop")
        assert state_dir.exists()  # nobody left to remove it: the next supervisor does
        from pipeline.serving.workers import remove_stale_state_dirs

        assert state_dir in remove_stale_state_dirs(state_dir.parent) and not state_dir.exists()
    finally:
        server.stop(signal.SIGKILL)


def test_a_port_in_use_stops_the_supervisor_before_any_worker(templates, tmp_path):
    models.copy_version(templates["half_plus_two_1"], tmp_path / "models" / "half_plus_two", 1)
    server = ServerProcess(tmp_path, ["--workers", "2", "--model_name", "half_plus_two",
                                      "--model_base_path", str(tmp_path / "models" / "half_plus_two")])
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even a port shared this way is refused
        taken.bind(("127.0.0.1", server.rest_port))
        taken.listen()
        server.start()
        try:
            assert server.proc.wait(timeout=60) == 1
            assert "cannot start" in server.log_tail() and "supervising" not in server.log_tail()
        finally:
            server.stop(signal.SIGKILL)


def _state_dirs(pool) -> list[Path]:
    """The supervisor's temporary directory, from its workers' environment."""
    dirs = set()
    for pid in children(pool.proc.pid):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        for item in env:
            if item.startswith(b"PIPELINE_SERVING_STATE_DIR="):
                dirs.add(Path(item.split(b"=", 1)[1].decode()))
    return sorted(dirs)
