"""
### Tuning pipeline

Hyperparameter search over the config's `tuning:` section (docs/features.md, "Tuning"), then the final training
with the best parameters through the same gate and deploy stage as any run.

Ingest → validate → split → preprocess run once; then up to `MAX_ROUNDS` rounds, each a task group: `suggest`
asks the Optuna study (ask/tell, RDB storage) for a round of `tuning.trials_per_round` trials, `trial` is mapped
over them (one task per trial, run in parallel on whatever workers the executor has), `tell` records them. The
rounds are unrolled because a DAG's structure is fixed when it is parsed while the budget (`tuning.n_trials`)
comes with the run's config: once it is spent, `suggest` skips, and the skip runs down the remaining rounds.
`best` logs the study's best parameters; `train` → `evaluate` → `export` → `register` → `deploy` are the
training pipeline's own tasks, run with them as the `overrides` Param, on the same split and preprocessing.
"""
from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import Asset, AssetAlias, Param, TaskGroup, dag, get_current_context, task

from pipeline.assets import MODEL_ASSET_NAME
from pipeline.tuning import MAX_PARALLEL_TRIALS, MAX_ROUNDS

SERVED_MODEL = Asset(MODEL_ASSET_NAME)
PUBLISHED = AssetAlias(f"{MODEL_ASSET_NAME}_published")  # as in training_pipeline: emitted only when published


@dag(
    dag_id=Path(__file__).stem,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["training", "tuning"],
    default_args={"retries": 1, "retry_delay": pendulum.duration(seconds=10)},
    params={
        "config": Param("", type="string", title="Config file",
                        description="YAML config with a tuning: section; empty means conf/penguins.yaml"),
        "source": Param(None, type=["null", "string"], description="CSV or Parquet file overriding the config's source"),
        "label": Param(None, type=["null", "string"], description="label column overriding the config's label"),
        "model_name": Param(None, type=["null", "string"], pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                            description="serving model name overriding the config's"),
        "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=10000,
                        description="training.epochs of every trial and of the final training"),
        "max_minutes": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=10080,
                             description="time budget of each fit (training.max_minutes)"),
        "seed": Param(None, type=["null", "integer"], minimum=0),
    },
)
def tuning_pipeline():
    def stage(name: str, module: str = "pipeline.tasks", **task_kwargs):
        """The task ``name``: ``<module>.<name>_task(params, ctx, *upstream)``, the training pipeline's own stage
        functions (with ``tuned``, the best task's result, as the ``overrides`` Param)."""
        @task(task_id=name, **task_kwargs)
        def call(*upstream: dict, tuned: dict | None = None) -> dict:
            import importlib

            from pipeline.tuning.tasks import airflow_run, fail_fast

            with fail_fast():
                return getattr(importlib.import_module(module), f"{name}_task")(*airflow_run(tuned), *upstream)

        return call

    @task
    def suggest(splits: dict, validated: dict, previous: dict | None, round_no: int) -> list[dict]:
        from airflow.sdk.exceptions import AirflowSkipException

        from pipeline.tuning.tasks import airflow_run, fail_fast, suggest_task

        with fail_fast():
            suggested = suggest_task(*airflow_run(), splits, validated, previous, round_no=round_no)
        if not suggested["trials"]:  # the budget is spent: this round and the ones after it are skipped
            raise AirflowSkipException("tuning.n_trials trials asked: no more rounds")
        return suggested["trials"]  # a list: what the mapped trial tasks expand over

    # A trial that raises is recorded failed by the task itself; retries are for killed workers, and train the
    # same trial number again.
    @task(retries=2, max_active_tis_per_dagrun=MAX_PARALLEL_TRIALS)
    def trial(asked: dict, splits: dict, preprocessed: dict) -> dict:
        from pipeline.tuning.tasks import airflow_run, fail_fast, trial_task

        with fail_fast():
            return trial_task(*airflow_run(), asked, splits, preprocessed)

    @task(outlets=[PUBLISHED])
    def deploy(exported: dict, registered: dict, tuned: dict) -> dict:
        from pipeline.tasks import deploy_task
        from pipeline.tuning.tasks import airflow_run, fail_fast

        with fail_fast():
            result = deploy_task(*airflow_run(tuned), exported, registered)
        if result["deployed"]:
            get_current_context()["outlet_events"][PUBLISHED].add(SERVED_MODEL, extra={
                k: result[k] for k in ("model_name", "version", "label", "published")})
        return result

    ingested = stage("ingest")()
    validated = stage("validate")(ingested)
    splits = stage("split")(ingested, validated)
    preprocessed = stage("preprocess")(splits, validated)
    told, rounds = None, []
    for round_no in range(MAX_ROUNDS):
        with TaskGroup(f"round_{round_no}"):
            suggested = suggest(splits, validated, told, round_no)
            trials = trial.partial(splits=splits, preprocessed=preprocessed).expand(asked=suggested)
            # after every trial task, failed ones included; skipped with its round
            told = stage("tell", "pipeline.tuning.tasks", trigger_rule="all_done_min_one_success")(splits, suggested)
            trials >> told
        rounds.append(told)
    # after the last round that ran (the rounds after the budget are skipped)
    tuned = stage("best", "pipeline.tuning.tasks", trigger_rule="none_failed_min_one_success")(splits, validated)
    rounds >> tuned
    trained = stage("train", retries=2)(splits, preprocessed, tuned=tuned)
    evaluated = stage("evaluate")(splits, preprocessed, trained, tuned=tuned)
    exported = stage("export")(ingested, validated, splits, preprocessed, trained, evaluated, tuned=tuned)
    registered = stage("register")(ingested, evaluated, exported, tuned=tuned)
    deploy(exported, registered, tuned)


tuning_pipeline_dag = tuning_pipeline()  # at module level: `pipeline tune` imports this file and runs it
