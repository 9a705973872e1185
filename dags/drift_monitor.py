"""
### Drift monitor

Compares the traffic the model served since the previous monitor run (the serving request log, or a file given
as `current`) with the training data of the model version that served it, and retrains on drift:

resolve_window → analyse → decide → emit_drift

`analyse` writes the HTML report and the MLflow monitor run; `decide` applies the guards (cooldown since the last
retraining, cap per day, minimum of newly labelled rows, no trigger while `training_pipeline` is queued or
running); `emit_drift` emits the `training_data_drift` Asset event, with the drift summary and the newly labelled
rows in its extra, only when retraining is triggered, and is skipped otherwise. `training_pipeline` is scheduled
on that Asset. Hourly unless `PIPELINE_MONITOR_SCHEDULE` says otherwise (a cron, a preset, or `none`).
"""
from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from pipeline.assets import DRIFT_ASSET_NAME

DRIFT = Asset(DRIFT_ASSET_NAME)
TRAINING_DAG_ID = "training_pipeline"
# The schedule is fixed when the file is parsed, so it comes from the environment (like an Airflow Variable
# would) rather than from the config's monitoring.schedule, which would mean reading YAML at every parse.
SCHEDULE = os.environ.get("PIPELINE_MONITOR_SCHEDULE", "@hourly")


def _run():
    """The params and the identity of this DAG run."""
    context = get_current_context()
    return context, dict(context["params"]), context["dag_run"]


@dag(
    dag_id=Path(__file__).stem,
    schedule=None if SCHEDULE.lower() in ("", "none") else SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["monitoring"],
    default_args={"retries": 1, "retry_delay": pendulum.duration(seconds=10)},
    params={
        "config": Param("", type="string", title="Config file",
                        description="pipeline YAML with a monitoring: section; empty means conf/penguins.yaml"),
        "current": Param(None, type=["null", "string"],
                         description="CSV, Parquet or request-log JSONL file to analyse instead of the request log"),
        # the rule of pipeline.names.check_model_name, which resolve_window applies again
        "model_name": Param(None, type=["null", "string"], pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                            description="served model overriding the config's serving.model_name"),
        "model_version": Param(None, type=["null", "integer"], minimum=1,
                               description="reference version (default: the one that served most of the window)"),
        "labels": Param(None, type=["null", "string"],
                        description="late labels, a file or folder (default PIPELINE_HOME/labels/<model>/)"),
        "lookback_hours": Param(24, type="number", exclusiveMinimum=0, maximum=24 * 366,
                                description="how far back the window reaches when no monitor run succeeded before"),
        "labels_lookback_hours": Param(168, type="number", exclusiveMinimum=0, maximum=24 * 366,
                                       description="labelled served rows of this period go into a retraining"),
        "mlflow": Param(True, type="boolean", description="log the monitor run to MLflow"),
    },
)
def drift_monitor():
    @task
    def resolve_window() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from pipeline.monitoring.tasks import MonitorInputError, resolve_task
        from pipeline.names import check_model_name

        context, params, dag_run = _run()
        if params.get("model_name"):
            try:
                check_model_name(params["model_name"], "the model_name param")
            except ValueError as exc:  # a bad name stays bad: fail now rather than retry
                raise AirflowFailException(str(exc)) from exc
        end = context.get("data_interval_end") or context.get("logical_date") or dag_run.run_after
        try:  # a lazy proxy, of None when no run succeeded before
            previous_end = getattr(context.get("prev_data_interval_end_success"), "__wrapped__", None)
        except AttributeError:
            previous_end = None
        try:
            return resolve_task(params, dag_run.run_id, end, previous_end)
        except MonitorInputError as exc:  # no model or window to look at: a retry would find none either
            raise AirflowFailException(str(exc)) from exc

    @task
    def analyse(resolved: dict) -> dict:
        from pipeline.monitoring.tasks import analyse_task

        _, params, dag_run = _run()
        return analyse_task(params, dag_run.dag_id, dag_run.run_id, resolved)

    @task(inlets=[DRIFT])
    def decide(resolved: dict, analysed: dict) -> dict:
        from pipeline.monitoring.tasks import decide_task

        context, params, dag_run = _run()
        earlier = [{**(e.extra or {}), "timestamp": e.timestamp.isoformat()}
                   for e in context["inlet_events"][DRIFT].ascending(False).limit(200)]
        in_flight = context["ti"].get_dr_count(dag_id=TRAINING_DAG_ID, states=["queued", "running"]) > 0
        return decide_task(params, dag_run.run_id, resolved, analysed, earlier, in_flight)

    @task(outlets=[DRIFT])
    def emit_drift(decision: dict) -> dict:
        if not decision["retraining_triggered"]:
            raise AirflowSkipException(decision["reason"])
        if decision["already_emitted"]:
            raise AirflowSkipException("this monitor run has already emitted its drift event")
        get_current_context()["outlet_events"][DRIFT].extra = decision["event_extra"]
        return decision["event_extra"]

    resolved = resolve_window()
    analysed = analyse(resolved)
    emit_drift(decide(resolved, analysed))


drift_monitor_dag = drift_monitor()  # at module level: `pipeline monitor` imports this file and runs it
