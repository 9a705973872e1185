"""``pipeline train``: run the ``training_pipeline`` DAG through Airflow on the embedded defaults.

It is a real DAG run, as ``airflow dags test`` makes one: Airflow parses dags/, creates the run in its
metadata database, checks the params against their JSON schema and runs every task, streaming the task
logs here. Exit status 0 only if the DAG run succeeded.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from pipeline.names import model_name_flag

DAG_ID = "training_pipeline"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pipeline train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML pipeline config (default conf/penguins.yaml)")
    p.add_argument("--source", help="CSV or Parquet file to train on (features are inferred without --config)")
    p.add_argument("--label", help="label column of --source")
    p.add_argument("--model-name", type=model_name_flag, help="name of the registered and served model")
    p.add_argument("--epochs", type=int, help="override training.epochs (default: chosen from the data)")
    p.add_argument("--max-minutes", type=float, help="time budget of the fit (training.max_minutes)")
    p.add_argument("--conf", default="{}", help="extra DAG run params as a JSON object")
    p.add_argument("--no-early-sandbox", action="store_true",
                   help="start the deploy stage's validation server when that stage runs, not while Airflow starts")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="stream Airflow's, MLflow's and TensorFlow's logs here (default: to a file under PIPELINE_HOME, "
                        "with a live view of the tasks and epochs here)")
    args = p.parse_args(argv)
    if args.source and not args.config and not args.label:
        p.error("--source without --config needs --label (the column to predict)")
    return args


def run_conf(args: argparse.Namespace) -> dict:
    try:
        conf = json.loads(args.conf)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"pipeline train: --conf is not valid JSON: {exc}")
    values = {"config": str(Path(args.config).resolve()) if args.config else "",
              "source": str(Path(args.source).resolve()) if args.source and "://" not in args.source else args.source,
              "label": args.label, "model_name": args.model_name, "epochs": args.epochs,
              "max_minutes": args.max_minutes}
    conf.update({k: v for k, v in values.items() if v not in (None, "") or k == "config"})
    return conf


def run_dag(dag_id: str, conf: dict, early_sandbox: bool = False):
    """Run ``dag_id`` once through Airflow with ``conf`` and return the finished DagRun; ``early_sandbox``
    starts the deploy stage's validation server first (:func:`start_early_sandbox`)."""
    from pipeline import airflow_env, tracking

    env = airflow_env.apply()
    # A first run creates both databases in background processes while this one imports Airflow.
    migrating, store = airflow_env.start_db(env), tracking.start_store_init()
    try:
        from airflow.utils.cli import get_bagged_dag

        from pipeline import progress

        progress.watch_airflow_tasks()  # task states for the live view (inert without one)
        airflow_env.finish_db(migrating, env)
    finally:
        if migrating is not None and migrating.poll() is None:
            migrating.kill()
        tracking.finish_store_init(store)
    # After the databases: on a first run their migrations would compete with it for the cores.
    sandbox = start_early_sandbox(conf) if early_sandbox else None
    airflow_env.in_process_api_newest_version_only()
    try:
        return (_parse_dag(dag_id) or get_bagged_dag(None, dag_id)).test(run_conf=conf)
    finally:
        if sandbox is not None:
            from pipeline.deploy import stop_standby

            stop_standby(sandbox)


def _parse_dag(dag_id: str):
    """The DAG parsed from ``<dags folder>/<dag_id>.py`` alone, as ``airflow dags test`` parses it but without
    writing the bundle to the database first: ``dag.test`` writes it again anyway. None when the embedded
    ``dags-folder`` bundle or that file is not there (then Airflow's own lookup runs)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag
    from airflow.sdk.definitions._internal.dag_parsing_context import _airflow_parsing_context_manager

    try:
        bundle = DagBundlesManager().get_bundle("dags-folder")
        bundle.initialize()
    except Exception:
        return None
    path = Path(bundle.path) / f"{dag_id}.py"
    if not path.is_file():
        return None
    with _airflow_parsing_context_manager(dag_id=dag_id):
        bag = BundleDagBag(dag_folder=str(path), bundle_path=bundle.path, bundle_name=bundle.name)
    return bag.dags.get(dag_id)


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
    """What the run produced, read back from Airflow's XCom of the last task."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow.models.xcom import XComModel

    out = {"dag_run_id": dag_run.run_id, "state": str(dag_run.state)}
    with create_session() as session:
        rows = session.execute(select(XComModel.task_id, XComModel.value).where(
            XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id, XComModel.key == "return_value")).all()
        for task_id, value in rows:
            out[task_id] = json.loads(value) if isinstance(value, str) else value
        states = dict(session.execute(select(TaskInstance.task_id, TaskInstance.state).where(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id)).all())
    from pipeline.tasks import STAGES

    order = [t for t in STAGES if t in states] + sorted(set(states) - set(STAGES))
    out["failed_tasks"] = [t for t in order if str(states[t]).endswith("failed") and "upstream" not in str(states[t])]
    out["not_run_tasks"] = [t for t in order if "upstream_failed" in str(states[t])]
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
    from pipeline.ingest import resolve_source
    from pipeline.tasks import load_run_config

    try:
        cfg = load_run_config(conf)
        size = resolve_source(cfg.source).stat().st_size
    except Exception:
        return None
    if cfg.deploy.tf_serving_rest_url or size > EARLY_SANDBOX_MAX_SOURCE_BYTES:
        return None
    return deploy.start_standby(cfg.serving.model_name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(argv or []))
    conf = run_conf(args)
    print(f"pipeline train: running DAG {DAG_ID} with params {json.dumps(conf)}", flush=True)
    dag_run = run_with_view(DAG_ID, args.verbose,
                            lambda: run_dag(DAG_ID, conf, early_sandbox=not args.no_early_sandbox))
    summary = summarize(dag_run)
    reg = summary.get("register") or {}
    ingest = summary.get("ingest") or {}
    print("", flush=True)
    print(f"DAG run:          {summary['dag_run_id']} ({summary['state']})")
    parent = reg.get("parent_run_id") or ingest.get("parent_run_id") or mlflow_parent_run(summary["dag_run_id"])
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
