"""
### Training pipeline

Ingest → validate → split → preprocess → train → evaluate → export → register → deploy, on the data and model
named in the config (`conf/penguins.yaml` by default). Every stage is a plain function in `pipeline/`; each task only
loads the config, calls it inside the stage's MLflow run and hands the next task paths and ids.

The candidate is registered in MLflow; only when the evaluation gate blesses it does `deploy` serve it in a
sandbox, check its answers and latency, publish it to the serving directory and move `champion` (or `challenger`
in canary mode) and `models.config` (docs/deployment.md). Runs on its own timetable and whenever the drift
monitor emits `training_data_drift`.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pendulum
from airflow.sdk import (
    Asset, AssetAlias, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task,
)

from pipeline.assets import DRIFT_ASSET_NAME, MODEL_ASSET_NAME

DRIFT = Asset(DRIFT_ASSET_NAME)
SERVED_MODEL = Asset(MODEL_ASSET_NAME)
# The deploy task emits SERVED_MODEL through this alias only when it published a version (not when the gate
# refused the candidate): an alias lets a task decide at run time which events it emits.
PUBLISHED = AssetAlias(f"{MODEL_ASSET_NAME}_published")


def _ctx():
    """The run identity every stage keys its outputs by (imported lazily: pipeline.tasks is light anyway)."""
    from pipeline.tasks import RunContext, drift_run_params

    context = get_current_context()
    dag_run = context["dag_run"]
    logical = context.get("logical_date")
    params = drift_run_params(context["params"], [e.extra for e in context["triggering_asset_events"].get(DRIFT, [])])
    return params, RunContext(dag_run.dag_id, dag_run.run_id, logical.isoformat() if logical else None)


@contextmanager
def _fail_fast():
    """A bad config fails the task at once: a retry would read the same config (the run's snapshot)."""
    from airflow.sdk.exceptions import AirflowFailException

    from pipeline.config import ConfigError

    try:
        yield
    except ConfigError as exc:
        raise AirflowFailException(str(exc)) from exc


@dag(
    dag_id=Path(__file__).stem,
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 3 * * 1", timezone="UTC"), assets=[DRIFT]),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["training"],
    default_args={"retries": 1, "retry_delay": pendulum.duration(seconds=10)},
    params={
        "config": Param("", type="string", title="Config file",
                        description="YAML config; empty means conf/penguins.yaml, or defaults when a source is given"),
        "source": Param(None, type=["null", "string"], description="CSV or Parquet file overriding the config's source"),
        "label": Param(None, type=["null", "string"], description="label column overriding the config's label"),
        # the rule of pipeline.names.check_model_name, which the ingest task applies again
        "model_name": Param(None, type=["null", "string"], pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                            description="serving model name overriding the config's"),
        "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=10000),
        "batch_size": Param(None, type=["null", "integer"], minimum=1, maximum=65536),
        "learning_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=10),
        "max_minutes": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=10080,
                             description="time budget of the train task's fit (training.max_minutes)"),
        "seed": Param(None, type=["null", "integer"], minimum=0),
        "min_accuracy": Param(None, type=["null", "number"], minimum=0, maximum=1,
                              description="absolute accuracy floor of the evaluation gate"),
        "overrides": Param(None, type=["null", "object"],
                           description="dotted config keys and values applied last, e.g. the best parameters of "
                                       "a tuning run: {\"model.params.dropout\": 0.2, \"training.learning_rate\": 0.003}"),
    },
)
def training_pipeline():
    @task
    def ingest() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from pipeline.config import ConfigError
        from pipeline.ingest import IngestError
        from pipeline.tasks import ingest_task

        # A run triggered by the drift monitor appends the newly labelled rows named in the events' extra.
        events = get_current_context()["triggering_asset_events"].get(DRIFT, [])
        try:
            return ingest_task(*_ctx(), drift_events=[e.extra for e in events])
        except (IngestError, ConfigError) as exc:  # bad input or config: a retry would read the same
            raise AirflowFailException(str(exc)) from exc

    @task
    def validate(ingested: dict) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from pipeline.config import ConfigError
        from pipeline.tasks import validate_task
        from pipeline.validate import ValidationError

        try:
            return validate_task(*_ctx(), ingested)
        except (ValidationError, ConfigError) as exc:  # the data is what it is: a retry would spend the time twice
            raise AirflowFailException(str(exc)) from exc

    @task
    def split(ingested: dict, validated: dict) -> dict:
        from pipeline.tasks import split_task

        with _fail_fast():
            return split_task(*_ctx(), ingested, validated)

    @task
    def preprocess(splits: dict, validated: dict) -> dict:
        from pipeline.tasks import preprocess_task

        with _fail_fast():
            return preprocess_task(*_ctx(), splits, validated)

    # Keras' BackupAndRestore checkpoints every epoch under the run's directory: a retry resumes there.
    @task(retries=2)
    def train(splits: dict, preprocessed: dict) -> dict:
        from pipeline.tasks import train_task

        with _fail_fast():
            return train_task(*_ctx(), splits, preprocessed)

    @task
    def evaluate(splits: dict, preprocessed: dict, trained: dict) -> dict:
        from pipeline.tasks import evaluate_task

        with _fail_fast():
            return evaluate_task(*_ctx(), splits, preprocessed, trained)

    @task
    def export(ingested: dict, validated: dict, splits: dict, preprocessed: dict, trained: dict, evaluated: dict) -> dict:
        from pipeline.tasks import export_task

        with _fail_fast():
            return export_task(*_ctx(), ingested, validated, splits, preprocessed, trained, evaluated)

    @task
    def register(ingested: dict, evaluated: dict, exported: dict) -> dict:
        from pipeline.tasks import register_task

        with _fail_fast():
            return register_task(*_ctx(), ingested, evaluated, exported)

    @task(outlets=[PUBLISHED])
    def deploy(exported: dict, registered: dict) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from pipeline.config import ConfigError
        from pipeline.deploy import DeployError
        from pipeline.tasks import deploy_task

        try:
            result = deploy_task(*_ctx(), exported, registered)
        except (DeployError, ConfigError) as exc:  # a refused candidate stays refused: retrying would only repeat the checks
            raise AirflowFailException(str(exc)) from exc
        if result["deployed"]:  # a version was published: the served_model event, with what and where
            get_current_context()["outlet_events"][PUBLISHED].add(SERVED_MODEL, extra={
                k: result[k] for k in ("model_name", "version", "label", "published")})
        return result

    ingested = ingest()
    validated = validate(ingested)
    splits = split(ingested, validated)
    preprocessed = preprocess(splits, validated)
    trained = train(splits, preprocessed)
    evaluated = evaluate(splits, preprocessed, trained)
    exported = export(ingested, validated, splits, preprocessed, trained, evaluated)
    registered = register(ingested, evaluated, exported)
    deploy(exported, registered)


training_pipeline_dag = training_pipeline()  # at module level: `pipeline train` imports this file and runs it
