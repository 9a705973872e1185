"""``pipeline monitor``: drift of served traffic against the serving model's training data, through Airflow.

    pipeline monitor [--config FILE] [--current PATH] [--model-name NAME] [--json] [--direct]

By default this runs the ``drift_monitor`` DAG once through Airflow, as ``pipeline train`` runs
``training_pipeline``: the window, the analysis (report, MLflow run), the retraining decision and, when the
guards allow it, the ``training_data_drift`` Asset event that schedules a retraining. ``--direct`` runs only the
analysis in this process (``pipeline.monitoring.monitor.run_monitor``), with no retraining decision.

The window is ``--current`` (CSV, a Parquet file, a directory or glob of Parquet shards, or request-log JSONL),
else the request log since the last monitor run of this model (at most ``--lookback-hours`` back); either is
read batch by batch, in bounded memory (docs/monitoring.md). The reference is the model version that served most of
the window (``--model-version`` to choose), found through its lineage file in the serving directory.
With ``--json`` stdout carries exactly one JSON object (Airflow's logs go to stderr); when the DAG run failed,
its ``error`` names each failed task with its reason. Exit status 0 whether or not there is drift; 1 when the DAG
run failed; 2 on bad input, refused before Airflow starts (:func:`pipeline.preflight.monitor_problem`); 130 or
143 when SIGINT or SIGTERM stopped it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline import paths
from pipeline.names import model_name_flag

DAG_ID = "drift_monitor"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pipeline monitor", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--config", type=Path, help="pipeline YAML with a monitoring: section (default conf/penguins.yaml)"
    )
    ap.add_argument(
        "--current", type=Path, help="the window as CSV, Parquet (file, directory or glob of shards) or JSONL (default: the request log)"
    )
    ap.add_argument("--model-name", type=model_name_flag,
                    help="served model (default: the config's serving.model_name)")
    ap.add_argument(
        "--model-version", type=int, help="reference model version (default: the one that served)"
    )
    ap.add_argument("--labels", type=Path, help="late labels (CSV/Parquet: request_id[, row], <label>)")
    ap.add_argument(
        "--lookback-hours", type=float, default=24.0, help="window start when no monitor ran before"
    )
    ap.add_argument("--report-dir", type=Path, help="write the HTML report here")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log the monitor run to MLflow")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="stream Airflow's logs (to stderr) instead of a log file under PIPELINE_HOME and a live view")
    ap.add_argument(
        "--direct", action="store_true", help="run the analysis in this process instead of the Airflow DAG"
    )
    return ap


def _state_file(model_name: str) -> Path:
    return paths.pipeline_home() / "monitoring" / "state" / f"{paths.safe_key(model_name)}.json"


def _versions(model_name: str) -> list[int]:
    base = paths.serving_dir(model_name)
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit()) if base.is_dir() else []


def main(argv: list[str] | None = None) -> int:
    from pipeline.commands.stopping import Interrupted, stop_children, stop_on_signals
    from pipeline.preflight import monitor_problem

    args = _parser().parse_args(argv)
    problem = monitor_problem(dag_conf(args))
    if problem is not None:
        print(f"pipeline monitor: {problem}", file=sys.stderr, flush=True)
        return 2
    with stop_on_signals():
        try:
            return _direct(args) if args.direct else _through_airflow(args)
        except Interrupted as exc:
            error = f"interrupted by {exc.signal_name}" + (f" during {exc.task}" if exc.task else "")
            run = exc.dag_run
            if args.json:
                airflow = None if run is None else {"dag_id": DAG_ID, "dag_run_id": run.run_id, "state": "failed"}
                print(json.dumps({"error": error, "airflow": airflow}), flush=True)
            else:
                ended = f"; DAG run {run.run_id} ended failed" if run is not None else ""
                print(f"pipeline monitor: {error}{ended}", file=sys.stderr, flush=True)
            stop_children()
            return exc.exit_status


def dag_conf(args: argparse.Namespace) -> dict:
    """The ``drift_monitor`` params of the command line (paths made absolute: the DAG runs elsewhere)."""
    conf = {"config": str(args.config.resolve()) if args.config else ""}
    optional = {
        "current": str(args.current.resolve()) if args.current else None,
        "model_name": args.model_name,
        "model_version": args.model_version,
        "labels": str(args.labels.resolve()) if args.labels else None,
        "lookback_hours": args.lookback_hours,
        "mlflow": False if args.no_mlflow else None,
    }
    conf.update({k: v for k, v in optional.items() if v is not None})
    return conf


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send everything written to stdout, by this process and its children, to stderr while it lasts."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _through_airflow(args: argparse.Namespace) -> int:
    from pipeline import progress
    from pipeline.commands.train import run_dag, run_with_view, summarize

    if args.report_dir:
        print("pipeline monitor: the DAG writes its report under PIPELINE_HOME/monitoring/runs/; "
              "--report-dir applies to --direct", file=sys.stderr)
    conf = dag_conf(args)
    print(f"pipeline monitor: running DAG {DAG_ID} with params {json.dumps(conf)}", file=sys.stderr, flush=True)
    reasons: dict[str, str] = {}  # failed task -> why, from the task events (the logs are elsewhere)

    def keep_reason(event: dict) -> None:
        if event["kind"] == "task" and event.get("error"):
            reasons[event["task"]] = event["error"]

    with _stdout_to_stderr() if args.json and args.verbose else contextlib.nullcontext(), \
            progress.attached(keep_reason):
        dag_run = run_with_view(DAG_ID, args.verbose, lambda: run_dag(DAG_ID, conf), command="monitor",
                                view_on_stderr=args.json)
        summary = summarize(dag_run)
    decision = summary.get("decide") or {}
    ok = summary["state"].endswith("success") and decision.get("result")
    airflow = {"dag_id": DAG_ID, "dag_run_id": summary["dag_run_id"], "state": summary["state"],
               "failed_tasks": summary["failed_tasks"],
               "asset_event": (summary.get("emit_drift") or None) if ok else None}
    if not ok:
        reasons = {**(summary.get("errors") or {}), **reasons}  # the events' text, where there was one
        why = "; ".join(f"{task} failed: {_reason(reasons[task])}" for task in summary["failed_tasks"] if task in reasons)
        error = (f"{why + ' (' if why else ''}DAG run {summary['dag_run_id']} {summary['state']}; "
                 f"failed tasks: {summary['failed_tasks']}{')' if why else ''}")
        airflow["errors"] = {task: _reason(reasons[task]) for task in summary["failed_tasks"] if task in reasons}
        if args.json:
            print(json.dumps({"error": error, "airflow": airflow}))
        else:
            print(f"pipeline monitor: {error}", file=sys.stderr)
        return 1
    doc = json.loads(Path(decision["result"]).read_text())
    doc["airflow"] = airflow
    if args.json:
        print(json.dumps(doc, allow_nan=False))
        return 0
    meta = doc.get("meta") or {}
    print(f"{meta.get('model_name')} v{meta.get('model_version')}: {doc['n_current']:,} rows - {doc['drift_reason']}")
    for name, f in {**doc["features"], **doc["predictions"]}.items():
        effect = "-" if f.get("effect_size") is None else f"{f['effect_size']:.3f}"
        print(f"  {'DRIFT' if f['drift'] else 'ok   '} {name:<28} {f['test']:<15} effect {effect:>7} (>= {f['threshold']:g})")
    print(f"Retraining: {'triggered' if doc['retraining_triggered'] else 'no'} - {doc['reason']}")
    print(f"DAG run:    {summary['dag_run_id']} ({summary['state']})")
    if meta.get("report"):
        print(f"Report:     {meta['report']}")
    return 0


def _reason(error: str) -> str:
    """A task's failure as its message: without the ``AirflowFailException: `` the DAG wraps a refusal in (it only
    means "do not retry")."""
    prefix = "AirflowFailException: "
    return error[len(prefix):] if error.startswith(prefix) else error


def _direct(args: argparse.Namespace) -> int:
    from pipeline.atomic import write_json_atomic
    from pipeline.monitoring.batches import most_common, table_batches, value_counts
    from pipeline.monitoring.monitor import MonitorConfig, read_table, run_monitor
    from pipeline.monitoring.request_log import iter_request_log, request_log_versions

    default_conf = paths.DEFAULT_CONFIG
    config_path = args.config or (default_conf if default_conf.exists() else None)
    config = MonitorConfig.from_yaml(config_path) if config_path else MonitorConfig()
    model_name = args.model_name or config.model_name
    if not model_name:
        print(
            "pipeline monitor: no model name (--model-name or serving.model_name in --config)",
            file=sys.stderr,
        )
        return 2

    now = datetime.now(UTC)
    state = _state_file(model_name)
    window_start = window_end = None
    # The window is read batch by batch (run_monitor summarises it in bounded memory); the version that served
    # most of it is found first, in a pass over its model_version column alone.
    if args.current is not None:
        if not args.current.exists() and not any(ch in str(args.current) for ch in "*?["):
            print(f"pipeline monitor: {args.current} does not exist", file=sys.stderr)
            return 2
        served = value_counts(table_batches(args.current, columns=["model_version"]), "model_version")
        window = args.current
    else:
        last = json.loads(state.read_text())["window_end"] if state.exists() else None
        window_start = datetime.fromisoformat(last) if last else now - timedelta(hours=args.lookback_hours)
        window_end = now
        served = request_log_versions(model_name, window_start, window_end)

    version = args.model_version
    if version is None and served:
        version = int(most_common(served))
    if version is None:
        available = _versions(model_name)
        version = available[-1] if available else None
    if version is None:
        print(
            f"pipeline monitor: no exported version of {model_name!r} under {paths.serving_base()}",
            file=sys.stderr,
        )
        return 2
    if args.current is None:
        window = iter_request_log(model_name, window_start, window_end, model_version=version)
    lineage = paths.serving_dir(model_name) / str(version) / "assets.extra" / "pipeline_metadata.json"
    if not lineage.exists():
        print(f"pipeline monitor: lineage file {lineage} not found", file=sys.stderr)
        return 2

    labels = read_table(args.labels) if args.labels else None
    result = run_monitor(
        config,
        window,
        lineage,
        labels=labels,
        window_start=window_start,
        window_end=window_end or now,
        report_dir=args.report_dir,
        log_mlflow=False if args.no_mlflow else None,
    )
    if args.current is None and not result.skipped:
        write_json_atomic(state, {"window_end": window_end.isoformat()})

    if args.json:
        print(result.to_json())
        return 0
    print(f"{model_name} v{version}: {result.n_current:,} rows - {result.drift_reason}")
    for name, f in {**result.features, **result.predictions}.items():
        h = f.headline
        effect = "-" if h.effect_size is None else f"{h.effect_size:.3f}"
        print(
            f"  {'DRIFT' if f.drift else 'ok   '} {name:<28} {h.test:<15} effect {effect:>7} (>= {h.threshold:g})"
        )
    if result.new_columns:
        print(f"  new columns (not monitored): {', '.join(result.new_columns)}")
    if result.performance and result.performance.get("evaluated"):
        print(
            f"  performance on {result.performance['n_labelled']} labelled rows: {result.performance['metrics']}"
            f" vs baseline {result.performance['baseline']}"
        )
    if args.report_dir:
        print(f"  report: {args.report_dir / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
