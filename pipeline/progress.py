"""Live progress of a DAG run in this process, for the command line: task states and training epochs as events.

Sources: an Airflow listener (``airflow.sdk.listener``'s public listener manager: ``on_task_instance_running``,
``..._success``, ``..._failed``, ``..._skipped``) and a Keras callback on the fit. Both only call :func:`emit`;
nothing is recorded when no view is attached (a task run by a Celery worker or the scheduler emits to nobody).

:class:`LiveView` draws them: on a terminal one line per task (state and duration) and a bar for the epochs with
the loss and the validation metric, redrawn in place (``rich``); elsewhere plain lines, one per task state and
one per epoch, and why the run is stopping when SIGINT or SIGTERM stopped it (an ``interrupted`` event,
``pipeline.commands.stopping.stop_on_signals``). :func:`captured_output` sends everything else this process and
its children write (Airflow's, MLflow's and TensorFlow's logs) to a file while the view has the terminal.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

Event = dict[str, Any]
_SINKS: list[Callable[[Event], None]] = []
_LOCK = threading.Lock()


def emit(kind: str, **fields: Any) -> None:
    """Send an event to the attached views (none: nothing happens)."""
    if not _SINKS:
        return
    event = {"kind": kind, "time": time.monotonic(), **fields}
    for sink in list(_SINKS):
        sink(event)


@contextlib.contextmanager
def attached(sink: Callable[[Event], None]) -> Iterator[None]:
    """Deliver events to ``sink`` inside the block. Airflow's task events arrive once :func:`watch_airflow_tasks`
    has been called (after the Airflow environment is set up: importing Airflow earlier would read its
    configuration before it)."""
    with _LOCK:
        _SINKS.append(sink)
    try:
        yield
    finally:
        with _LOCK:
            _SINKS.remove(sink)


class _TaskListener:
    """Airflow task-instance hooks -> ``task`` events, and each task's outcome kept for :func:`task_outcomes`.
    Registered once per process (the listener manager keeps it); with no view attached, :func:`emit` drops the
    events."""

    def _emit(self, task_instance, state: str, error: Any = None) -> None:
        task_id = getattr(task_instance, "task_id", "?")
        error_text = None if error is None else _error_text(error)
        if state == "failed" and str(getattr(task_instance, "state", "")).endswith("up_for_retry"):
            state = "up_for_retry"
        outcome: dict[str, Any] = {"state": state, "error": error_text}
        if state == "success":
            try:  # the return value, pushed to XCom before the success hook runs
                outcome["result"] = task_instance.xcom_pull(task_ids=task_id)
            except Exception as exc:  # noqa: BLE001 - a summary without this task's result, not a failed task
                outcome["result_error"] = _error_text(exc)
        key = (getattr(task_instance, "dag_id", "?"), getattr(task_instance, "run_id", "?"))
        with _LOCK:
            _OUTCOMES.setdefault(key, {})[task_id] = outcome
        emit("task", task=task_id, state=state, error=error_text)


# (dag_id, run_id) -> task_id -> {"state", "error", "result"}: what the tasks run in this process ended with.
_OUTCOMES: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}


def task_outcomes(dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
    """How each task of a DAG run run in this process ended, in the order they started: ``state`` (``success``,
    ``failed``, ``up_for_retry``, ``skipped``, ``running`` while it runs), ``error`` (the failure's text) and,
    after a success, ``result`` (its return value). Tasks that never ran (upstream failed) are absent."""
    with _LOCK:
        return {task: dict(outcome) for task, outcome in _OUTCOMES.get((dag_id, run_id), {}).items()}


_LISTENER: _TaskListener | None = None


def _error_text(error: Any) -> str:
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return str(error)


def watch_airflow_tasks() -> _TaskListener | None:
    """Register the task listener with Airflow's task-side listener manager (once); None without Airflow."""
    global _LISTENER
    try:
        from airflow.listeners import hookimpl
        from airflow.sdk.listener import get_listener_manager
    except ImportError:
        return None
    if _LISTENER is None:
        class Hooks(_TaskListener):
            @hookimpl
            def on_task_instance_running(self, previous_state, task_instance):
                self._emit(task_instance, "running")

            @hookimpl
            def on_task_instance_success(self, previous_state, task_instance):
                self._emit(task_instance, "success")

            @hookimpl
            def on_task_instance_failed(self, previous_state, task_instance, error):
                self._emit(task_instance, "failed", error)

            @hookimpl
            def on_task_instance_skipped(self, previous_state, task_instance):
                self._emit(task_instance, "skipped")

        _LISTENER = Hooks()
        get_listener_manager().add_listener(_LISTENER)
    return _LISTENER


def keras_callback(every_s: float = 0.25):
    """A Keras callback emitting ``fit`` (epochs and steps planned), ``batch`` (at most every ``every_s``) and
    ``epoch`` events (its logs: loss, the validation metrics)."""
    import keras

    class Progress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.last = 0.0
            self.epoch = 0
            emit("fit", epochs=self.params.get("epochs"), steps=self.params.get("steps"))

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            now = time.monotonic()
            if now - self.last >= every_s:
                self.last = now
                emit("batch", epoch=self.epoch + 1, step=batch + 1,
                     loss=float((logs or {}).get("loss", float("nan"))))

        def on_epoch_end(self, epoch, logs=None):
            emit("epoch", epoch=epoch + 1, logs={k: float(v) for k, v in (logs or {}).items()})

    return Progress()


# -- the view ------------------------------------------------------------------------------------------------

_MARKS = {"running": "…", "success": "✓", "failed": "✗", "up_for_retry": "↻", "skipped": "-", "upstream_failed": "-"}


class LiveView:
    """Task states and the fit's progress, drawn on ``stream`` (a terminal: redrawn in place; else plain lines).

    ``tasks`` is the expected order; tasks that appear otherwise are added as they start."""

    def __init__(self, stream: TextIO, tasks: list[str], tty: bool | None = None):
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.order = list(tasks)
        self.state: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self.took: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.fit: dict[str, Any] = {}
        self.interrupted: str | None = None  # why the run is stopping (an ``interrupted`` event: SIGINT, SIGTERM)
        self._lock = threading.Lock()
        self._live = None

    # events
    def __call__(self, event: Event) -> None:
        with self._lock:
            kind = event["kind"]
            if kind == "task":
                self._task(event)
            elif kind == "fit":
                self.fit = {"epochs": event.get("epochs"), "steps": event.get("steps"), "epoch": 0, "step": 0,
                            "logs": {}}
            elif kind == "batch" and self.fit:
                self.fit.update(epoch=event["epoch"], step=event["step"], loss=event["loss"])
            elif kind == "epoch" and self.fit:
                self.fit.update(epoch=event["epoch"], step=self.fit.get("steps") or 0, logs=event["logs"])
                if not self.tty:
                    self._line(f"  train: {self._epoch_text()}")
            elif kind == "interrupted":
                self.interrupted = event["text"]
                if not self.tty:
                    self._line(self.interrupted)
            if self._live is not None:
                self._live.update(self._renderable())

    def _task(self, event: Event) -> None:
        task, state = event["task"], event["state"]
        if task not in self.order:
            self.order.append(task)
        self.state[task] = state
        if state == "running":
            self.started[task] = event["time"]
        elif task in self.started:
            self.took[task] = event["time"] - self.started[task]
        if event.get("error"):
            self.errors[task] = event["error"]
        if not self.tty:
            self._line(self._task_text(task))
            if task in self.errors and state in ("failed", "up_for_retry"):
                self._line(f"    {self.errors[task]}")

    # text
    def _task_text(self, task: str) -> str:
        state = self.state.get(task, "")
        took = f" {self.took[task]:.1f}s" if task in self.took else ""
        return f"{_MARKS.get(state, ' ')} {task:<11} {state}{took}"

    def _epoch_text(self) -> str:
        fit = self.fit
        logs = fit.get("logs") or {}
        metrics = " ".join(f"{k} {v:.4g}" for k, v in logs.items() if k in ("loss", "val_loss")
                           or (k.startswith("val_") and k != "val_loss"))
        loss = f"loss {fit['loss']:.4g}" if not logs and "loss" in fit else ""
        return f"epoch {fit.get('epoch', 0)}/{fit.get('epochs') or '?'} {metrics or loss}".rstrip()

    def _renderable(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 1))
        for task in self.order:
            state = self.state.get(task)
            if state is None:
                table.add_row(Text(" "), Text(task, style="dim"), Text(""))
                continue
            took = self.took.get(task)
            if took is None and state == "running":
                took = time.monotonic() - self.started.get(task, time.monotonic())
            style = {"success": "green", "failed": "red", "running": "yellow", "up_for_retry": "yellow"}.get(state, "dim")
            table.add_row(Text(_MARKS.get(state, " "), style=style), Text(task),
                          Text(f"{state} {took:.1f}s" if took is not None else state, style=style))
        parts: list[Any] = [table]
        if self.fit and self.state.get("train") == "running":
            epochs, steps = self.fit.get("epochs") or 1, self.fit.get("steps") or 1
            done = (max(0, self.fit.get("epoch", 1) - 1) * steps + self.fit.get("step", 0)) / (epochs * steps)
            bar = Table.grid(padding=(0, 1))
            bar.add_row(ProgressBar(total=1.0, completed=min(done, 1.0), width=30), Text(self._epoch_text()))
            parts.append(bar)
        for task, error in self.errors.items():
            parts.append(Text(f"{task}: {error}", style="red"))
        if self.interrupted:
            parts.append(Text(self.interrupted, style="bold red"))
        return Group(*parts)

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    # lifetime
    def __enter__(self) -> "LiveView":
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, force_terminal=True)
            self._live = Live(self._renderable(), console=console, refresh_per_second=4, transient=False,
                              redirect_stdout=False, redirect_stderr=False)  # the logs go to the file
            self._live.__enter__()
            _REDRAWN.append(self.stream)
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            with self._lock:
                self._live.update(self._renderable())
            self._live.__exit__(*exc)
            self._live = None
            _REDRAWN.remove(self.stream)


_REDRAWN: list[TextIO] = []  # the terminals a LiveView is redrawing now, its cursor hidden


def release_terminal() -> None:
    """Show the cursor again on the terminals being redrawn, for a process about to end without closing its
    views (a second Ctrl-C). Only ``os.write``: safe inside a signal handler, even one that interrupted a draw."""
    for stream in list(_REDRAWN):
        with contextlib.suppress(OSError, ValueError):
            os.write(stream.fileno(), b"\x1b[?25h\n")


@contextlib.contextmanager
def captured_output(log_path: Path, view_on_stderr: bool = False) -> Iterator[TextIO]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so children and C++ logs too) to
    ``log_path`` inside the block; yields a stream on the original stdout (stderr with ``view_on_stderr``: when
    stdout is kept for a result, such as ``--json``) for the view."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    terminal = os.fdopen(os.dup(saved_err if view_on_stderr else saved_out), "w", buffering=1, encoding="utf-8",
                         errors="replace")
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield terminal
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)
        terminal.close()
