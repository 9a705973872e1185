"""``pipeline train``: run the ``training_pipeline`` DAG through Airflow on the embedded defaults.

It is a real DAG run, as ``airflow dags test`` makes one: Airflow parses dags/, creates the run in its
metadata database, checks the params against their JSON schema and runs every task, streaming the task
logs here. Exit status 0 only if the DAG run succeeded.
"""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline.names import model_name_flag

DAG_ID = "training_pipeline"


def add_run_arguments(p: argparse.ArgumentParser,
                      config_help: str = "YAML pipeline config (default conf/penguins.yaml)") -> None:
    """The arguments of a DAG run's params (:func:`run_conf`) and of its view: ``pipeline train``'s and
    ``pipeline tune``'s."""
    p.add_argument("--config", help=config_help)
    p.add_argument("--source", help="CSV or Parquet file to train on (features are inferred without --config)")
    p.add_argument("--label", help="label column of --source")
    p.add_argument("--model-name", type=model_name_flag, help="name of the registered and served model")
    p.add_argument("--epochs", type=int, help="override training.epochs (default: chosen from the data)")
    p.add_argument("--max-minutes", type=float, help="time budget of the fit (training.max_minutes)")
    p.add_argument("--conf", default="{}", help="extra DAG run params as a JSON object")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="stream Airflow's, MLflow's and TensorFlow's logs here (default: to a file under PIPELINE_HOME, "
                        "with a live view of the tasks and epochs here)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pipeline train", description=__doc__.splitlines()[0])
    add_run_arguments(p)
    p.add_argument("--no-early-sandbox", action="store_true",
                   help="start the deploy stage's validation server when that stage runs, not while Airflow starts")
    args = p.parse_args(argv)
    if args.source and not args.config and not args.label:
        p.error("--source without --config needs --label (the column to predict)")
    return args


def run_conf(args: argparse.Namespace) -> dict:
    try:
        conf = json.loads(args.conf)
    except json.JSONDecodeError as exc:
        print(f"pipeline train: --conf is not valid JSON: {exc}", file=sys.stderr)
        raise SystemExit(2) from None  # bad input, as argparse's own refusals
    values = {"config": str(Path(args.config).resolve()) if args.config else "",
              "source": str(Path(args.source).resolve()) if args.source and "://" not in args.source else args.source,
              "label": args.label, "model_name": args.model_name, "epochs": args.epochs,
              "max_minutes": args.max_minutes}
    conf.update({k: v for k, v in values.items() if v not in (None, "") or k == "config"})
    return conf


def run_dag(dag_id: str, conf: dict, early_sandbox: bool = False):
    """Run ``dag_id`` once through Airflow with ``conf`` and return the finished DagRun; ``early_sandbox``
    starts the deploy stage's validation server first (:func:`start_early_sandbox`).

    Raises:
        Interrupted: inside :func:`stop_on_signals`, SIGINT or SIGTERM stopped the run; the DAG run is ended
            failed first (:func:`end_interrupted_run`) and is the exception's ``dag_run``.
    """
    from pipeline import airflow_env, internals, task_process, tracking

    env = airflow_env.apply()
    os.environ[task_process.SHARED_ENV] = "1"  # every task of the DAG run runs in this process
    # A first run creates both databases in background processes while this one imports Airflow.
    migrating, store = airflow_env.start_db(env), tracking.start_store_init()
    try:
        import airflow.sdk  # noqa: F401 - Airflow imported while the databases are created

        from pipeline import progress

        progress.watch_airflow_tasks()  # task states for the live view (inert without one)
        _watch_task_signals()
        airflow_env.finish_db(migrating, env)
    finally:
        if migrating is not None and migrating.poll() is None:
            migrating.kill()
        tracking.finish_store_init(store)
    # After the databases: on a first run their migrations would compete with it for the cores.
    sandbox = start_early_sandbox(conf) if early_sandbox else None
    internals.newest_execution_api_only()
    started = datetime.now(timezone.utc)
    try:
        return load_dag(dag_id).test(run_conf=conf)
    except Interrupted as exc:
        progress.emit("interrupted", text=f"{exc}: stopping (a second signal ends it at once)")
        exc.dag_run = end_interrupted_run(dag_id, started, exc)
        raise
    finally:
        if sandbox is not None:
            from pipeline.deploy import sandbox as sandboxes

            interrupted = isinstance(sys.exc_info()[1], KeyboardInterrupt)  # nothing waits for its answers
            sandboxes.stop_standby(sandbox, sandboxes.INTERRUPTED_STOP_S if interrupted else sandboxes.STOP_S)


def load_dag(dag_id: str):
    """The DAG of ``<dags folder>/<dag_id>.py``, imported from that file as a plain module (no DagBag, no
    bundle): ``DAG.test`` writes the dags folder's bundle to the database itself. 0.06 s, against 0.8 s for
    Airflow's ``get_bagged_dag`` (which parses and writes the whole bundle first); measured in
    docs/benchmarks.md, "Private APIs".

    Raises:
        SystemExit: the file does not define that DAG (with the file named).
    """
    import importlib.util
    import os

    from airflow.sdk import DAG

    from pipeline import paths

    path = Path(os.environ.get("AIRFLOW__CORE__DAGS_FOLDER") or paths.REPO_ROOT / "dags") / f"{dag_id}.py"
    if not path.is_file():
        raise SystemExit(f"pipeline: DAG file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"pipeline_dags_{dag_id}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for value in vars(module).values():
        if isinstance(value, DAG) and value.dag_id == dag_id:
            return value
    raise SystemExit(f"pipeline: {path} defines no DAG {dag_id!r} at module level")


def log_file(command: str) -> Path:
    """Where a command's full logs go when they are not streamed: ``PIPELINE_HOME/logs/<command>-<UTC time>.log``."""
    import time

    from pipeline import paths

    return paths.pipeline_home() / "logs" / f"{command}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.log"


def run_with_view(dag_id: str, verbose: bool, run: Callable[[], Any], command: str = "train",
                  view_on_stderr: bool = False):
    """``run()`` (a DAG run in this process) with its logs streamed (``verbose``) or written to :func:`log_file`
    while a live view of the tasks and the fit is drawn here (:mod:`pipeline.progress`)."""
    if verbose:
        return run()
    from pipeline import progress
    from pipeline.tasks import STAGES

    path = log_file(command)
    print(f"logs:             {path} (-v to stream them here)", file=sys.stderr if view_on_stderr else sys.stdout,
          flush=True)
    tasks = list(STAGES) if dag_id == DAG_ID else []
    with progress.captured_output(path, view_on_stderr) as terminal, progress.LiveView(terminal, tasks) as view, \
            progress.attached(view):
        return run()


def summarize(dag_run) -> dict:
    """What a DAG run run in this process produced: its state, each task's return value (by task id), the
    failed tasks with their reasons, and the tasks that never ran. Read from ``airflow.sdk``'s task listener
    (:func:`pipeline.progress.task_outcomes`), not from Airflow's database tables."""
    from pipeline import progress
    from pipeline.tasks import STAGES

    outcomes = progress.task_outcomes(dag_run.dag_id, dag_run.run_id)
    out: dict = {"dag_run_id": dag_run.run_id, "state": str(dag_run.state)}
    for task_id, outcome in outcomes.items():
        if outcome.get("result") is not None:
            out[task_id] = outcome["result"]
    failed = [t for t, o in outcomes.items() if o["state"] in ("failed", "up_for_retry", "running")]
    out["failed_tasks"] = failed
    out["errors"] = {t: outcomes[t].get("error") or outcomes[t]["state"] for t in failed}
    out["not_run_tasks"] = [t for t in STAGES if t not in outcomes] if dag_run.dag_id == DAG_ID and failed else []
    return out


def mlflow_parent_run(dag_run_id: str) -> str | None:
    """The MLflow parent run of a DAG run, looked up by its tags (for runs that failed before returning it)."""
    from pipeline.tracking import TAG_RUN_ID, client

    runs = client().search_runs([e.experiment_id for e in client().search_experiments()],
                                filter_string=f"tags.`{TAG_RUN_ID}` = '{dag_run_id}' and tags.`pipeline.kind` = 'dag_run'",
                                max_results=1)
    return runs[0].info.run_id if runs else None


# Sources larger than this get no early sandbox: it holds TensorFlow's memory (~700 MB resident, ~300 MB of it
# its own) through the whole fit, to save the 2-3 s of loading it, which only matter on a run of seconds.
EARLY_SANDBOX_MAX_SOURCE_BYTES = 8 << 20


def start_early_sandbox(conf: dict):
    """The deploy stage's validation server, started now so that it loads TensorFlow on another core while
    Airflow starts and the first stages run (``pipeline.deploy.start_standby``); None when the config names a
    real TensorFlow Serving to validate against, when the source is large (the run is long, and memory is what
    counts there), or when the config cannot be read (the DAG run reports that)."""
    from pipeline import deploy
    from pipeline.ingest import resolve_source, source_bytes
    from pipeline.tasks import load_run_config

    try:
        cfg = load_run_config(conf)
        size = source_bytes(resolve_source(cfg.source))
    except Exception:
        return None
    if cfg.deploy.tf_serving_rest_url or size > EARLY_SANDBOX_MAX_SOURCE_BYTES:
        return None
    return deploy.start_standby(cfg.serving.model_name)


# -- stopping on SIGINT and SIGTERM --------------------------------------------------------------------------
#
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


def _on_recheck(signum: int, frame) -> None:
    """RECHECK_SIGNAL's handler: the held interrupt, raised once the code holding it has returned."""
    if _state["held"] and not _held(frame):
        _state.update(held=False, pending=False)
        raise Interrupted(_received[0], _state["interrupted_task"])


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
        _state.update(pending=False, held=False)
        raise Interrupted(_received[0], _state["interrupted_task"])


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


_TASK_HOOKS = None  # the listener of _watch_task_signals, once registered


def _watch_task_signals() -> None:
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
                _state.update(pending=False, held=False)
                raise Interrupted(_received[0], _state["interrupted_task"])

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
        command = {DAG_ID: "train", "tuning_pipeline": "tune"}.get(dag_id, "monitor")
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


def main(argv: list[str] | None = None) -> int:
    """``pipeline train``: 0 when the DAG run succeeded, 1 when it failed, 2 when the pre-flight checks refused
    the config or the source (:mod:`pipeline.preflight`, before Airflow starts), 130 or 143 when SIGINT or
    SIGTERM stopped it (the DAG run then ends failed, and nothing it had not published yet is published)."""
    from pipeline.preflight import train_problem

    args = parse_args(list(argv or []))
    return run_command("train", DAG_ID, args, train_problem, early_sandbox=not args.no_early_sandbox)


def run_command(command: str, dag_id: str, args: argparse.Namespace, problem_of: Callable[[dict], str | None],
                early_sandbox: bool = False, before_report: Callable[[Any], None] | None = None) -> int:
    """``pipeline <command>``: the DAG run of ``args`` (:func:`run_conf`) refused with status 2 when
    ``problem_of(conf)`` names a problem, else run with its view (:func:`run_dag`, :func:`run_with_view`) and
    reported (``before_report(dag_run)`` first); the exit status of :func:`main`."""
    conf = run_conf(args)
    problem = problem_of(conf)
    if problem is not None:
        print(f"pipeline {command}: {problem}", file=sys.stderr, flush=True)
        return 2
    print(f"pipeline {command}: running DAG {dag_id} with params {json.dumps(conf)}", flush=True)
    with stop_on_signals():
        try:
            dag_run = run_with_view(dag_id, args.verbose,
                                    lambda: run_dag(dag_id, conf, early_sandbox=early_sandbox), command=command)
            if before_report is not None:
                before_report(dag_run)
            return report(dag_run)
        except Interrupted as exc:
            if exc.dag_run is not None:
                report(exc.dag_run, exc)
            where = f" during {exc.task}" if exc.task else ""
            ended = "the DAG run ended failed" if exc.dag_run is not None else "no DAG run had started"
            print(f"Interrupted:      by {exc.signal_name}{where}; {ended}", flush=True)
            stop_children()
            return exc.exit_status


def report(dag_run, interrupted: Interrupted | None = None) -> int:
    """Print what ``dag_run`` produced (:func:`summarize`) and return the exit status it makes: 0 success, 1 not."""
    summary = summarize(dag_run)
    reg = summary.get("register") or {}
    ingest = summary.get("ingest") or {}
    print("", flush=True)
    how = f", interrupted by {interrupted.signal_name}" if interrupted is not None else ""
    print(f"DAG run:          {summary['dag_run_id']} ({summary['state']}{how})")
    parent = reg.get("parent_run_id") or ingest.get("parent_run_id")
    if parent is None and (interrupted is None or "mlflow" in sys.modules):  # importing it: 2 s of an exit
        parent = mlflow_parent_run(summary["dag_run_id"])
    print(f"MLflow run:       {parent or '-'}")
    if reg:
        print(f"Registered model: {reg['model_name']} version {reg['version']}")
        print(f"Blessed:          {'yes' if reg['blessed'] else 'no'}")
        dep = summary.get("deploy") or {}
        if dep.get("deployed"):
            print(f"Deployed:         {dep['published']} (label {dep['label']})")
        elif dep:
            print(f"Deployed:         no ({dep.get('reason')})")
        from pipeline.registry import served_aliases

        aliases = served_aliases(reg["model_name"])
        print(f"Champion:         version {aliases.get('champion', '-')}"
              f"{'; canary: version ' + str(aliases['challenger']) if 'challenger' in aliases else ''}")
    if summary["failed_tasks"]:
        not_run = f" (not run: {', '.join(summary['not_run_tasks'])})" if summary["not_run_tasks"] else ""
        print(f"Failed tasks:     {', '.join(summary['failed_tasks'])}{not_run}", flush=True)
    return 0 if summary["state"].endswith("success") else 1


if __name__ == "__main__":
    from pipeline.cli import exit_now

    exit_now(main(sys.argv[1:]))
