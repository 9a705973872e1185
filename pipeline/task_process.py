"""A stage's task in a process of its own when ``pipeline train`` runs every task of a DAG run in one process
(``execution.task_processes: own``; the default, ``shared``, keeps them in that process).

Airflow's executors (Celery, local) start a process per task; ``pipeline train`` runs the DAG through
``dag.test``, which runs every task in that one process: TensorFlow is imported once, and a stage that crashes
the interpreter (a segfault in a custom op, the out-of-memory killer) ends the whole command. With ``own`` the
TensorFlow stages (:data:`STAGES`) run in a child (``python -m pipeline.task_process SPEC``): the same task
function, called with the same params, context and upstream references, in the same MLflow run (tagged with
the child's pid, :data:`PID_TAG`). The parent waits: the task's result comes back as JSON, its exception pickled
(raised again here, the same type: the DAG file's handling of bad input and refused candidates is unchanged),
its progress events through a pipe (the live view's epochs). A child that dies fails its task with its exit
status named, and Airflow retries it as any failed task. Each child's memory is the operating system's again
when it exits; while it runs the child holds its own TensorFlow (~700 MB resident) beside the parent's Airflow
(~800 MB), which is why it is not the default (measured in docs/benchmarks.md, "Data bigger than memory").

A signal that stops the parent (``pipeline train``'s SIGINT/SIGTERM handling) stops the child first: SIGTERM,
then SIGKILL after :data:`STOP_S`. The child ignores SIGINT (a Ctrl-C reaches the whole process group; the parent
decides).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping

STAGES = frozenset({"preprocess", "train", "evaluate", "export", "deploy"})  # the ones that import TensorFlow
SHARED_ENV = "PIPELINE_SHARED_TASK_PROCESS"  # set by pipeline train: this process runs every task of the DAG run
CHILD_ENV = "PIPELINE_TASK_PROCESS"          # set in a task process: its task runs here, not in another child
STOP_S = 30.0
PID_TAG = "pipeline.task_process_pid"     # on the stage's MLflow run: the child process that ran it


def in_child() -> bool:
    """Whether this process is a task process (:func:`main`)."""
    return bool(os.environ.get(CHILD_ENV))


class TaskProcessError(RuntimeError):
    """The task's process ended without a result: killed, or its exception could not be sent back."""


def wanted(stage: str, mode: str) -> bool:
    """Whether ``stage`` runs in a child process: a TensorFlow stage, ``mode`` (``execution.task_processes``)
    ``own``, in a process that runs every task of the DAG run (:data:`SHARED_ENV`; a worker's process per task
    is one already), never inside a task process itself."""
    return stage in STAGES and mode == "own" and bool(os.environ.get(SHARED_ENV)) and not in_child()


def run(task: Callable[..., dict[str, Any]], params: Mapping[str, Any], ctx: Any, upstream: tuple,
        kw: Mapping[str, Any]) -> dict[str, Any]:
    """Call ``task(params, ctx, *upstream, **kw)`` (a module-level task function of ``pipeline.tasks``) in a
    child process and return its result, or raise its exception."""
    from pipeline import paths, progress

    with tempfile.TemporaryDirectory(prefix=f"task-{getattr(task, 'stage', task.__name__)}-") as tmp:
        tmp = Path(tmp)
        spec = {"module": task.__module__, "name": task.__name__, "params": dict(params or {}),
                "ctx": asdict(ctx), "upstream": list(upstream), "kw": dict(kw),
                "result": str(tmp / "result.json"), "error": str(tmp / "error.pickle")}
        (tmp / "spec.json").write_text(json.dumps(spec, default=str))
        read_end, write_end = os.pipe()
        env = paths.child_environ(**{CHILD_ENV: "1", "PIPELINE_TASK_EVENTS_FD": str(write_end)})
        try:
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.task_process", str(tmp / "spec.json")],
                                    env=env, pass_fds=(write_end,))
        finally:
            os.close(write_end)
        relay = threading.Thread(target=_relay_events, args=(read_end, progress.emit), daemon=True)
        relay.start()
        try:
            rc = None
            while rc is None:  # short waits: a signal's exception is raised here within half a second
                try:
                    rc = proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
        except BaseException:
            stop(proc)
            raise
        finally:
            relay.join(timeout=5)
        result, error = Path(spec["result"]), Path(spec["error"])
        if rc == 0 and result.is_file():
            return json.loads(result.read_text())
        if error.is_file():
            raise _exception(error.read_bytes())
        how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
        hint = " (the out-of-memory killer sends SIGKILL)" if rc == -signal.SIGKILL else ""
        raise TaskProcessError(f"{spec['name']}: its task process {how}{hint} without a result")


def stop(proc: subprocess.Popen, timeout_s: float = STOP_S) -> None:
    """SIGTERM ``proc``, SIGKILL it if it is still running after ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _relay_events(fd: int, emit: Callable[..., None]) -> None:
    """The child's progress events (one JSON object a line) emitted here, until the child closes its end."""
    with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as stream:
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            event.pop("time", None)
            kind = event.pop("kind", None)
            if kind:
                emit(kind, **event)


def _exception(payload: bytes) -> BaseException:
    try:
        exc = pickle.loads(payload)
    except Exception as unpickling:  # a class this process cannot rebuild: its text still says what happened
        return TaskProcessError(f"the task's exception could not be read back: {unpickling}")
    return exc if isinstance(exc, BaseException) else TaskProcessError(repr(exc))


def _events_sink(fd: int) -> Callable[[dict], None]:
    stream = os.fdopen(fd, "w", encoding="utf-8", buffering=1)
    lock = threading.Lock()

    def sink(event: dict) -> None:
        with lock:
            try:
                stream.write(json.dumps(event, default=str) + "\n")
            except (OSError, ValueError):
                pass  # the parent is gone: nothing to show the events to

    return sink


def main(spec_path: str) -> int:
    """The child: run the task the spec names, write its result (or its pickled exception)."""
    from pipeline import progress
    from pipeline.tasks import RunContext

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides, and SIGTERMs this process
    spec = json.loads(Path(spec_path).read_text())
    fd = os.environ.pop("PIPELINE_TASK_EVENTS_FD", None)
    task = getattr(importlib.import_module(spec["module"]), spec["name"])
    with progress.attached(_events_sink(int(fd))) if fd else contextlib.nullcontext():
        try:
            result = task(spec["params"], RunContext(**spec["ctx"]), *spec["upstream"], **spec["kw"])
        except BaseException as exc:
            traceback.print_exc()
            try:
                payload = pickle.dumps(exc)
                pickle.loads(payload)
            except Exception:
                payload = pickle.dumps(TaskProcessError("".join(traceback.format_exception_only(exc)).strip()))
            Path(spec["error"]).write_bytes(payload)
            return 1
    from pipeline.atomic import write_json_atomic

    write_json_atomic(Path(spec["result"]), result, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
