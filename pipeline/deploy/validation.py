"""Infra validation: the candidate served alone must answer the test split like the evaluation did, over REST and
gRPC, within the latency budget."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pipeline.config import DeployConfig
from pipeline.deploy.errors import DeployError
from pipeline.deploy.predict import grpc_predict, rest_predict
from pipeline.deploy.sandbox import RemoteServer, SandboxServer, _StandbyUse, _take_standby, wait_available

if TYPE_CHECKING:
    import numpy as np

CHECK_CHUNK_ROWS = 2048  # rows per request when the whole test split is checked: bounds both sides' memory


def _in_chunks(predict, inputs: Mapping[str, "np.ndarray"], rows: int = CHECK_CHUNK_ROWS) -> "np.ndarray":
    """``predict`` over consecutive slices of the columnar ``inputs``, answers concatenated in order."""
    import numpy as np

    n = len(next(iter(inputs.values()))) if inputs else 0
    parts = [predict({k: v[i:i + rows] for k, v in inputs.items()}) for i in range(0, max(n, 1), rows)]
    return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


def p99(latencies_s: list[float]) -> float:
    """The 99th percentile in milliseconds (nearest rank, so one slow call in 50 does not hide)."""
    import numpy as np

    return float(np.percentile(np.asarray(latencies_s) * 1000.0, 99, method="higher")) if latencies_s else 0.0


def validate_serving(candidate: str | Path, model_name: str, version: int, inputs: Mapping[str, "np.ndarray"],
                     expected: "np.ndarray", cfg: DeployConfig, output: str | None = None) -> dict[str, Any]:
    """Serve ``candidate`` alone and check it answers like the evaluation over REST and gRPC, within budget.

    Returns:
        The report: ``rest_max_abs_diff``, ``grpc_max_abs_diff``, ``rest_p99_ms``, ``grpc_p99_ms``, ``rows``,
        ``server`` (sandbox or the real server's address).
    Raises:
        DeployError: the candidate does not load, answers differently or too slowly (with the report so far).
    """
    import grpc
    import numpy as np
    import requests
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    expected = np.asarray(expected, dtype=np.float64)
    report: dict[str, Any] = {"rows": int(len(expected)), "latency_budget_ms": cfg.latency_budget_ms}
    with tempfile.TemporaryDirectory(prefix="deploy-sandbox-") as sandbox:
        if cfg.tf_serving_rest_url:
            server = RemoteServer(cfg.tf_serving_rest_url.rstrip("/"), cfg.tf_serving_grpc_target,
                                  Path(cfg.tf_serving_model_base_path), model_name, version, Path(candidate))
            report["server"] = cfg.tf_serving_rest_url
        elif (standby := _take_standby(model_name)) is not None:
            server = _StandbyUse(standby, Path(candidate), version)
            report["server"] = "sandbox (started ahead)"
        else:
            base = Path(sandbox)
            shutil.copytree(candidate, base / model_name / str(version))
            server = SandboxServer(base, model_name)
            report["server"] = "sandbox"
        with server as server:
            wait_available(server, model_name, version, cfg.ready_timeout_s)
            session = requests.Session()
            rest = _in_chunks(lambda part: rest_predict(session, server.rest_url, model_name, version, part, output),
                              inputs)
            report["rest_max_abs_diff"] = _max_diff(rest, expected)
            checks = [("REST", report["rest_max_abs_diff"])]
            channel = grpc.insecure_channel(server.grpc_target) if server.grpc_target else None
            try:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel) if channel else None
                if stub is not None:
                    served = _in_chunks(lambda part: grpc_predict(stub, model_name, version, part, output), inputs)
                    report["grpc_max_abs_diff"] = _max_diff(served, expected)
                    checks.append(("gRPC", report["grpc_max_abs_diff"]))
                for api, diff in checks:
                    if not diff <= cfg.max_abs_diff:
                        raise DeployError(f"the served model's {api} answers differ from the evaluation's predictions "
                                          f"by {diff:.3g} (> {cfg.max_abs_diff:g} + {ULPS} float32 ulps)", report)
                n = len(expected)
                calls = {"rest": lambda i: rest_predict(session, server.rest_url, model_name, version,
                                                        {k: v[i:i + 1] for k, v in inputs.items()}, output)}
                if stub is not None:
                    calls["grpc"] = lambda i: grpc_predict(stub, model_name, version,
                                                           {k: v[i:i + 1] for k, v in inputs.items()}, output)
                for api, call in calls.items():
                    latencies = []
                    for i in range(cfg.latency_requests):
                        started = time.perf_counter()
                        call(i % n)
                        latencies.append(time.perf_counter() - started)
                    report[f"{api}_p99_ms"] = p99(latencies)
            finally:
                session.close()  # an open keep-alive connection would hold up the server's graceful stop
                if channel is not None:
                    channel.close()
    for api in ("rest", "grpc"):
        if report.get(f"{api}_p99_ms", 0.0) > cfg.latency_budget_ms:
            raise DeployError(f"p99 latency of {api.upper()} predicts is {report[f'{api}_p99_ms']:.1f} ms, over the "
                              f"budget of {cfg.latency_budget_ms:g} ms", report)
    return report


ULPS = 4  # float32 rounding allowed on top of max_abs_diff: one ulp of 4000.0 is already 2.4e-4


def _max_diff(got: "np.ndarray", expected: "np.ndarray") -> float:
    """The largest difference beyond ``ULPS`` float32 ulps of the expected value (0 for equal NaNs).

    Another process may round the last bit differently (thread pools, oneDNN kernels); for probabilities the ulp
    term is below 5e-7, so max_abs_diff is the bound, while a regression predicting thousands is not failed for
    float32's resolution."""
    import numpy as np

    if got.shape != expected.shape:
        raise DeployError(f"the served model answered shape {list(got.shape)}, the evaluation {list(expected.shape)}")
    if got.size == 0:
        return 0.0
    both_nan = np.isnan(got) & np.isnan(expected)
    excess = np.abs(got - expected) - ULPS * np.spacing(np.abs(expected).astype(np.float32)).astype(np.float64)
    return float(np.max(np.where(both_nan, 0.0, np.maximum(excess, 0.0))))

