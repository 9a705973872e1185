"""Stopping a command on SIGINT and SIGTERM (``pipeline train``, ``tune``, ``monitor``, ``airflow``).

Inside :func:`stop_on_signals` the first signal raises :class:`Interrupted` in the main thread, where the
signal lands, unless that is code which must not be cut (:data:`_WHOLE_STEPS`, :data:`_HELD_MODULES`): there it
is held and raised as soon as that code returns. A task listener (:func:`watch_task_signals`) raises it again
once Airflow has recorded the interrupted attempt, :func:`end_interrupted_run` ends the DAG run failed, and
:func:`stop_children` stops every process the command started. A second signal ends the process at once.
"""
from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator


# The tasks of a ``dag.test`` run run in this process's main thread, where Python handles signals; unhandled,
# SIGINT became a KeyboardInterrupt that Airflow recorded as a failed attempt and retried, and SIGTERM called the
# task's ``on_kill`` (Airflow's task runner puts that handler in place for every task), which does nothing here.
# So SIGINT and SIGTERM both raise Interrupted, the task's attempt fails with it, and a task listener raises it
# again once Airflow has recorded the attempt, out of ``dag.test``: run_dag then ends the DAG run.


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM asked the command to stop. A KeyboardInterrupt whichever the signal, so that no ``except
    Exception`` (a task's, Airflow's loop) takes it for a failure to handle and clean-up written for Ctrl-C runs
    (a stage's MLflow run ends FAILED, the deploy stage removes its temporary copy).

    Attributes:
        signum: the signal received.
        task: the task that was running when it came (None between tasks or outside a DAG run).
        dag_run: the DagRun it stopped, ended failed (None when no DAG run had started).
    """

    def __init__(self, signum: int, task: str | None = None):
        super().__init__(f"{signal.Signals(signum).name} received")
        self.signum, self.task, self.dag_run = signum, task, None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # what a shell reports for a process ended by the signal: 130, 143


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RECHECK_SIGNAL = signal.SIGUSR1  # sent to the main thread while an interrupt is held: raise it now?
RECHECK_S = 0.05  # how often, while the code holding it runs
SLOW_STOP_S = 30.0  # a stop still going after this long writes every thread's stack to stderr (the log file)
_received: list[int] = []  # the stop signals received inside stop_on_signals; the first one stops the command
_state: dict[str, Any] = {"active": False, "pending": False, "held": False, "task": None, "interrupted_task": None,
                          "run": None, "wake": None}

# Steps that must not stop half way, by (module, function): an interrupt inside one is held and raised as soon as
# it returns (the main thread is signalled again every RECHECK_S), or at the fit's next progress event.
_WHOLE_STEPS = {
    # the fit's resume checkpoint: a torn weights file or an empty metadata file would fail the retry
    ("keras.src.callbacks.backup_and_restore", "_save_model"),
    # the deploy stage's commit: the candidate renamed into the serving directory, then models.config and the
    # registry's aliases moved; stopped in between, a version would be published but not aliased, or
    # models.config ahead of the aliases
    ("pipeline.deploy.layout", "publish"),
    ("pipeline.deploy.aliases", "move_aliases"),
}
# Code that is not written to be interrupted at any bytecode, by module: held the same way. A database
# transaction cut between its statements and its commit keeps SQLite's write lock for as long as the
# exception's traceback holds the connection, and every write after it (the stage's MLflow run ended FAILED,
# the epochs flushed) then waits out the busy timeout MLflow sets, 20 s, and fails: a Ctrl-C that landed in the
# fit's per-epoch MLflow write left the command running for over a minute (tests/commands/test_held_interrupts.py).
# Airflow's metadata database goes through SQLAlchemy too. Not MLflow's REST client: a tracking server that does
# not answer would hold a Ctrl-C for its retries.
_HELD_MODULES = ("sqlalchemy.", "alembic.", "mlflow.store.tracking.", "mlflow.store.model_registry.",
                 "mlflow.store.db.")


def _held(frame) -> bool:
    """Whether an interrupt arriving in ``frame`` must wait: a whole step or held code is on the stack."""
    while frame is not None:
        module = frame.f_globals.get("__name__") or ""
        where = (module, frame.f_code.co_name)
        if where in _WHOLE_STEPS or module.startswith(_HELD_MODULES):
            return True
        if where == ("pipeline.deploy.stage", "_deploy_locked"):
            # between the rename that published the candidate and the aliases' move (its temporary copy is gone)
            local = frame.f_locals
            tmp = local.get("tmp")
            if "published" in (local.get("report") or {}) or (tmp is not None and not Path(tmp).exists()):
                return True
        frame = frame.f_back
    return False


def _on_signal(signum: int, frame) -> None:
    if _received:  # the second one: no clean-up any more, only the children
        from pipeline import progress

        try:
            progress.release_terminal()
            stop_children(kill=True)
        finally:
            os._exit(128 + signum)
    _received.append(signum)
    _state["interrupted_task"] = _state["task"]
    with contextlib.suppress(Exception):  # what a stop that hangs waits for, in the log: no guessing afterwards
        faulthandler.dump_traceback_later(SLOW_STOP_S)
    # Pending until the task ends: a library may swallow a KeyboardInterrupt (Airflow's lazy context values
    # evaluate theirs again), and a fit still reporting progress afterwards is stopped at its next event.
    _state["pending"] = True
    if _held(frame):
        _state["held"] = True
        with contextlib.suppress(OSError):
            os.write(_state["wake"], b"!")  # async-signal-safe: no lock taken in a handler
        return
    raise Interrupted(signum, _state["task"])


def _raise_received() -> None:
    """Raise the interrupt the first signal asked for, no longer pending or held (the safe points: a recheck,
    the fit's next event, the end of the task)."""
    _state.update(pending=False, held=False)
    raise Interrupted(_received[0], _state["interrupted_task"])


def _on_recheck(signum: int, frame) -> None:
    """RECHECK_SIGNAL's handler: the held interrupt, raised once the code holding it has returned."""
    if _state["held"] and not _held(frame):
        _raise_received()


def _recheck_held(wake_fd: int) -> None:
    """A thread: while an interrupt is held, signal the main thread every RECHECK_S (:func:`_on_recheck`: a
    handler only sees the frame it interrupted, so the main thread has to be interrupted again to look)."""
    import select
    import time

    main = threading.main_thread().ident
    while _state["active"]:
        select.select([wake_fd], [], [])
        with contextlib.suppress(OSError):
            os.read(wake_fd, 64)
        while _state["active"] and _state["held"]:
            signal.pthread_kill(main, RECHECK_SIGNAL)
            time.sleep(RECHECK_S)


def _raise_pending(event: dict) -> None:
    """A progress sink: raises a held or swallowed interrupt at the fit's next event."""
    if _state["pending"] and event["kind"] in ("batch", "epoch") and not _held(sys._getframe()):
        _raise_received()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Inside the block SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (once each command; a
    second signal ends the process at once, after SIGKILL to its children); the previous handlers afterwards.
    An interrupt arriving in a whole step or in database code (:func:`_held`) is raised when that returns."""
    import psutil  # noqa: F401 - imported now rather than by the handler, maybe half way through another import

    from pipeline import progress

    previous = {s: signal.getsignal(s) for s in (*STOP_SIGNALS, RECHECK_SIGNAL)}
    _received.clear()
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    _state.update(active=True, pending=False, held=False, task=None, interrupted_task=None, run=None,
                  wake=write_fd)
    rechecks = threading.Thread(target=_recheck_held, args=(read_fd,), name="held-interrupt", daemon=True)
    rechecks.start()
    for s in STOP_SIGNALS:
        signal.signal(s, _on_signal)
    signal.signal(RECHECK_SIGNAL, _on_recheck)
    try:
        with progress.attached(_raise_pending):
            yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        _state.update(active=False, held=False)
        with contextlib.suppress(OSError):
            os.write(write_fd, b"!")
        rechecks.join(timeout=5)  # before the handlers go: a last recheck must not meet SIGUSR1's default, exit
        if rechecks.is_alive():
            previous[RECHECK_SIGNAL] = signal.SIG_IGN
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(read_fd)
        os.close(write_fd)


_TASK_HOOKS = None  # the listener of watch_task_signals, once registered


def watch_task_signals() -> None:
    """Register (once) the task listener that keeps :func:`_on_signal` on SIGTERM while a task runs (Airflow's
    task runner replaces it with its own at each task's start; a SIGTERM in the milliseconds before the task's
    ``running`` hook puts ours back is lost) and raises the interrupt again once the interrupted task's attempt
    has been recorded (``before_stopping``, the hook that ends every task)."""
    global _TASK_HOOKS
    if _TASK_HOOKS is not None:
        return
    from airflow.listeners import hookimpl
    from airflow.sdk.listener import get_listener_manager

    def own_sigterm() -> None:
        if _state["active"] and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_signal)

    class Hooks:
        @hookimpl
        def on_task_instance_running(self, previous_state, task_instance):
            own_sigterm()
            _state["task"] = getattr(task_instance, "task_id", None)
            _state["run"] = (getattr(task_instance, "dag_id", None), getattr(task_instance, "run_id", None))

        @hookimpl
        def before_stopping(self, component):
            own_sigterm()
            _state["task"] = None
            if _state["active"] and _received:
                _raise_received()

    _TASK_HOOKS = Hooks()
    get_listener_manager().add_listener(_TASK_HOOKS)


def end_interrupted_run(dag_id: str, started: datetime, exc: Interrupted):
    """End the DAG run ``exc`` stopped as failed, through Airflow's models: the interrupted task (whatever state
    its attempt was left in: up for retry, running, queued) failed, the tasks that never ran upstream failed, the
    run failed with a note saying which signal stopped it. The run is the one whose task was interrupted, else
    the ``dag.test`` run of ``dag_id`` created since ``started``. Returns it (None: no run had been created)."""
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, State, TaskInstanceState

    from pipeline import progress

    settings.Session.remove()  # dag.test's session may be half way through what the signal interrupted
    dag_of_task, run_id = _state["run"] or (None, None)
    with create_session() as session:
        if dag_of_task == dag_id and run_id:
            runs = DagRun.find(dag_id=dag_id, run_id=[run_id], session=session)
        else:
            runs = [r for r in DagRun.find(dag_id=dag_id, state=DagRunState.RUNNING, session=session)
                    if getattr(r.triggered_by, "value", None) == "test" and (r.start_date or started) >= started]
        if not runs:
            return None
        dag_run = runs[-1]
        why = f"interrupted by {exc.signal_name}" + (f" during {exc.task}" if exc.task else "")
        for ti in dag_run.get_task_instances(session=session):
            if ti.state in State.finished:
                continue
            new = TaskInstanceState.UPSTREAM_FAILED if ti.state is None else TaskInstanceState.FAILED
            if ti.state not in (None, TaskInstanceState.UP_FOR_RETRY):  # no listener event told the view yet
                progress.emit("task", task=ti.task_id, state="failed", error=why)
            ti.set_state(new, session=session)
            if new == TaskInstanceState.FAILED:
                ti.note = why
        dag_run.set_state(DagRunState.FAILED)
        command = {"training_pipeline": "train", "tuning_pipeline": "tune"}.get(dag_id, "monitor")
        dag_run.note = f"{why} (pipeline {command})"
    return dag_run


def stop_children(kill: bool = False, timeout_s: float = 10.0, root: int | None = None) -> None:
    """Stop every process this one (or ``root``) started that still runs, and their children (deploy sandboxes,
    a database migration, Airflow's components): SIGTERM, then SIGKILL to those left after ``timeout_s``;
    ``kill``: SIGKILL at once. The process tree is read first, so children in process groups of their own and
    grandchildren whose parent exits first are reached too."""
    import psutil

    try:
        top = psutil.Process(root) if root else psutil.Process()
        procs = top.children(recursive=True) + ([top] if root else [])
    except psutil.Error:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill() if kill else proc.terminate()
    if kill:
        return
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
