"""Serving benchmark: `pipeline serve` (REST and gRPC) against the in-process floor and `mlflow models serve`.

Trains a small Keras classifier on the palmerpenguins data (or takes ``--model PATH``, a SavedModel with the
named-input signature of docs/contracts.md), then measures, for concurrency 1, 8 and 64 (one row per request):

- the floor: the same ``serving_default`` signature called in-process, one row per call and 64 rows per call;
- our server, REST and gRPC, without batching and with ``--enable_batching``;
- MLflow's scoring server (``mlflow models serve --env-manager local``) on the same SavedModel logged as a pyfunc.

Our server runs with ``--workers`` (default: one per core). Load comes from separate processes on the same
machine: ``h2load`` (nghttp2's C load generator: ``apt-get install nghttp2-client``) when it is installed, for every
system and both protocols (HTTP/1.1 for REST, HTTP/2 gRPC framing for gRPC, one connection per client), else
Python asyncio clients (a minimal keep-alive HTTP/1.1 client and ``grpc.aio``, one channel per client), which cost
far more CPU on the cores the server uses. Every row says which one it used. h2load does not read gRPC trailers,
so a gRPC answer is checked apart (the same request through the official stub) and errors are also counted by
the server itself (its ``request_count`` by status). Read the numbers as what one box does, and see the load line.

    python benchmarks/serving.py                 # full run, >= 10 s per point
    python benchmarks/serving.py --quick         # smoke run, 2 s per point
    python benchmarks/serving.py --write-docs    # also replace our section of docs/benchmarks.md
    python benchmarks/serving.py --only rest,grpc --concurrency 1,8 --duration 3 --skip-mlflow  # a quick subset
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / ".work" / "serving"
NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
CATEGORICAL = ["island", "sex"]
CLASSES = ["Adelie", "Chinstrap", "Gentoo"]
ROW = {"bill_length_mm": 39.1, "bill_depth_mm": 18.7, "flipper_length_mm": 181.0, "body_mass_g": 3750.0,
       "island": "Torgersen", "sex": "male"}
NOTES = ("Notes: every point runs with its load generator on the same 2 cores, and other engineers' jobs may be "
         "running (load line above), so read ratios rather than absolute numbers. Each worker of our server serves "
         "REST on an asyncio (uvloop) event loop, with the model call on a bounded pool or the batcher, and gRPC on "
         "grpc's threaded server, the model called on the handler thread; the kernel spreads connections over the "
         "workers (`SO_REUSEPORT`). The model is the SavedModel's graph function called directly, without the "
         "ConcreteFunction's argument binding (pipeline/serving/tf_call.py). A one-row call of the penguins model "
         "holds the GIL for most of its time, so one process uses about one core: more clients scale through more "
         "workers, or through batching, which turns 64 calls into one.")
DOC_BEGIN, DOC_END = "<!-- serving-benchmark:begin -->", "<!-- serving-benchmark:end -->"


# ------------------------------------------------------------------------------------------------- model
def train_and_export(target: Path) -> Path:
    """A small Keras classifier on palmerpenguins, exported with named raw-feature inputs (docs/contracts.md)."""
    import keras
    import tensorflow as tf
    from palmerpenguins import load_penguins

    frame = load_penguins().dropna(subset=["species"]).sample(frac=1.0, random_state=0)
    means = {c: float(frame[c].mean()) for c in NUMERIC}
    stds = {c: float(frame[c].std()) for c in NUMERIC}
    vocab = {c: sorted(frame[c].dropna().unique().tolist()) for c in CATEGORICAL}

    def preprocess(features: dict) -> tf.Tensor:
        """Raw feature dict -> model input matrix: NaN imputed, z-scored, categories one-hot."""
        columns = []
        for c in NUMERIC:
            x = tf.cast(features[c], tf.float32)
            x = tf.where(tf.math.is_nan(x), tf.fill(tf.shape(x), means[c]), x)
            columns.append(((x - means[c]) / stds[c])[:, None])
        for c in CATEGORICAL:
            columns.append(tf.cast(tf.equal(features[c][:, None], tf.constant(vocab[c])[None, :]), tf.float32))
        return tf.concat(columns, axis=1)

    raw = {c: frame[c].to_numpy(np.float32) for c in NUMERIC}
    raw.update({c: frame[c].fillna("").astype(str).to_numpy(object) for c in CATEGORICAL})
    x = preprocess({k: tf.constant(v) for k, v in raw.items()}).numpy()
    y = frame["species"].map({name: i for i, name in enumerate(CLASSES)}).to_numpy()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=30, batch_size=32, validation_split=0.2, verbose=0)
    print(f"trained: val accuracy {history.history['val_accuracy'][-1]:.3f}", flush=True)

    class Export(tf.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name=c) for c in NUMERIC]
                     + [tf.TensorSpec([None], tf.string, name=c) for c in CATEGORICAL])
        def serve(self, bill_length_mm, bill_depth_mm, flipper_length_mm, body_mass_g, island, sex):
            features = dict(zip(NUMERIC + CATEGORICAL,
                                [bill_length_mm, bill_depth_mm, flipper_length_mm, body_mass_g, island, sex]))
            probabilities = self.model(preprocess(features), training=False)
            classes = tf.tile(tf.constant(CLASSES)[None, :], [tf.shape(probabilities)[0], 1])
            return {"probabilities": probabilities, "classes": classes}

    module = Export(model)
    if target.exists():
        shutil.rmtree(target)
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve})
    return target


def row_arrays(rows: int) -> dict[str, np.ndarray]:
    arrays = {c: np.full(rows, ROW[c], np.float32) for c in NUMERIC}
    arrays.update({c: np.array([ROW[c].encode()] * rows, dtype=object) for c in CATEGORICAL})
    return arrays


def percentiles(latencies: list[float]) -> tuple[float, float]:
    values = np.asarray(latencies) * 1e3
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def measure_floor(model_dir: Path, duration: float) -> dict:
    """The signature called in-process: one row per call, and 64 rows per call."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    results = {}
    for rows in (1, 64):
        arrays = row_arrays(rows)

        def call():
            outputs = fn(**{k: tf.constant(v) for k, v in arrays.items()})
            return {k: v.numpy() for k, v in outputs.items()}
        for _ in range(200):
            call()
        latencies, deadline = [], time.perf_counter() + duration
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - started)
        p50, p99 = percentiles(latencies)
        results[rows] = {"p50_ms": p50, "p99_ms": p99, "rows_per_s": rows * len(latencies) / sum(latencies)}
    return results


# ------------------------------------------------------------------------------------------ load generator
async def _http_worker(port: int, path: str, body: bytes, deadline: float, warm_until: float, out: list,
                       errors: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    while True:
        started = time.perf_counter()
        if started >= deadline:
            break
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        if status != 200:
            errors.append(status)
        elif started >= warm_until:
            out.append(time.perf_counter() - started)
    writer.close()


def grpc_request():
    """The benchmark row as a PredictRequest (built before the clock starts: importing TF takes seconds)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "penguins"
    for name, value in row_arrays(1).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


async def _grpc_worker(request, deadline: float, warm_until: float, out: list, errors: list, channel) -> None:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    while True:
        started = time.perf_counter()
        if started >= deadline:
            break
        try:
            await stub.Predict(request, timeout=30)
        except Exception as exc:  # counted, never fatal to the run
            errors.append(repr(exc)[:80])
            continue
        if started >= warm_until:
            out.append(time.perf_counter() - started)


def loadgen(kind: str, port: int, concurrency: int, duration: float, warmup: float) -> dict:
    """One load-generating process: ``concurrency`` clients for ``warmup + duration`` seconds."""
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    request = grpc_request() if kind == "grpc" else None

    async def run() -> dict:
        out: list[float] = []
        errors: list = []
        now = time.perf_counter()
        warm_until, deadline = now + warmup, now + warmup + duration
        if kind == "grpc":
            import grpc

            # A channel (one HTTP/2 connection) per client, as REST has a connection per client: with --workers,
            # one shared connection would reach only one worker.
            channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                        for _ in range(concurrency)]
            await asyncio.gather(*[_grpc_worker(request, deadline, warm_until, out, errors, channel)
                                   for channel in channels])
            for channel in channels:
                await channel.close()
        else:
            path, body = rest_body(kind)
            await asyncio.gather(*[_http_worker(port, path, body, deadline, warm_until, out, errors)
                                   for _ in range(concurrency)])
        return {"latencies": out, "errors": len(errors), "error_sample": [str(e) for e in errors[:3]]}

    return asyncio.run(run())


def rest_body(kind: str) -> tuple[str, bytes]:
    """The request path and body of the benchmark row for a REST-style system."""
    if kind == "rest":
        return "/v1/models/penguins:predict", json.dumps({"instances": [ROW]}).encode()
    return "/invocations", json.dumps({"dataframe_split": {"columns": list(ROW), "data": [list(ROW.values())]}}).encode()


GRPC_PATH = "/tensorflow.serving.PredictionService/Predict"


def h2load_available() -> bool:
    return shutil.which("h2load") is not None


def run_h2load(kind: str, port: int, concurrency: int, duration: float, warmup: float) -> dict:
    """``concurrency`` h2load clients (one connection each) for ``warmup + duration`` s; latencies from its
    per-request log, which holds the measured period only."""
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        body, log = Path(tmp) / "body", Path(tmp) / "requests.log"
        if kind == "grpc":
            message = grpc_request().SerializeToString()
            body.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)  # gRPC length-prefixed frame
            args = ["-H", "content-type: application/grpc", "-H", "te: trailers", f"http://127.0.0.1:{port}{GRPC_PATH}"]
        else:
            path, data = rest_body(kind)
            body.write_bytes(data)
            args = ["--h1", "-H", "content-type: application/json", f"http://127.0.0.1:{port}{path}"]
        command = ["h2load", "-t", "1", "-c", str(concurrency), "-m", "1", "-D", str(max(1, round(duration))),
                   "--warm-up-time", str(max(1, round(warmup))), "-d", str(body), "--log-file", str(log), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration + warmup + 120, check=False)
        if done.returncode != 0 or not log.exists():
            raise RuntimeError(f"h2load failed ({kind}, c={concurrency}): {done.stdout[-500:]} {done.stderr[-500:]}")
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    summary = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", done.stdout)
    failed = sum(int(x) for x in summary.groups()[1:]) if summary else 0
    latencies = [int(row[2]) / 1e6 for row in rows if row[1] == "200"]
    bad = [row[1] for row in rows if row[1] != "200"]
    return {"latencies": latencies, "errors": len(bad) + failed, "error_sample": bad[:3]}


def run_load(kind: str, port: int, concurrency: int, duration: float, warmup: float, client: str = "python") -> dict:
    """Drive ``concurrency`` clients with h2load (``client="h2load"``), or from separate Python processes (2 when
    concurrency > 1), and merge their results."""
    if client == "h2load":
        result = run_h2load(kind, port, concurrency, duration, warmup)
        p50, p99 = percentiles(result["latencies"]) if result["latencies"] else (float("nan"), float("nan"))
        return {"kind": kind, "concurrency": concurrency, "p50_ms": p50, "p99_ms": p99, "client": "h2load",
                "rps": len(result["latencies"]) / duration, "requests": len(result["latencies"]),
                "errors": result["errors"], "error_sample": result["error_sample"]}
    processes = 1 if concurrency == 1 else 2
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    children = []
    for index, share in enumerate(shares):
        out = WORK / f"load-{kind}-{concurrency}-{index}.json"
        children.append((out, subprocess.Popen(
            [sys.executable, __file__, "--loadgen", kind, "--port", str(port), "--concurrency", str(share),
             "--duration", str(duration), "--warmup", str(warmup), "--out", str(out)], cwd=REPO)))
    latencies, errors, samples = [], 0, []
    for out, child in children:
        if child.wait(timeout=duration + warmup + 120) != 0:
            raise RuntimeError(f"load generator failed ({kind}, c={concurrency})")
        result = json.loads(out.read_text())
        latencies += result["latencies"]
        errors += result["errors"]
        samples += result["error_sample"]
    p50, p99 = percentiles(latencies) if latencies else (float("nan"), float("nan"))
    return {"kind": kind, "concurrency": concurrency, "p50_ms": p50, "p99_ms": p99, "client": "python",
            "rps": len(latencies) / duration, "requests": len(latencies), "errors": errors, "error_sample": samples}


# ------------------------------------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(port: int, path: str, process: subprocess.Popen, timeout: float = 300) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on {port} not ready")


def stop(process: subprocess.Popen) -> None:
    """Stop a server we started, by its own process group."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


METRICS_PATH = "/monitoring/prometheus/metrics"


def start_ours(model_dir: Path, batching: bool, workers: int = 1) -> tuple[subprocess.Popen, int, int]:
    base = WORK / "serving_base"
    if not (base / "penguins" / "1").exists():
        shutil.copytree(model_dir, base / "penguins" / "1")
    rest, grpc_port = free_port(), free_port()
    (WORK / "monitoring.config").write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    args = [sys.executable, "-m", "pipeline.serving", "--model_name", "penguins",
            "--model_base_path", str(base / "penguins"), "--port", str(grpc_port), "--rest_api_port", str(rest),
            "--monitoring_config_file", str(WORK / "monitoring.config"), "--workers", str(workers)]
    if batching:
        (WORK / "batching.config").write_text(
            "max_batch_size { value: 64 }\nbatch_timeout_micros { value: 0 }\n"
            "max_enqueued_batches { value: 1000 }\nnum_batch_threads { value: 2 }\n")
        args += ["--enable_batching", "--batching_parameters_file", str(WORK / "batching.config")]
    log_path = WORK / f"server-{'batching' if batching else 'plain'}.log"
    log = open(log_path, "w")
    process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    wait_http(rest, "/v1/models/penguins", process)
    deadline = time.monotonic() + 300
    while workers > 1 and len(re.findall(r"worker \d+ \(pid \d+\) serving", log_path.read_text())) < workers:
        if process.poll() is not None or time.monotonic() > deadline:  # the first answered; wait for every one
            raise RuntimeError(f"not every worker started: see {log_path}")
        time.sleep(0.2)
    return process, rest, grpc_port


def server_errors(rest_port: int, entrypoint: str) -> int:
    """Requests our server itself counted as failed (``request_count`` with a status other than OK) for one
    entrypoint, summed over its workers: h2load sees HTTP statuses, not gRPC ones."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}{METRICS_PATH}", timeout=30) as response:
        text = response.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith(":tensorflow:serving:request_count{") and f'entrypoint="{entrypoint}"' in line \
                and 'status="OK"' not in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


PYFUNC_CODE = f"""# Written by benchmarks/serving.py: the SavedModel's signature as an MLflow pyfunc (models from code).
import mlflow
import numpy as np
import pandas as pd

NUMERIC, CATEGORICAL, CLASSES = {NUMERIC!r}, {CATEGORICAL!r}, {CLASSES!r}


class SavedModelPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import tensorflow as tf

        self._fn = tf.saved_model.load(context.artifacts["saved_model"]).signatures["serving_default"]

    def predict(self, context, model_input, params=None):
        import tensorflow as tf

        inputs = {{c: tf.constant(model_input[c].to_numpy(np.float32)) for c in NUMERIC}}
        inputs.update({{c: tf.constant(model_input[c].fillna("").astype(str).to_numpy(object)) for c in CATEGORICAL}})
        return pd.DataFrame(self._fn(**inputs)["probabilities"].numpy(), columns=CLASSES)


mlflow.models.set_model(SavedModelPyfunc())
"""


def start_mlflow(model_dir: Path) -> tuple[subprocess.Popen, int]:
    """Log the SavedModel as a pyfunc in a temporary file store and serve it with ``mlflow models serve``."""
    import mlflow
    import pandas as pd

    store = WORK / "mlruns"
    shutil.rmtree(store, ignore_errors=True)
    uri = store.as_uri()
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # a throw-away file store is all a benchmark needs
    mlflow.set_tracking_uri(uri)
    code = WORK / "penguins_pyfunc.py"
    code.write_text(PYFUNC_CODE)
    example = pd.DataFrame([ROW])
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="penguins", python_model=str(code),
                                       artifacts={"saved_model": str(model_dir)}, input_example=example)
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    check = loaded.predict(example)
    assert list(check.columns) == CLASSES and abs(float(check.iloc[0].sum()) - 1.0) < 1e-4, check
    port = free_port()
    log = open(WORK / "mlflow-serve.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", info.model_uri, "--env-manager",
         "local", "-p", str(port), "--host", "127.0.0.1"],
        cwd=WORK, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, "TF_CPP_MIN_LOG_LEVEL": "2",
             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})  # it execs uvicorn
    wait_http(port, "/ping", process)
    return process, port


def check_answers(rest_port: int, grpc_port: int | None, mlflow_port: int | None, expected: np.ndarray) -> None:
    """Every system must return the floor's probabilities for the benchmark row before it is timed."""
    import urllib.request

    def post(port, path, body):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    if rest_port:
        got = post(rest_port, "/v1/models/penguins:predict", {"instances": [ROW]})["predictions"][0]["probabilities"]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    if grpc_port:  # the request the gRPC load generators send, through the official stub (status OK or it raises)
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(grpc_request(), timeout=30)
        np.testing.assert_allclose(list(response.outputs["probabilities"].float_val), expected, rtol=1e-5, atol=1e-6)
    if mlflow_port:
        body = {"dataframe_split": {"columns": list(ROW), "data": [list(ROW.values())]}}
        got = post(mlflow_port, "/invocations", body)["predictions"][0]
        np.testing.assert_allclose([got[c] for c in CLASSES], expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ report
def load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min)"


def render(args, floor: dict, results: list[dict], loads: list[str]) -> str:
    floor1 = floor[1]
    command = "python benchmarks/serving.py" + (" --quick" if args.quick else "") + \
        (f" --workers {args.workers}" if args.workers != (os.cpu_count() or 1) else "") + \
        (f" --client {args.client}" if args.client != "auto" else "") + " --write-docs"
    lines = [
        "## Serving (`benchmarks/serving.py`)",
        "",
        f"Command: `{command}` ({args.duration:g} s measured per point after {args.warmup:g} s warm-up; machine: "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}).",
        "",
        "Model: a small Keras MLP trained on palmerpenguins by the benchmark, exported with the named raw-feature "
        "signature of docs/contracts.md (6 inputs, `probabilities` + `classes`); one row per request. "
        f"Our server: `pipeline serve --workers {args.workers}`. " + LOADGEN_TEXT[clients_used(results)] +
        f" They run on the same {os.cpu_count()} cores as the server, so throughput is what one box does with its "
        "clients on it.",
        "",
        f"Load while running (other engineers' jobs share the machine): {'; '.join(loads)}.",
        "",
        "Floor (the same signature called in-process, tensors built from numpy per call): "
        f"1 row/call p50 {floor1['p50_ms']:.3f} ms, p99 {floor1['p99_ms']:.3f} ms, {floor1['rows_per_s']:,.0f} rows/s; "
        f"64 rows/call {floor[64]['rows_per_s']:,.0f} rows/s (p50 {floor[64]['p50_ms']:.3f} ms per call).",
        "",
        "| system | concurrency | load generator | p50 ms | p99 ms | requests/s | errors | p50 - floor p50 (ms) "
        "| req/s vs MLflow |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    mlflow_rps = {r["concurrency"]: r["rps"] for r in results if r["system"] == "mlflow models serve"}
    for r in results:
        ratio = f"{r['rps'] / mlflow_rps[r['concurrency']]:.1f}x" if mlflow_rps.get(r["concurrency"]) else "-"
        lines.append(f"| {r['system']} | {r['concurrency']} | {r.get('client', 'python')} | {r['p50_ms']:.3f} | "
                     f"{r['p99_ms']:.3f} | "
                     f"{r['rps']:,.0f} | {r['errors']} | {r['p50_ms'] - floor1['p50_ms']:+.3f} | {ratio} |")
    rest1 = [r for r in results if r["system"] == "pipeline serve REST" and r["concurrency"] == 1]
    batched = [r for r in results if r["system"] == "pipeline serve REST, batching" and r["concurrency"] == 64]
    lines += ["", "Floors from issue 3:"]
    if rest1:
        gap = rest1[0]["p50_ms"] - floor1["p50_ms"]
        lines.append(f"- concurrency 1, REST p50 minus in-process p50: {gap:+.3f} ms (target: within 1 ms) - "
                     f"{'met' if gap <= 1.0 else 'NOT met'}.")
    if batched and mlflow_rps.get(64):
        ratio = batched[0]["rps"] / mlflow_rps[64]
        lines.append(f"- concurrency 64 with batching, REST throughput / MLflow: {ratio:.1f}x (target: at least 5x) - "
                     f"{'met' if ratio >= 5 else 'NOT met'}.")
    total_errors = sum(r["errors"] for r in results)
    lines.append(f"- errors in all runs: {total_errors}.")
    lines += ["", "Floors from issue 10:"] + [f"- {text} - {'met' if ok else 'NOT met'}." for text, ok in issue10_floors(results)]
    lines += ["", NOTES]
    return "\n".join(lines)


LOADGEN_TEXT = {
    "h2load": "Load generator: h2load (nghttp2's C client, one thread; HTTP/1.1 for REST and MLflow, HTTP/2 with "
              "gRPC framing for gRPC; one connection per client), a separate process; gRPC answers checked through "
              "the official stub before timing, errors also counted by the server (`request_count` by status).",
    "python": "Load generators: separate Python processes (asyncio keep-alive HTTP/1.1 client, `grpc.aio` with a "
              "channel per client; 2 processes above concurrency 1), h2load not being installed.",
    "mixed": "Load generators: h2load where it was usable, Python clients elsewhere (column `load generator`).",
}


def clients_used(results: list[dict]) -> str:
    used = {r.get("client", "python") for r in results}
    return used.pop() if len(used) == 1 else "mixed"


def issue10_floors(results: list[dict]) -> list[tuple[str, bool]]:
    """Issue 10's floors: REST without batching scales with clients (c=8 at least 1.5x c=1), REST c=64 with
    batching at least 3,000 req/s, and gRPC at least as fast as REST at every concurrency (with and without
    batching). ``(text, met)`` per floor."""
    rps = {(r["system"], r["concurrency"]): r["rps"] for r in results}
    out = []
    one, eight = rps.get(("pipeline serve REST", 1)), rps.get(("pipeline serve REST", 8))
    if one and eight:
        out.append((f"REST without batching, concurrency 8 / concurrency 1 throughput: {eight / one:.2f}x "
                    f"(target: at least 1.5x)", eight >= 1.5 * one))
    batched = rps.get(("pipeline serve REST, batching", 64))
    if batched:
        out.append((f"REST with batching at concurrency 64: {batched:,.0f} req/s (target: at least 3,000)",
                    batched >= 3000))
    for suffix in ("", ", batching"):
        for (system, c), rest in sorted(rps.items()):
            grpc = rps.get((f"pipeline serve gRPC{suffix}", c))
            if system == f"pipeline serve REST{suffix}" and grpc is not None:
                out.append((f"gRPC{suffix} / REST{suffix} at concurrency {c}: {grpc / rest:.2f}x (target: at least "
                            f"1x)", grpc >= rest))
    return out


def write_docs(section: str) -> None:
    path = REPO / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{DOC_BEGIN}\n{section}\n{DOC_END}"
    if DOC_BEGIN in text and DOC_END in text:
        head, rest = text.split(DOC_BEGIN, 1)
        text = head + block + rest.split(DOC_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s per point: a smoke run")
    parser.add_argument("--model", type=Path, help="an exported SavedModel to serve instead of training one")
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="pipeline serve --workers (default: one per core)")
    parser.add_argument("--client", choices=("auto", "h2load", "python"), default="auto",
                        help="load generator: h2load when installed (auto), or the Python clients")
    parser.add_argument("--only", default="rest,grpc,rest-batching,grpc-batching",
                        help="which of our rows to run (comma-separated subset of the default)")
    parser.add_argument("--write-docs", action="store_true", help="replace our section of docs/benchmarks.md")
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--warmup", type=float, default=None)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loadgen:
        args.out.write_text(json.dumps(loadgen(args.loadgen, args.port, int(args.concurrency), args.duration,
                                               args.warmup)))
        return 0
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    WORK.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(WORK / "serving_base", ignore_errors=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    model_dir = args.model.resolve() if args.model else train_and_export(WORK / "model")
    loads = [f"start: {load_line()}"]
    floor = measure_floor(model_dir, args.duration)
    expected = None
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    expected = fn(**{k: tf.constant(v) for k, v in row_arrays(1).items()})["probabilities"].numpy()[0]
    print(f"floor: {json.dumps(floor)}", flush=True)
    client = ("h2load" if h2load_available() else "python") if args.client == "auto" else args.client
    only = set(args.only.split(","))
    results = []
    for batching in (False, True):
        kinds = [k for k in ("rest", "grpc") if (k + ("-batching" if batching else "")) in only]
        if not kinds:
            continue
        process, rest_port, grpc_port = start_ours(model_dir, batching, args.workers)
        try:
            check_answers(rest_port, grpc_port, None, expected)
            for kind in kinds:
                port, entrypoint = (rest_port, "REST") if kind == "rest" else (grpc_port, "GRPC")
                for concurrency in concurrencies:
                    failed_before = server_errors(rest_port, entrypoint)
                    result = run_load(kind, port, concurrency, args.duration, args.warmup, client)
                    result["errors"] = max(result["errors"], server_errors(rest_port, entrypoint) - failed_before)
                    result["system"] = f"pipeline serve {kind.upper() if kind == 'rest' else 'gRPC'}" + \
                        (", batching" if batching else "")
                    print(json.dumps({k: v for k, v in result.items() if k != "latencies"}), flush=True)
                    results.append(result)
        finally:
            stop(process)
    loads.append(f"after our runs: {load_line()}")
    if not args.skip_mlflow:
        process, port = start_mlflow(model_dir)
        try:
            check_answers(None, None, port, expected)
            for concurrency in concurrencies:
                result = run_load("mlflow", port, concurrency, args.duration, args.warmup, client)
                result["system"] = "mlflow models serve"
                print(json.dumps({k: v for k, v in result.items() if k != "latencies"}), flush=True)
                results.append(result)
        finally:
            stop(process)
        loads.append(f"after MLflow: {load_line()}")
    section = render(args, floor, results, loads)
    print("\n" + section)
    if args.write_docs:
        write_docs(section)
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
