"""Deployment: a blessed, registered version reaches the serving directory only after it has been served and
checked in a sandbox; the MLflow aliases decide what is served, and ``models.config`` is generated from them.

The steps of :func:`deploy_version`, each of which leaves the served state untouched when it fails:

1. copy the candidate into a hidden temporary directory beside the version directories (same file system) and
   add its warmup requests (``assets.extra/tf_serving_warmup_requests``) and its version number;
2. refuse a serving signature that would break the clients of the champion (unless the config allows it);
3. infra validation: serve the copy alone (our server in a sandbox on free ports, or a real TensorFlow Serving),
   wait until it is AVAILABLE, send REST and gRPC predict requests built from the test split, compare the
   answers with the evaluation stage's predictions and the p99 latency with the budget;
4. publish: one ``rename`` of the temporary directory to ``<model>/<version>``;
5. move the aliases (``champion``/``previous``, or ``challenger`` in canary mode), regenerate ``models.config``
   atomically (labels ``stable`` and ``canary``), then apply retention.

Layout (docs/deployment.md): ``serving/models.config`` and ``serving/<model>/<version>/``.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from pipeline import paths
from pipeline.config import DeployConfig

if TYPE_CHECKING:
    import numpy as np

MODELS_CONFIG = "models.config"
WARMUP_FILE = "tf_serving_warmup_requests"
STABLE, CANARY = "stable", "canary"
SIGNATURE = "serving_default"
TMP_PREFIX = ".deploy-"


class DeployError(RuntimeError):
    """A deployment was refused or failed; nothing was published and the served state is unchanged.

    ``report`` holds what the checks measured before the failure (logged to the deploy stage run)."""

    def __init__(self, message: str, report: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.report = dict(report or {})


# ------------------------------------------------------------------------------------------ on disk
def models_config_path() -> Path:
    """``PIPELINE_HOME/serving/models.config``: what ``pipeline serve`` (and TF Serving) is pointed at."""
    return paths.serving_base() / MODELS_CONFIG


def version_dirs(model_dir: str | Path) -> dict[int, Path]:
    """The complete version directories of a model base path (hidden temporary directories are not)."""
    from pipeline.serving.servable import version_ready

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return {}
    return {int(p.name): p for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir() and version_ready(p)}


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``: a reader sees the old
    file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def copy_to_temp(src: str | Path, model_dir: str | Path, version: int) -> Path:
    """Copy a SavedModel into a fresh hidden directory of ``model_dir`` (servers ignore non-numeric names).

    Raises:
        DeployError: the directory is not writable, or the copy failed part way (the partial copy is removed).
    """
    model_dir = Path(model_dir)
    for stale in model_dir.glob(f"{TMP_PREFIX}{version}-*") if model_dir.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)  # left by a deploy of this version that was killed
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{version}-", dir=model_dir))
    except OSError as exc:
        raise DeployError(f"serving directory {model_dir} is not writable: {exc}") from exc
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    except (OSError, shutil.Error) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DeployError(f"copying {src} into {model_dir} failed part way, nothing was published: {exc}") from exc
    return tmp


def publish(tmp: str | Path, model_dir: str | Path, version: int) -> Path:
    """Rename a validated temporary copy to ``model_dir/<version>``: one atomic step on one file system.

    Raises:
        DeployError: the version directory exists already (versions are immutable once published).
    """
    target = Path(model_dir) / str(int(version))
    if target.exists():
        raise DeployError(f"{target} exists already; a published version is never overwritten")
    try:
        os.rename(tmp, target)
    except OSError as exc:
        raise DeployError(f"could not publish {target}: {exc}") from exc
    return target


def remove_dir(path: str | Path) -> None:
    """Rename a directory to a hidden name first, then delete it: a server never sees it half-deleted."""
    path = Path(path)
    trash = path.parent / f".trash-{path.name}-{uuid.uuid4().hex}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------------------------------- signatures
def serving_signature(version_dir: str | Path) -> dict[str, dict[str, str]]:
    """The ``serving_default`` inputs and outputs of a SavedModel as ``{"inputs": {alias: dtype}, ...}``.

    Raises:
        DeployError: the SavedModel cannot be read or has no ``serving_default`` signature.
    """
    from tensorflow.core.framework import types_pb2

    from pipeline.serving.servable import read_meta_graph

    try:
        signatures = read_meta_graph(Path(version_dir)).signature_def
    except Exception as exc:  # a corrupt saved_model.pb raises protobuf's DecodeError, a missing one OSError
        raise DeployError(f"the SavedModel in {version_dir} cannot be read: {type(exc).__name__}: {exc}") from exc
    if SIGNATURE not in signatures:
        raise DeployError(f"the SavedModel in {version_dir} has no {SIGNATURE!r} signature")
    signature = signatures[SIGNATURE]
    return {part: {alias: types_pb2.DataType.Name(info.dtype) for alias, info in getattr(signature, part).items()}
            for part in ("inputs", "outputs")}


def signature_breaks(current: Mapping[str, Mapping[str, str]], candidate: Mapping[str, Mapping[str, str]]) -> list[str]:
    """How a candidate's signature would break requests written for ``current``.

    TF Serving needs every signature input in a request and nothing else, so an input that is removed, added or
    retyped breaks every client; an output removed or retyped breaks those that read it; a new output is fine.
    """
    problems = []
    old_in, new_in = current["inputs"], candidate["inputs"]
    for name in sorted(set(old_in) - set(new_in)):
        problems.append(f"input {name!r} ({old_in[name]}) was removed")
    for name in sorted(set(new_in) - set(old_in)):
        problems.append(f"input {name!r} ({new_in[name]}) was added: current requests do not send it")
    for name in sorted(set(old_in) & set(new_in)):
        if old_in[name] != new_in[name]:
            problems.append(f"input {name!r} changed type from {old_in[name]} to {new_in[name]}")
    old_out, new_out = current["outputs"], candidate["outputs"]
    for name in sorted(set(old_out) - set(new_out)):
        problems.append(f"output {name!r} ({old_out[name]}) was removed")
    for name in sorted(set(old_out) & set(new_out)):
        if old_out[name] != new_out[name]:
            problems.append(f"output {name!r} changed type from {old_out[name]} to {new_out[name]}")
    return problems


# ------------------------------------------------------------------------------------- models.config
def served_versions(aliases: Mapping[str, int]) -> list[int]:
    return sorted({v for a, v in aliases.items() if a in ("champion", "previous", "challenger") and v is not None})


def render_models_config(existing: str | None, model_name: str, base_path: str | Path, aliases: Mapping[str, int],
                         on_disk: Iterable[int]) -> str:
    """``models.config`` with this model's entry generated from its aliases; other models' entries are kept.

    Policy ``specific`` over champion, previous and challenger; labels ``stable`` (champion) and ``canary``
    (challenger). A version that is not on disk is never named. A model with no version on disk is left out.

    Raises:
        ValueError: ``existing`` is not a valid text-format ModelServerConfig.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    if existing and existing.strip():
        try:
            text_format.Parse(existing, config)
        except text_format.ParseError as exc:
            raise ValueError(f"the existing models.config is not a ModelServerConfig: {exc}") from None
    on_disk = set(on_disk)
    entries = [c for c in config.model_config_list.config if c.name != model_name]
    versions = [v for v in served_versions(aliases) if v in on_disk]
    del config.model_config_list.config[:]
    config.model_config_list.config.extend(entries)
    if versions:
        entry = config.model_config_list.config.add()
        entry.name = model_name
        entry.base_path = str(base_path)
        entry.model_platform = "tensorflow"
        entry.model_version_policy.specific.versions.extend(sorted(versions, reverse=True))
        for label, alias in ((STABLE, "champion"), (CANARY, "challenger")):
            if aliases.get(alias) in on_disk:
                entry.version_labels[label] = aliases[alias]
    config.model_config_list.config.sort(key=lambda c: c.name)
    return ("# Generated by pipeline.deploy from the MLflow registry aliases; edits are overwritten.\n"
            + text_format.MessageToString(config))


def configured_versions(text: str | None, model_name: str) -> set[int]:
    """The versions a ``models.config`` text names for ``model_name`` (policy and labels)."""
    from pipeline.serving.options import parse_model_server_config

    if not text or not text.strip():
        return set()
    for model in parse_model_server_config(text):
        if model.name == model_name:
            return set(model.versions) | {v for _, v in model.labels}
    return set()


def write_models_config(model_name: str, aliases: Mapping[str, int]) -> Path:
    """Regenerate ``serving/models.config`` for ``model_name`` from ``aliases``, atomically."""
    path = models_config_path()
    model_dir = paths.serving_base() / model_name
    existing = path.read_text() if path.is_file() else None
    text = render_models_config(existing, model_name, model_dir, aliases, version_dirs(model_dir))
    if text == existing:
        return path  # unchanged: servers polling the file have nothing to re-read
    try:
        return write_atomic(path, text)
    except OSError as exc:
        raise DeployError(f"could not write {path}: {exc}") from exc


# ----------------------------------------------------------------------------------------- retention
def versions_to_remove(on_disk: Iterable[int], keep: int, protected: Iterable[int]) -> list[int]:
    """Retention: every version but the newest ``keep`` and the ``protected`` ones (aliased or configured)."""
    on_disk = sorted(set(on_disk), reverse=True)
    return sorted(set(on_disk[keep:]) - set(protected))


def apply_retention(model_name: str, keep: int, aliases: Mapping[str, int]) -> list[int]:
    """Delete the version directories retention lets go; returns their versions."""
    model_dir = paths.serving_base() / model_name
    config = models_config_path()
    protected = set(served_versions(aliases)) | configured_versions(
        config.read_text() if config.is_file() else None, model_name)
    removed = []
    for version in versions_to_remove(version_dirs(model_dir), keep, protected):
        remove_dir(model_dir / str(version))
        removed.append(version)
    return removed


# ------------------------------------------------------------------------------------------- warmup
def write_warmup_requests(version_dir: str | Path, model_name: str, inputs: Mapping[str, "np.ndarray"],
                          rows: int) -> Path | None:
    """``assets.extra/tf_serving_warmup_requests``: a TFRecord of ``PredictionLog``s, one single-row
    ``PredictRequest`` per sample row, as TensorFlow Serving (and our server) replay before taking traffic."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    n = min(rows, min((len(v) for v in inputs.values()), default=0))
    if n <= 0:
        return None
    path = Path(version_dir) / "assets.extra" / WARMUP_FILE
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
            request.inputs[key].CopyFrom(tf.make_tensor_proto([str(v).encode() for v in value], tf.string))
        else:
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


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
            "inputs": {k: [str(x) for x in v] if np.asarray(v).dtype.kind in "USO" else np.asarray(v).tolist()
                       for k, v in inputs.items()}}
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


# ------------------------------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SandboxServer:
    """Our server (``python -m pipeline.serving``) on free ports, serving ``base/<model>`` alone, in its own
    process group so that stopping it stops everything it started. Use as a context manager.

    ``poll_s`` > 0 makes it watch ``base/<model>`` for versions, as TensorFlow Serving does: a standby sandbox
    (:func:`start_standby`) is started before there is anything to serve."""

    base: Path
    model_name: str
    rest_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    poll_s: float = 0.0
    own_group: bool = True  # False: in the caller's process group, ended with it (and with the caller: Linux)

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.base / "server.log"

    def start(self) -> "SandboxServer":
        env = paths.child_environ(TF_CPP_MIN_LOG_LEVEL="2")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.serving", "--host", "127.0.0.1", "--port", str(self.grpc_port),
                 "--rest_api_port", str(self.rest_port), "--model_name", self.model_name,
                 "--model_base_path", str(self.base / self.model_name),
                 "--file_system_poll_wait_seconds", str(self.poll_s)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=self.own_group,
                preexec_fn=None if self.own_group else _die_with_parent())
        return self

    def __enter__(self) -> "SandboxServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> str | None:
        """None while running; else why it is not (exit status and the end of its log)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
        return f"the validation server exited with status {self.proc.returncode}:\n{tail}"

    def _signal(self, sig: int) -> None:
        if self.own_group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM, without waiting (:meth:`stop` waits)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self._signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """SIGTERM (to our process group, or the process when it shares the caller's), SIGKILL if it has not
        exited after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self._signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            self.proc.wait(timeout=10)


def _die_with_parent():
    """A ``preexec_fn`` asking Linux to SIGTERM the child when the thread that started it ends, so that a server in
    the caller's process group does not outlive a killed caller; None where there is no ``prctl``.

    The libc function is looked up here, in the parent, so that the child runs no loader code between fork and
    exec. Only for servers started from the main thread before the DAG run starts its threads (``pipeline train``)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# A sandbox started ahead of the deploy stage, per model name, used at most once (see start_standby).
_STANDBY: dict[str, SandboxServer] = {}


def start_standby(model_name: str) -> SandboxServer:
    """Start a sandbox server for ``model_name`` now, watching an empty base path, and offer it to the next
    :func:`validate_serving` of that model in this process.

    ``pipeline train`` runs every task in one process; it calls this before the DAG run starts, so that the
    server imports TensorFlow on the other core while Airflow and the first stages run, and the deploy stage
    renames the candidate into it instead of waiting for a server to start. The caller stops it
    (:func:`stop_standby`); an unused or already used one is never used again.
    """
    base = Path(tempfile.mkdtemp(prefix="deploy-standby-"))
    (base / model_name).mkdir()
    server = SandboxServer(base, model_name, poll_s=0.2, own_group=False).start()
    _STANDBY[model_name] = server
    return server


def stop_standby(server: SandboxServer) -> None:
    """Stop a standby sandbox (used or not) and remove its directory."""
    if _STANDBY.get(server.model_name) is server:
        del _STANDBY[server.model_name]
    server.stop()
    shutil.rmtree(server.base, ignore_errors=True)


def _take_standby(model_name: str) -> SandboxServer | None:
    server = _STANDBY.pop(model_name, None)
    return server if server is not None and server.alive() is None else None


class _StandbyUse:
    """The candidate renamed into a standby sandbox for one validation; the server is told to stop afterwards
    (its owner waits for it)."""

    def __init__(self, server: SandboxServer, candidate: Path, version: int):
        self.server = server
        incoming = server.base / f".incoming-{uuid.uuid4().hex[:8]}"
        shutil.copytree(candidate, incoming)
        incoming.rename(server.base / server.model_name / str(version))  # appears whole to the server's poll

    def __enter__(self) -> SandboxServer:
        return self.server

    def __exit__(self, *exc) -> None:
        self.server.terminate()


@dataclass
class RemoteServer:
    """A real TensorFlow Serving polling ``model_base_path``: the candidate is renamed into it for the checks
    and removed afterwards."""

    rest_url: str
    grpc_target: str | None
    model_base_path: Path
    model_name: str
    version: int
    source: Path
    placed: Path | None = None

    def __enter__(self) -> "RemoteServer":
        tmp = copy_to_temp(self.source, self.model_base_path, self.version)
        self.placed = publish(tmp, self.model_base_path, self.version)
        return self

    def __exit__(self, *exc) -> None:
        if self.placed is not None and self.placed.exists():
            remove_dir(self.placed)

    def alive(self) -> str | None:
        return None


def wait_available(server, model_name: str, version: int, timeout_s: float) -> None:
    """Poll the model status endpoint until the version is AVAILABLE.

    Raises:
        DeployError: the version ended in an error (the server's message), the server died, or the timeout.
    """
    import requests

    deadline = time.monotonic() + timeout_s
    url = f"{server.rest_url}/v1/models/{model_name}/versions/{version}"
    last = "no answer"
    while time.monotonic() < deadline:
        dead = server.alive()
        if dead:
            raise DeployError(dead)
        try:
            response = requests.get(url, timeout=5)
            statuses = response.json().get("model_version_status", []) if response.status_code == 200 else []
            for status in statuses:
                if status.get("state") == "AVAILABLE":
                    return
                if status.get("state") == "END":
                    error = status.get("status", {})
                    raise DeployError(f"the candidate failed to load in the validation server: "
                                      f"{error.get('error_code', '')}: {error.get('error_message', '')}")
            last = f"{response.status_code} {response.text[:200]}"
        except (requests.RequestException, ValueError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise DeployError(f"version {version} was not AVAILABLE after {timeout_s:.0f} s (last answer: {last})")


# ------------------------------------------------------------------------------------ infra validation
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


# ------------------------------------------------------------------------------------ the deploy step
@dataclass(frozen=True)
class Candidate:
    """A registered, blessed version ready to deploy, with the evaluation's inputs and answers to check it on."""

    model_name: str
    version: int
    source: Path  # a verified SavedModel (the export's staging copy or the registry's artifact)
    inputs: Mapping[str, Any]  # the test split as signature inputs
    expected: Any  # the evaluation stage's predictions on those rows
    metadata: Mapping[str, Any] = field(default_factory=dict)


def candidate_from_export(model_name: str, version: int, source: str | Path) -> Candidate:
    """The candidate of a SavedModel written by the export stage: its lineage file names the test split and
    the DAG run whose evaluation predictions (``runs/<run>/evaluate/predictions.npy``) it must reproduce.

    Raises:
        DeployError: the lineage file, the test split or the predictions are missing.
    """
    import numpy as np
    import pandas as pd

    from pipeline.export import read_metadata
    from pipeline.features import FeatureSpec
    from pipeline.preprocess import feature_arrays, label_strings

    source = Path(source)
    try:
        meta = read_metadata(source)
        test = pd.read_parquet(meta["test_split"])
        expected = np.load(paths.run_dir(meta["dag_run_id"]) / "evaluate" / "predictions.npy")
    except (OSError, KeyError, ValueError) as exc:
        raise DeployError(f"cannot find what version {version} was evaluated on ({type(exc).__name__}: {exc}); "
                          f"infra validation needs its test split and the evaluation's predictions") from exc
    spec = FeatureSpec(tuple(meta["features"]["numeric"]), tuple(meta["features"]["categorical"]), meta["label"],
                       meta["task"])
    if spec.task == "classification":  # the evaluation scores only classes seen in training
        known = {str(c) for c in meta.get("class_names") or []}
        test = test[[v in known for v in label_strings(test[spec.label])]].reset_index(drop=True)
    if len(test) != len(expected):
        raise DeployError(f"the test split has {len(test)} scored rows but the evaluation saved {len(expected)} "
                          f"predictions")
    return Candidate(model_name, int(version), source, feature_arrays(test, spec), expected, meta)


def actor() -> str:
    """Who is acting: the Airflow run when inside a task, else the user and host of the command."""
    run = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
    if run:
        return f"airflow:{os.environ.get('AIRFLOW_CTX_DAG_ID', '')}/{run}"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_aliases(current: Mapping[str, int], version: int, canary: bool) -> dict[str, int | None]:
    """The served aliases after deploying ``version``: the champion with the former one as ``previous``, or
    (canary) the ``challenger``, replacing an earlier challenger."""
    if canary:
        return {**current, "challenger": version}
    out: dict[str, int | None] = {**current, "champion": version, "challenger": None}
    if current.get("champion") not in (None, version):
        out["previous"] = current["champion"]
    if current.get("challenger") == version:
        out["challenger"] = None
    return out


def move_aliases(model_name: str, target: Mapping[str, int | None], *, action: str, reason: str,
                 by: str | None = None, keep_versions: int | None = None) -> dict[str, Any]:
    """Point the served aliases at ``target``, regenerate ``models.config`` and apply retention.

    ``models.config`` is written first from the aliases-to-be (it only ever names versions on disk); the
    registry follows; should that fail, the file is regenerated from the registry as it is.
    """
    from pipeline import registry

    by = by or actor()
    current = registry.served_aliases(model_name)
    after = {a: v for a, v in {**current, **target}.items() if v is not None}
    model_dir = paths.serving_base() / model_name
    missing = {a: v for a, v in after.items() if a != "previous" and v not in version_dirs(model_dir)}
    if missing:
        raise DeployError(f"cannot point {', '.join(f'{a}→v{v}' for a, v in missing.items())}: not in {model_dir}")
    config = write_models_config(model_name, after)
    try:
        registry.set_aliases(model_name, {a: target[a] for a in target})
    except Exception:
        write_models_config(model_name, registry.served_aliases(model_name))
        raise
    moved = {a: v for a, v in after.items() if current.get(a) != v}
    for alias, version in moved.items():
        registry.record_event(model_name, version, {"action": action, "alias": alias, "by": by, "at": _now(),
                                                    "reason": reason})
    removed = apply_retention(model_name, keep_versions, after) if keep_versions else []
    return {"aliases": after, "moved": moved, "models_config": str(config), "removed_versions": removed}


def deploy_version(candidate: Candidate, cfg: DeployConfig, *, blessed: bool, reason: str = "",
                   by: str | None = None) -> dict[str, Any]:
    """Validate ``candidate`` and publish it, then move the aliases (see the module docstring).

    Idempotent: a version already published by this same deployment (a retried task) is not validated or
    copied again; the aliases and ``models.config`` are brought in line.

    Returns:
        The report: the checks' measurements, ``published`` (path), ``aliases``, ``moved``, ``removed_versions``.
    Raises:
        DeployError: not blessed, unreadable, a breaking signature, a failed check, an unwritable directory.
    """
    from pipeline import registry
    from pipeline.export import METADATA_FILE

    name, version = candidate.model_name, candidate.version
    if not blessed:
        raise DeployError(f"{name} version {version} is not blessed by the evaluation gate; only blessed versions deploy")
    model_dir = paths.serving_base() / name
    target = model_dir / str(version)
    report: dict[str, Any] = {"model_name": name, "version": version}
    if target.exists():
        if version not in version_dirs(model_dir):
            raise DeployError(f"{target} exists but is not a complete SavedModel; remove it and deploy again")
        report["published"] = str(target)
        report["already_published"] = True
    else:
        tmp = copy_to_temp(candidate.source, model_dir, version)
        try:
            meta_file = tmp / "assets.extra" / METADATA_FILE
            if meta_file.is_file():
                meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "version": version}, indent=2))
            write_warmup_requests(tmp, name, candidate.inputs, cfg.warmup_rows)
            signature = serving_signature(tmp)
            champion = registry.served_aliases(name).get("champion")
            if champion is not None and champion != version:
                champion_dir = registry.saved_model_dir(name, champion)
                breaks = signature_breaks(serving_signature(champion_dir), signature) if champion_dir else []
                report["signature_changes"] = breaks
                if breaks and not cfg.allow_signature_change:
                    raise DeployError(f"the serving signature of version {version} would break clients of the champion "
                                      f"(version {champion}): {'; '.join(breaks)} (set deploy.allow_signature_change "
                                      f"to deploy it anyway)", report)
            report.update(validate_serving(tmp, name, version, candidate.inputs, candidate.expected, cfg))
            report["published"] = str(publish(tmp, model_dir, version))
        except DeployError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DeployError(str(exc), {**report, **exc.report}) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    canary = cfg.canary and cfg.promotion_rule == "manual"
    current = registry.served_aliases(name)
    already = current.get("challenger" if canary else "champion") == version
    try:
        moved = move_aliases(name, {} if already else new_aliases(current, version, canary),
                             action="deploy", reason=reason, by=by, keep_versions=cfg.keep_versions)
    except BaseException:
        if not report.get("already_published") and not already:  # unpublish: the aliases never moved
            remove_dir(target)
            report.pop("published", None)
        raise
    report.update(moved)
    report["label"] = CANARY if canary else STABLE
    return report


def promote(model_name: str, cfg: DeployConfig, reason: str = "", by: str | None = None) -> dict[str, Any]:
    """Canary → stable: the challenger becomes champion, the champion previous.

    Raises:
        DeployError: there is no challenger.
    """
    from pipeline import registry

    current = registry.served_aliases(model_name)
    challenger = current.get("challenger")
    if challenger is None:
        raise DeployError(f"{model_name} has no challenger to promote (deploy with deploy.canary: true first)")
    target = {"champion": challenger, "challenger": None}
    if current.get("champion") not in (None, challenger):
        target["previous"] = current["champion"]
    return move_aliases(model_name, target, action="promote", reason=reason or "canary promoted to stable", by=by,
                        keep_versions=cfg.keep_versions)


def rollback(model_name: str, cfg: DeployConfig, to: int | None = None, reason: str = "",
             by: str | None = None) -> dict[str, Any]:
    """Move ``champion`` back to ``to`` (default: ``previous``); the version rolled back from becomes
    ``previous``, so it stays loaded and the label switch is a single step for a running server.

    Raises:
        DeployError: nothing to roll back to, the target was never blessed, or it is no longer on disk.
    """
    from pipeline import registry

    current = registry.served_aliases(model_name)
    champion = current.get("champion")
    target = to if to is not None else current.get("previous")
    if target is None:
        raise DeployError(f"{model_name} has no previous version to roll back to (use --to VERSION)")
    if target == champion:
        raise DeployError(f"version {target} of {model_name} is the champion already")
    mv = registry.client().get_model_version(model_name, str(target))
    if mv.tags.get("blessed") != "true":
        raise DeployError(f"version {target} of {model_name} was never blessed; it cannot become the champion")
    if target not in version_dirs(paths.serving_base() / model_name):
        raise DeployError(f"version {target} of {model_name} is not on disk (removed by retention?); "
                          f"deploy it again with `pipeline deploy --version {target}`")
    aliases = {"champion": target, "previous": champion}
    if current.get("challenger") == target:
        aliases["challenger"] = None
    return move_aliases(model_name, aliases, action="rollback",
                        reason=reason or f"rolled back from version {champion}", by=by, keep_versions=None)


# ------------------------------------------------------------------------------------ with MLflow
def run_deploy_stage(cfg: DeployConfig, parent_run_id: str, model_name: str, version: int,
                     source: str | Path | None, *, blessed: bool, reason: str, by: str | None = None) -> dict[str, Any]:
    """The deploy stage inside its nested MLflow run ``deploy`` (the same run again on a retry or a later
    ``pipeline deploy``): settings and outcome as tags, the checks' measurements as metrics and
    ``deploy_report.json``; a failure's reason is the run's ``pipeline.error`` tag. Finishes the parent run.

    Raises:
        DeployError: the deployment failed (after recording why).
    """
    import mlflow

    from pipeline import registry, tracking

    with tracking.stage_run(parent_run_id, "deploy") as run:
        mlflow.set_tags({"model_version": str(version), "deploy.canary": str(cfg.canary).lower(),
                         "deploy.promotion_rule": cfg.promotion_rule, "deploy.by": by or actor()})
        if not blessed:
            mlflow.set_tags({"deployed": "false", "deploy.reason": "not blessed by the evaluation gate"})
            result = {"model_name": model_name, "version": version, "deployed": False,
                      "reason": "not blessed by the evaluation gate"}
        else:
            try:
                if source is None:
                    raise DeployError(f"no SavedModel of {model_name} version {version} on disk or in MLflow")
                report = deploy_version(candidate_from_export(model_name, version, source), cfg, blessed=True,
                                        reason=reason, by=by)
            except DeployError as exc:
                _log_report(exc.report)
                mlflow.set_tag("deployed", "false")
                raise
            _log_report(report)
            mlflow.set_tags({"deployed": "true", "deploy.label": report["label"]})
            registry.client().set_model_version_tag(model_name, str(version), "deploy.run_id", run.info.run_id)
            result = {"model_name": model_name, "version": version, "deployed": True,
                      "published": report["published"], "label": report["label"], "aliases": report["aliases"],
                      "removed_versions": report["removed_versions"]}
    tracking.finish_parent(parent_run_id)
    return result


def _log_report(report: Mapping[str, Any]) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in report.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "version"})
    mlflow.log_dict(dict(report), "deploy_report.json")
