"""The servers a candidate is checked on: our server in a sandbox on free ports (:class:`SandboxServer`), one
started ahead of the deploy stage (:func:`start_standby`), or a real TensorFlow Serving (:class:`RemoteServer`);
and :func:`wait_available`."""
from __future__ import annotations

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
from pathlib import Path

from pipeline import paths
from pipeline.deploy.errors import DeployError
from pipeline.deploy.layout import copy_to_temp, publish, remove_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# How long a sandbox server gets to exit after SIGTERM before SIGKILL: to finish the requests in flight, or (after
# SIGINT or SIGTERM stopped the caller: nothing is waiting for their answers) to exit at all. A server signalled
# while it was still starting has been seen not to exit on SIGTERM (pipeline.serving.server), which the short
# wait bounds.
STOP_S = 30.0
INTERRUPTED_STOP_S = 1.0


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

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop(INTERRUPTED_STOP_S if isinstance(exc, KeyboardInterrupt) else STOP_S)

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

    def stop(self, timeout_s: float = STOP_S) -> None:
        """SIGTERM (to our process group, or the process when it shares the caller's), SIGKILL if it has not
        exited after ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self._signal(signal.SIGTERM)
            self.proc.wait(timeout=timeout_s)
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


def stop_standby(server: SandboxServer, timeout_s: float = STOP_S) -> None:
    """Stop a standby sandbox (used or not; SIGKILL after ``timeout_s``) and remove its directory."""
    if _STANDBY.get(server.model_name) is server:
        del _STANDBY[server.model_name]
    server.stop(timeout_s)
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

