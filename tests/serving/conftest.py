"""Fixtures for the serving tests: SavedModels written once per session, servers run as subprocesses.

Every server runs in its own process group (``start_new_session=True``) and its finalizer signals that group
only, so a failing test never leaves a server behind and never touches anyone else's processes.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for serving_models, under any --import-mode
import serving_models as models  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 180


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: serving tests that take tens of seconds (load, lifecycle)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m pipeline.serving`` on free ports, with helpers for REST and gRPC."""

    def __init__(self, workdir: Path, args: list[str], env: dict[str, str] | None = None):
        self.workdir = workdir
        self.rest_port, self.grpc_port = free_port(), free_port()
        self.args = ["--host", "127.0.0.1", "--port", str(self.grpc_port),
                     "--rest_api_port", str(self.rest_port)] + args
        self.env = {**os.environ, "PIPELINE_HOME": str(workdir / "home"), "TF_CPP_MIN_LOG_LEVEL": "2",
                    "PYTHONPATH": str(REPO), **(env or {})}
        self.log_path = workdir / f"server-{self.rest_port}.log"
        self.proc: subprocess.Popen | None = None
        self.http = requests.Session()
        self._channel = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def start(self) -> "ServerProcess":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.serving", *self.args], cwd=REPO,
                                     env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, model: str, version: int | None = None) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                response = self.http.get(self.url + path, timeout=2)
                states = [v["state"] for v in response.json().get("model_version_status", [])]
                if response.status_code == 200 and "AVAILABLE" in states:
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {READY_TIMEOUT_S}s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Signal our process group; escalate to SIGKILL (of our group only) if it does not exit."""
        try:
            if self.proc is None or self.proc.poll() is not None:
                return self.proc.returncode if self.proc else None
            try:
                os.killpg(self.proc.pid, sig)
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                return self.proc.wait(timeout=10)
            except ProcessLookupError:
                return self.proc.wait(timeout=10)
        finally:
            if self._channel is not None:  # after the process is gone: in-flight calls keep their channel
                self._channel.close()
                self._channel = None

    # ------------------------------------------------------------------------------------------ REST
    def get(self, path: str) -> requests.Response:
        return self.http.get(self.url + path, timeout=60)

    def post(self, path: str, body, headers: dict | None = None) -> requests.Response:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.http.post(self.url + path, data=data, headers=headers, timeout=60)

    # ------------------------------------------------------------------------------------------ gRPC
    @property
    def channel(self):
        import grpc

        if self._channel is None:
            self._channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        return self._channel

    def prediction_stub(self):
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        return prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def model_stub(self):
        from tensorflow_serving.apis import model_service_pb2_grpc

        return model_service_pb2_grpc.ModelServiceStub(self.channel)


@pytest.fixture(scope="session")
def templates(tmp_path_factory) -> dict[str, Path]:
    """Every test model, written once."""
    return models.build_templates(tmp_path_factory.mktemp("templates"))


def write_models_config(path: Path, entries: list[str]) -> Path:
    path.write_text("model_config_list {\n" + "\n".join(entries) + "\n}\n")
    return path


@pytest.fixture(scope="session")
def main_server(templates, tmp_path_factory):
    """One server for the API contract, metrics, request log and load tests.

    penguins (v1), half_plus_two (v1 with warmup, v2; policy all; labels stable=1, canary=2), examples (v1);
    batching on (2 ms window), Prometheus on, request log on.
    """
    work = tmp_path_factory.mktemp("main_server")
    base = work / "models"
    for name, key in [("penguins", "penguins_1"), ("half_plus_two", "half_plus_two_1"),
                      ("examples", "examples_1")]:
        models.copy_version(templates[key], base / name, 1)
    models.copy_version(templates["half_plus_two_2"], base / "half_plus_two", 2)
    config = write_models_config(work / "models.config", [
        f'config {{ name: "penguins" base_path: "{base / "penguins"}" model_platform: "tensorflow" }}',
        f'config {{ name: "half_plus_two" base_path: "{base / "half_plus_two"}" model_platform: "tensorflow"'
        ' model_version_policy { all {} }'
        ' version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } }',
        f'config {{ name: "examples" base_path: "{base / "examples"}" }}',
    ])
    (work / "batching.config").write_text(
        "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 2000 }\n"
        "max_enqueued_batches { value: 1000 }\nnum_batch_threads { value: 2 }\n")
    (work / "monitoring.config").write_text(
        'prometheus_config {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n')
    server = ServerProcess(work, [
        "--model_config_file", str(config), "--file_system_poll_wait_seconds", "1",
        "--enable_batching", "--batching_parameters_file", str(work / "batching.config"),
        "--monitoring_config_file", str(work / "monitoring.config"),
        "--request_log", "--request_log_dir", str(work / "request_logs"),
        "--max_request_bytes", str(1 << 20),
    ])
    server.request_log_dir = work / "request_logs"
    server.start()
    try:
        for name in ("penguins", "half_plus_two", "examples"):
            server.wait_ready(name)
        yield server
    finally:
        server.stop()
