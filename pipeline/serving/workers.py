"""``--workers N``: N server processes on the same REST and gRPC ports, supervised by the process started.

One Python process runs one model call's Python at a time (the GIL), so on its own it uses about one core;
TensorFlow Serving uses every core with C++ threads, Python servers (gunicorn, uvicorn) with processes. With
``--workers N`` the process started is a supervisor that loads no model: it checks that the ports are free,
keeps them reserved, and starts N workers, each a full server (``python -m pipeline.serving`` with the same
flags) that loads the models and binds both ports with ``SO_REUSEPORT``, so that the kernel spreads new
connections over them. The supervisor

- restarts a worker that dies after it started serving (a worker that fails while starting stops them all: a
  bad flag or model would fail every restart), waiting longer between restarts of a worker that keeps dying;
- forwards SIGTERM/SIGINT to the workers (each finishes its requests in flight, as a single server does) and
  exits when they all have; a second signal is forwarded too and stops them at once;
- owns a temporary directory, removed on exit (or by the next supervisor, if this one was killed), holding the Prometheus files of every worker
  (``prometheus_client``'s multiprocess mode: any worker's metrics endpoint shows the sums over all workers)
  and the ``HandleReloadConfigRequest`` configs passed between workers (:class:`ConfigBroadcast`).

A worker notices the supervisor's end (even a SIGKILL) through a pipe that reaches end-of-file, and stops.
Everything else is per worker: each polls the model base paths and ``models.config``, keeps its own versions,
batcher and request log file (named with its pid).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("pipeline.serving")

ENV_INDEX = "PIPELINE_SERVING_WORKER"  # "<index>/<count>" in a worker
ENV_STATE = "PIPELINE_SERVING_STATE_DIR"
ENV_LIFELINE = "PIPELINE_SERVING_LIFELINE_FD"  # read end of a pipe the supervisor holds open
ENV_READY = "PIPELINE_SERVING_READY_FD"  # write end: one byte once the worker serves
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable
STATE_PREFIX = "pipeline-serve-"  # + "<supervisor pid>-<random>" under the temporary directory

RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # for a worker that dies again within STABLE_S
STABLE_S = 30.0
POLL_S = 0.1


@dataclass(frozen=True)
class Worker:
    """What a worker process knows about its place among the supervisor's workers."""

    index: int
    count: int
    state_dir: Path
    lifeline_fd: int | None
    ready_fd: int | None

    def notify_ready(self) -> None:
        """Tell the supervisor that both ports are served."""
        if self.ready_fd is not None:
            try:
                os.write(self.ready_fd, b"R")
                os.close(self.ready_fd)
            except OSError:
                pass


def current_worker() -> Worker | None:
    """This process's place among the workers, or None when it is not a supervised worker."""
    text = os.environ.get(ENV_INDEX)
    if not text:
        return None
    index, count = (int(part) for part in text.split("/"))

    def fd(name: str) -> int | None:
        value = os.environ.get(name)
        return int(value) if value else None

    return Worker(index, count, Path(os.environ[ENV_STATE]), fd(ENV_LIFELINE), fd(ENV_READY))


def listen_socket(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A listening TCP socket on ``host:port`` that the other workers share (``SO_REUSEPORT``)."""
    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """Check that nobody listens on ``host:port``, then hold it (bound, not listening) for the workers.

    The first bind is without ``SO_REUSEPORT``, so a port another server holds, even one sharing it with
    ``SO_REUSEPORT``, is an error here instead of being shared. The socket kept is bound with ``SO_REUSEPORT``:
    only processes of this user that ask to share can bind the port while it is held, and a bound socket that
    does not listen is given no connections.

    Raises:
        OSError: the port is in use.
    """
    family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
    held = socket.socket(family, kind, proto)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(address)
    return held


# ------------------------------------------------------------------------------------------- supervisor
class _Child:
    def __init__(self, index: int):
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.ready_fd: int | None = None
        self.ready = False
        self.started = 0.0
        self.failures = 0  # quick deaths in a row
        self.restart_at: float | None = None
        self.served = False  # has served once: a failed start is then retried, not fatal


def supervise(host: str, ports: list[int], count: int, argv: list[str]) -> int:
    """Run ``count`` workers on ``ports`` of ``host`` until SIGTERM/SIGINT; returns the exit code.

    Args:
        argv: the server's own command line; each worker gets it with ``--workers 1`` appended.
    """
    held = []
    try:
        for port in ports:
            held.append(reserve_port(host, port))
    except OSError as exc:
        for sock in held:
            sock.close()
        log.error("cannot start: %s:%s: %s", host, port, exc.strerror or exc)
        return 1
    remove_stale_state_dirs()
    state_dir = Path(tempfile.mkdtemp(prefix=f"{STATE_PREFIX}{os.getpid()}-"))
    (state_dir / "metrics").mkdir()
    lifeline_r, lifeline_w = os.pipe()
    signals: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, _frame: signals.append(number))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    children = [_Child(i) for i in range(count)]
    code = 0
    try:
        for child in children:
            _spawn(child, count, argv, state_dir, lifeline_r)
        log.info("supervising %d workers (pids %s)", count, ", ".join(str(c.proc.pid) for c in children))
        forwarded = 0
        while True:
            while len(signals) > forwarded:  # every signal goes to every worker, the second one too
                sig = signals[forwarded]
                forwarded += 1
                if forwarded == 1:
                    log.info("stopping %d workers", count)
                for child in children:
                    if child.proc is not None and child.proc.poll() is None:
                        _signal(child.proc, sig)
            stopping = forwarded > 0
            for child in children:
                _check_ready(child)
                if child.proc is None:
                    if not stopping and child.restart_at is not None and time.monotonic() >= child.restart_at:
                        _spawn(child, count, argv, state_dir, lifeline_r)
                    continue
                status = child.proc.poll()
                if status is None:
                    continue
                _close_ready(child)
                pid, child.proc = child.proc.pid, None
                if stopping:
                    code = max(code, 0 if status == 0 else 1)
                    continue
                if not child.served:
                    log.error("worker %d (pid %d) exited with %s while starting; stopping", child.index, pid, status)
                    code = status if status and status > 0 else 1
                    signals.append(signal.SIGTERM)
                    continue
                child.failures = child.failures + 1 if time.monotonic() - child.started < STABLE_S else 1
                delay = RESTART_DELAYS_S[min(child.failures, len(RESTART_DELAYS_S)) - 1]
                log.warning("worker %d (pid %d) exited with %s; restarting it in %.0f s", child.index, pid, status,
                            delay)
                child.restart_at = time.monotonic() + delay
            if stopping and all(child.proc is None for child in children):
                return code
            time.sleep(POLL_S)
    finally:
        for child in children:  # only on an error of our own: never leave a worker behind
            if child.proc is not None and child.proc.poll() is None:
                _signal(child.proc, signal.SIGKILL)
                child.proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(lifeline_w)
        os.close(lifeline_r)
        for sock in held:
            sock.close()
        shutil.rmtree(state_dir, ignore_errors=True)


def remove_stale_state_dirs(root: Path | None = None) -> list[Path]:
    """Remove the state directories of supervisors that are gone (killed before they could remove their own);
    returns them. A directory is named after its supervisor's pid."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{STATE_PREFIX}*-*"):
        pid = path.name[len(STATE_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not path.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its supervisor (or a process that took its pid) is alive: keep it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _spawn(child: _Child, count: int, argv: list[str], state_dir: Path, lifeline_r: int) -> None:
    ready_r, ready_w = os.pipe()
    env = {**os.environ, ENV_INDEX: f"{child.index}/{count}", ENV_STATE: str(state_dir),
           ENV_LIFELINE: str(lifeline_r), ENV_READY: str(ready_w), METRICS_ENV: str(state_dir / "metrics")}
    try:
        child.proc = subprocess.Popen([sys.executable, "-m", "pipeline.serving", *argv, "--workers", "1"], env=env,
                                      pass_fds=(lifeline_r, ready_w), start_new_session=True)
    finally:
        os.close(ready_w)
    os.set_blocking(ready_r, False)
    child.ready_fd, child.ready, child.started, child.restart_at = ready_r, False, time.monotonic(), None


def _check_ready(child: _Child) -> None:
    if child.ready_fd is None or child.ready:
        return
    try:
        data = os.read(child.ready_fd, 1)
    except BlockingIOError:
        return
    if data:
        child.ready = child.served = True
        log.info("worker %d (pid %d) serving", child.index, child.proc.pid if child.proc else -1)
    _close_ready(child)


def _close_ready(child: _Child) -> None:
    if child.ready_fd is not None:
        os.close(child.ready_fd)
        child.ready_fd = None


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------------ config broadcast
class ConfigBroadcast:
    """``HandleReloadConfigRequest`` for every worker, not only the one the call reached.

    The worker that gets the call applies the config (its errors are the call's), writes it to the shared state
    directory, and waits until every worker has applied it: each worker looks for a new config every ``poll_s``,
    applies it and writes an acknowledgement. A worker started later (a restart) starts from the last config
    written, so a reload is not lost with a worker.
    """

    def __init__(self, worker: Worker, poll_s: float = 0.2):
        self.worker = worker
        self.poll_s = poll_s
        self.directory = worker.state_dir / "reload"
        self.directory.mkdir(exist_ok=True)
        self._config = self.directory / "config.pb"
        self.applied = ""  # digest of the last config this worker applied

    @staticmethod
    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    def latest(self) -> bytes | None:
        """The last config any worker wrote, serialized, or None."""
        try:
            return self._config.read_bytes()
        except FileNotFoundError:
            return None

    def publish(self, data: bytes, timeout_s: float | None) -> list[int]:
        """Write a config this worker has applied; wait for the others. Returns the workers that did not
        acknowledge it within ``timeout_s`` (default 30 s)."""
        self.applied = self.digest(data)
        self.acknowledge(self.applied)
        tmp = self.directory / f".config.{os.getpid()}"
        tmp.write_bytes(data)
        os.replace(tmp, self._config)
        deadline = time.monotonic() + (30.0 if timeout_s is None else min(timeout_s, 30.0))
        waiting = [i for i in range(self.worker.count) if i != self.worker.index]
        while waiting and time.monotonic() < deadline:
            time.sleep(0.02)
            waiting = [i for i in waiting if self._ack(i) != self.applied]
        return waiting

    def acknowledge(self, digest: str, error: str = "") -> None:
        path = self.directory / f"ack-{self.worker.index}"
        tmp = self.directory / f".ack-{self.worker.index}.{os.getpid()}"
        tmp.write_text(digest if not error else f"{digest} {error}")
        os.replace(tmp, path)

    def _ack(self, index: int) -> str:
        try:
            return (self.directory / f"ack-{index}").read_text().split(" ", 1)[0]
        except FileNotFoundError:
            return ""

    def pending(self) -> bytes | None:
        """A config written by another worker that this one has not applied yet."""
        data = self.latest()
        if data is None or self.digest(data) == self.applied:
            return None
        return data
