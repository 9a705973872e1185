"""``pipeline train``: run the ``training_pipeline`` DAG through Airflow on the embedded defaults.

It is a real DAG run, as ``airflow dags test`` makes one: Airflow parses dags/, creates the run in its
metadata database, checks the params against their JSON schema and runs every task, streaming the task
logs here. Exit status 0 only if the DAG run succeeded.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pipeline.commands.stopping import (Interrupted, end_interrupted_run, stop_children, stop_on_signals,
                                        watch_task_signals)
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
        watch_task_signals()
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
