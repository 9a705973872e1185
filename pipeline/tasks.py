"""The body of each Airflow task: the stage call and its logging, for the next task a small reference (paths,
ids, a few numbers). No data goes through XCom.

Each task is ``(params, ctx, *upstream)``: the run's ``params``, a :class:`RunContext` and the previous tasks'
references. :func:`stage_task` does what every task does first (read the run's config snapshot, find the DAG
run's MLflow run, open the stage's nested run) and hands the body a :class:`Stage`. Outputs go under paths keyed
by the DAG run, overwriting a previous attempt: retried tasks are idempotent. The stage logic itself lives in
the stage modules and knows nothing of Airflow or MLflow.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from pipeline import memory, paths, progress
from pipeline.config import PipelineConfig, from_dict, load_config

if TYPE_CHECKING:
    from pipeline.model_card import ModelCard

STAGES = ("ingest", "validate", "split", "preprocess", "train", "evaluate", "export", "register", "deploy")
# Params of the trigger form that override dotted config keys (see dags/training_pipeline.py).
PARAM_OVERRIDES = {
    "source": "source", "label": "label", "model_name": "serving.model_name", "epochs": "training.epochs",
    "batch_size": "training.batch_size", "learning_rate": "training.learning_rate", "seed": "split.seed",
    "max_minutes": "training.max_minutes",
    "min_accuracy": "gate.thresholds.accuracy",
}


@dataclass(frozen=True)
class RunContext:
    """Which DAG run a task belongs to; everything it writes is keyed by ``run_id``."""

    dag_id: str
    run_id: str
    logical_date: str | None = None

    @property
    def data_dir(self) -> Path:
        return paths.data_dir(self.run_id)

    @property
    def work_dir(self) -> Path:
        return paths.run_dir(self.run_id)


CONFIG_SNAPSHOT = "config.json"  # in the DAG run's data directory: the config every task of the run reads


def resolve_run_config(params: Mapping[str, Any] | None) -> PipelineConfig:
    """The config ``params`` name, read now: ``params["config"]`` (a YAML path; default conf/penguins.yaml) with
    the trigger form's overrides, then ``params["overrides"]`` (:func:`apply_run_overrides`). With a ``source``
    and ``label`` but no config file, every other setting is a default and the features are inferred from the
    data."""
    params = dict(params or {})
    return apply_run_overrides(_resolve_base_config(params), params.get("overrides"))


def apply_run_overrides(cfg: PipelineConfig, overrides: Any) -> PipelineConfig:
    """``cfg`` with the ``overrides`` Param applied: dotted config keys and their values
    (``{"model.params.dropout": 0.2, "training.learning_rate": 0.003}``: what ``pipeline tune`` found best).

    Raises:
        ConfigError: ``overrides`` is not a mapping of dotted keys, or names an unknown key or an invalid value.
    """
    from pipeline.config import ConfigError

    if not overrides:
        return cfg
    if not isinstance(overrides, Mapping) or not all(isinstance(k, str) and k for k in overrides):
        raise ConfigError(f"overrides: must be a mapping of dotted config keys to values, got {overrides!r}")
    try:
        return cfg.with_overrides(overrides)
    except ConfigError as exc:
        raise ConfigError(f"overrides: {exc}") from None


def _resolve_base_config(params: dict[str, Any]) -> PipelineConfig:
    """The config of ``params`` before its ``overrides`` Param (see :func:`resolve_run_config`)."""
    overrides = {PARAM_OVERRIDES[k]: v for k, v in params.items() if k in PARAM_OVERRIDES and v not in (None, "")}
    if params.get("config"):
        return load_config(params["config"], overrides)
    if params.get("source") and params.get("label"):
        named = {"name": params["model_name"]} if params.get("model_name") else {}  # else from the file's name
        base = from_dict({**named, "source": params["source"], "label": params["label"]})
        return base.with_overrides({k: v for k, v in overrides.items() if k not in ("source", "label")})
    return load_config(None, overrides)


def load_run_config(params: Mapping[str, Any] | None, ctx: RunContext | None = None) -> PipelineConfig:
    """The config of a run. With ``ctx`` it is resolved once per DAG run (:func:`resolve_run_config`, by the
    first task) and snapshotted as ``<data dir>/config.json``; later tasks and retries read that snapshot, so
    editing the YAML file mid-run changes nothing of the run. A snapshot resolved from other params (a run id
    used again with new params) is replaced. Without ``ctx`` the config is read now.

    Raises:
        ConfigError: the config (or the snapshot) is invalid; a retry would read the same.
    """
    if ctx is None:
        return resolve_run_config(params)
    params = dict(params or {})
    # Applied on top of the snapshot by every task, not part of it: the final training of a tuning run reads the
    # run's snapshot with the best parameters over it (pipeline.tuning).
    overrides = params.pop("overrides", None)
    return apply_run_overrides(_snapshot_config(params, ctx), overrides)


def _snapshot_config(params: dict[str, Any], ctx: RunContext) -> PipelineConfig:
    """The run's config snapshot of ``params`` (without ``overrides``), resolved and written by the first task."""
    from pipeline.config import ConfigError

    path = ctx.data_dir / CONFIG_SNAPSHOT
    key = json.loads(json.dumps(dict(params or {}), default=str, sort_keys=True))
    try:
        snapshot = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        snapshot = None  # written atomically, so only a foreign file: resolve again
    if isinstance(snapshot, dict) and snapshot.get("params") == key:
        try:
            return from_dict(snapshot["config"])
        except ConfigError as exc:
            raise ConfigError(f"config snapshot {path}: {exc}") from None
    cfg = _resolve_base_config(params)
    _write_json(path, {"params": key, "config": cfg.to_dict()})
    return cfg


def drift_run_params(params: Mapping[str, Any], drift_events: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    """The params of a run triggered by the drift monitor: without a config of its own, it takes the config the
    monitor ran with (``config`` in the events' extra), so that retraining uses the same data, model and gate."""
    params = dict(params or {})
    if not params.get("config") and not params.get("source"):
        configs = [e.get("config") for e in drift_events if e and e.get("config")]
        if configs:
            params["config"] = configs[-1]
    return params


@dataclass(frozen=True)
class Stage:
    """What a stage's task body is handed: the run's resolved config, its identity, and the DAG run's MLflow run
    (``parent_run_id``; the stage's own nested run is the active MLflow run while the body runs)."""

    cfg: PipelineConfig
    ctx: RunContext
    parent_run_id: str


def stage_task(name: str, mlflow_run: bool = True) -> Callable:
    """Turn ``body(stage: Stage, *upstream, **kw) -> dict`` into the task ``(params, ctx, *upstream, **kw) ->
    dict``: the config is read from the run's snapshot (:func:`load_run_config`), the DAG run's MLflow run is
    taken from the first upstream reference (or found or created, for the first stage), the stage's nested
    MLflow run is active around the body (unless ``mlflow_run`` is false: the stage opens its own), and the
    returned reference carries ``parent_run_id`` for the next task. With ``execution.task_processes: own`` a
    TensorFlow stage does all of that in a child process (``pipeline.task_process``)."""
    def wrap(body: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        @functools.wraps(body)
        def task(params: Mapping[str, Any], ctx: RunContext, *upstream: Mapping[str, Any], **kw: Any) -> dict[str, Any]:
            from pipeline import task_process, tracking

            cfg = load_run_config(params, ctx)
            if task_process.wanted(name, cfg.execution.task_processes):
                return task_process.run(task, params, ctx, upstream, kw)
            if upstream:
                parent = upstream[0]["parent_run_id"]
            else:
                parent = tracking.parent_run(cfg.name, ctx.dag_id, ctx.run_id, ctx.logical_date, cfg.to_dict())
            current = Stage(cfg, ctx, parent)
            if not mlflow_run:
                out = {"parent_run_id": parent, **body(current, *upstream, **kw)}
                stage_run = tracking.stage_run_id(parent, name) if task_process.in_child() else None
                if stage_run:
                    tracking.client().set_tag(stage_run, task_process.PID_TAG, str(os.getpid()))
                return out
            with tracking.stage_run(parent, name):
                if task_process.in_child():  # which process ran the stage, on its run
                    import mlflow

                    mlflow.set_tag(task_process.PID_TAG, str(os.getpid()))
                return {"parent_run_id": parent, **body(current, *upstream, **kw)}

        task.stage = name
        return task

    return wrap


def _write_json(path: Path, payload: Any) -> str:
    from pipeline.atomic import write_json_atomic

    return str(write_json_atomic(path, payload, indent=2, default=str))


def _read_frame(path: str):
    import pandas as pd

    return pd.read_parquet(path)


@stage_task("ingest")
def ingest_task(st: Stage, drift_events: Sequence[Mapping[str, Any] | None] = ()) -> dict[str, Any]:
    """Snapshot the configured source; a run triggered by the drift monitor appends the newly labelled rows
    that its ``drift_events`` (the triggering Asset events' extras) name."""
    import mlflow
    from mlflow.entities import DatasetInput, InputTag

    from pipeline import tracking
    from pipeline.ingest import ingest
    from pipeline.monitoring.loop import append_labelled, labelled_data_paths

    cfg = st.cfg
    mlflow.log_params({"source": cfg.source, "label": cfg.label})
    snap = ingest(cfg.source, st.ctx.data_dir, label=cfg.label, images=cfg.images)
    labelled = labelled_data_paths(drift_events, cfg.serving.model_name)
    if labelled:
        source_rows = snap.rows
        snap = append_labelled(snap, labelled)
        mlflow.log_params({"labelled_data": ",".join(labelled)[:6000], "source_rows": source_rows})
    from pipeline.datasets import iter_frames

    # the snapshot's first rows: the dataset's schema and digest (the source's) need no more, and a snapshot
    # larger than memory is never read whole (its profile in MLflow counts these rows; the run's metric all)
    df = next(iter_frames(snap.path, batch_rows=10_000))
    dataset = mlflow.data.from_pandas(df, source=snap.source, name=cfg.name, targets=cfg.label
                                      if cfg.label in df.columns else None, digest=snap.digest[:16])
    mlflow.log_input(dataset, context="training")
    # On the parent run too, so the runs table shows which data each DAG run trained on.
    tracking.client().log_inputs(st.parent_run_id, datasets=[
        DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "training")])])
    mlflow.log_metrics({"rows": snap.rows, "columns": len(snap.columns)})
    mlflow.log_params({"snapshot": snap.path, "digest": snap.digest})
    from pipeline.images.snapshot import MANIFEST_FILE, SUMMARY_FILE

    images = Path(snap.path).with_name(SUMMARY_FILE)
    if images.is_file():  # an image source: the files' summary and manifest beside the snapshot
        facts = json.loads(images.read_text())
        mlflow.log_artifact(str(images))
        mlflow.log_artifact(str(images.with_name(MANIFEST_FILE)))
        mlflow.log_metrics({"images_converted_channels": facts["converted_channels_count"],
                            "images_duplicates": facts["duplicates"], "classes": len(facts["classes"])})
    return {"snapshot": snap.path, "digest": snap.digest, "rows": snap.rows, "source": snap.source,
            "labelled_data": labelled}


@stage_task("validate")
def validate_task(st: Stage, ingested: Mapping[str, Any]) -> dict[str, Any]:
    """Check the snapshot against the champion's schema (or infer one on a first run) and decide each column's
    feature kind; blocking anomalies raise :class:`pipeline.validate.ValidationError`."""
    import mlflow

    from pipeline import registry
    from pipeline.export import SCHEMA_FILE
    from pipeline.validate import ValidationError, feature_table, load_schema, validate_parquet

    cfg = st.cfg
    champion = registry.champion_dir(cfg.serving.model_name)
    ref_path = champion[1] / "assets.extra" / SCHEMA_FILE if champion else None
    reference = load_schema(ref_path) if ref_path is not None and ref_path.exists() else None
    mlflow.log_param("reference_schema", f"champion v{champion[0]}" if reference else "none (first run: inferred)")
    split_columns = tuple(c for c in (cfg.split.key_column, cfg.split.time_column) if c)
    try:
        # kinds inferred on a bounded sample, every statistic streamed over the snapshot's record batches
        result = validate_parquet(ingested["snapshot"], cfg.label, cfg.task, cfg.features, cfg.labels,
                                  not_features=split_columns, reference=reference, source=ingested["source"])
    except ValidationError as exc:
        mlflow.log_dict({"anomalies": [a.__dict__ for a in exc.anomalies]}, "anomalies.json")
        raise
    schema_path = _write_json(st.ctx.data_dir / "schema.json", result.schema)
    mlflow.log_dict(result.schema, "schema.json")
    mlflow.log_dict(result.report(), "anomalies.json")
    mlflow.log_text(feature_table(result.schema), "features.md")
    kinds = result.schema["features"]["kinds"]
    counts = {k: sum(1 for v in kinds.values() if v == k) for k in sorted(set(kinds.values()))}
    mlflow.log_params({"task": result.schema["features"]["task"],
                       "feature_kinds": ", ".join(f"{k}={v}" for k, v in counts.items()),
                       "excluded_columns": ", ".join(result.schema["features"]["excluded"])[:6000] or "none"})
    mlflow.log_metrics({"anomalies_blocking": len(result.blocking), "anomalies_total": len(result.anomalies),
                        "features": len(kinds), **{f"features_{k}": v for k, v in counts.items()}})
    for anomaly in result.anomalies:
        print(f"validate: warning: {anomaly.column}: {anomaly.message}")
    for col, kind in kinds.items():
        why = result.schema["columns"][col].get("why") or "pinned in the config"
        print(f"validate: feature {col}: {kind} ({why})")
    return {"schema": schema_path, "features": result.schema["features"]}


@stage_task("split")
def split_task(st: Stage, ingested: Mapping[str, Any], validated: Mapping[str, Any]) -> dict[str, Any]:
    """Train, validation and test parts of the labelled rows (``split`` config: stratified, random, hash-keyed
    or by time), written as Parquet under the run's work directory."""
    import mlflow

    from pipeline.split import (STREAMED_STRATEGIES, class_balance, prepare_labels, split_frame, split_parquet,
                                write_splits)

    cfg, features = st.cfg, validated["features"]
    label, task = features["label"], features["task"]
    mlflow.log_params({f"split_{k}": v for k, v in cfg.split.__dict__.items()})
    if cfg.split.strategy in STREAMED_STRATEGIES:  # record batch by record batch: the table is never whole
        summary = split_parquet(ingested["snapshot"], st.ctx.work_dir / "split", label, cfg.split, task, cfg.labels)
        out, dropped, rows, balance = summary.paths, summary.dropped, summary.rows, summary.balance
    else:
        frame = _read_frame(ingested["snapshot"])
        labelled, dropped = prepare_labels(frame, label, task, cfg.labels)
        parts = split_frame(labelled, label, cfg.split, task, cfg.labels)
        out = write_splits(parts, st.ctx.work_dir / "split")
        rows = {k: len(v) for k, v in parts.items()}
        balance = class_balance(parts, label) if task == "classification" else {}
    mlflow.log_metrics(dropped)
    if dropped["rows_without_label"]:
        print(f"split: warning: {dropped['rows_without_label']} rows without a label dropped")
    mlflow.log_metrics({f"rows_{k}": v for k, v in rows.items()})
    if task == "classification":
        mlflow.log_dict(balance, "class_balance.json")
        mlflow.log_metrics({f"share_{s}_{c}": v for s, shares in balance.items() for c, v in shares.items()})
    return dict(out)


@stage_task("preprocess")
def preprocess_task(st: Stage, splits: Mapping[str, Any], validated: Mapping[str, Any]) -> dict[str, Any]:
    """Fit the encodings (normalization, vocabularies, value ids, text) on the training part only."""
    import mlflow

    from pipeline.features import FeatureSpec
    from pipeline.preprocess import fit_preprocessing_parquet, save_preprocessing

    spec = FeatureSpec.from_dict(validated["features"])
    # a bounded sample of a large training split, its classes counted over every row
    meta = fit_preprocessing_parquet(splits["train"], spec, st.cfg.features, seed=st.cfg.training.seed)
    out = save_preprocessing(meta, st.ctx.work_dir / "preprocess")
    memory.release()
    mspec = meta.model_spec()
    mlflow.log_params({"numeric_features": ",".join(spec.numeric)[:6000],
                       "string_features": ",".join(spec.categorical)[:6000],
                       "task": spec.task, "n_classes": len(meta.class_names), "numeric_width": mspec.numeric_width,
                       "embedded_columns": len(mspec.categorical), "text_columns": len(mspec.text)})
    mlflow.log_dict({"encodings": meta.summary(), "class_names": meta.class_names,
                     "class_counts": meta.class_counts}, "preprocessing.json")
    return dict(out)


@stage_task("train")
def train_task(st: Stage, splits: Mapping[str, Any], preprocessed: Mapping[str, Any]) -> dict[str, Any]:
    """Fit the configured Keras model (resuming from the attempt's checkpoint on a retry), every epoch logged."""
    import mlflow

    from pipeline import tracking
    from pipeline.preprocess import PreprocessMeta
    from pipeline.train import train

    cfg = st.cfg
    mlflow.log_params({"builder": cfg.model.module or cfg.model.builder,
                       **{f"model_{k}": v for k, v in cfg.model.params.items()},
                       **{f"training_{k}": v for k, v in cfg.training.__dict__.items()}})
    epochs = tracking.EpochLogger()
    try:
        # the split's Parquet files, read batch by batch: a training split larger than memory still trains
        result = train(splits["train"], splits["val"], PreprocessMeta.load(preprocessed["meta"]), cfg.model,
                       cfg.training, st.ctx.work_dir / "train", seed=cfg.training.seed,
                       callbacks=[epochs, progress.keras_callback()])
    finally:
        epochs.flush()  # the epochs of a failed attempt too
    mlflow.log_metrics({"batch_size": result.batch_size, "planned_epochs": result.planned_epochs})
    mlflow.log_params({"strategy": result.strategy, "precision_policy": result.precision_policy})
    mlflow.log_metrics({"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                        "resumed_from_epoch": result.resumed_from_epoch})
    tracking.log_figure(tracking.training_curve_figure(result.history), "training_curves.png")
    if result.tensorboard_dir:  # training.tensorboard: `pipeline tensorboard <this run's id>` opens them
        from pipeline.train import TENSORBOARD_DIR

        mlflow.log_artifacts(result.tensorboard_dir, TENSORBOARD_DIR)
    memory.release()  # the training data and the fit's tensors are gone: hand their pages back before evaluate
    return {"model": result.model_path, "epochs_run": result.epochs_run}


@stage_task("evaluate")
def evaluate_task(st: Stage, splits: Mapping[str, Any], preprocessed: Mapping[str, Any],
                  trained: Mapping[str, Any]) -> dict[str, Any]:
    """Score the candidate on the test part, and the champion on the same rows; the gate decides the blessing."""
    import mlflow
    import numpy as np

    from pipeline import evaluate as ev
    from pipeline import registry, tracking
    from pipeline.atomic import atomic_path
    from pipeline.export import ExportError, predict_keras, predict_saved_model
    from pipeline.preprocess import PreprocessMeta
    from pipeline.train import load_model

    cfg = st.cfg
    meta = PreprocessMeta.load(preprocessed["meta"])
    spec = meta.feature_spec
    model = load_model(trained["model"], meta, cfg.model)
    predictors = {"candidate": lambda frame: predict_keras(model, frame, meta)}
    champion = registry.champion_dir(cfg.serving.model_name)
    champion_version = champion[0] if champion is not None else None
    champion_loaded, champion_note = None, "no champion"
    if champion is not None:
        import tensorflow as tf

        try:
            champion_loaded = tf.saved_model.load(str(champion[1]))  # once, not once a batch
            predictors["champion"] = lambda frame: predict_saved_model(champion_loaded, frame, spec)
        except (OSError, ValueError) as exc:
            champion_note = f"champion v{champion_version} could not be loaded: {exc}"
    # record batch by record batch: only the labels and the predictions of the test split are held
    scored = ev.score_split(splits["test"], meta, predictors, catch=(ExportError, KeyError, ValueError))
    y, pred = scored.y, scored.predictions["candidate"]

    def score(p):
        if spec.task == "classification":
            return ev.classification_metrics(y, p, meta.class_names)
        return ev.regression_metrics(y, p)

    metrics = score(pred)
    champion_metrics = None
    if "champion" in scored.predictions:
        champion_metrics = score(scored.predictions["champion"])
        champion_note = f"champion v{champion_version} scored on the same test split"
    elif "champion" in scored.errors:
        champion_note = f"champion v{champion_version} could not be scored on this data: {scored.errors['champion']}"
    del champion_loaded
    gate = ev.resolve_gate(cfg.gate, spec.task)
    decision = ev.decide_blessing(metrics, gate, champion_metrics)
    # On the test split as a dataset: the export logs the same metrics on the logged model, on this dataset.
    dataset = tracking.test_dataset(scored.head, splits["test"], cfg.name, spec.label, rows=scored.rows)
    mlflow.log_input(dataset, context=tracking.TEST_CONTEXT)
    mlflow.log_metrics(metrics, dataset=dataset)
    if champion_metrics:
        mlflow.log_metrics({f"champion_{k}": v for k, v in champion_metrics.items()}, dataset=dataset)
    mlflow.log_params({"champion": champion_note, "gate_metric": gate.metric})
    mlflow.set_tag("blessed", str(decision.blessed).lower())
    mlflow.log_dict(decision.to_dict(), "gate_decision.json")
    out_dir = st.ctx.work_dir / "evaluate"
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.task == "classification":
        plot = "confusion_matrix.png"
        tracking.log_figure(ev.confusion_matrix_figure(y, pred.argmax(axis=1), meta.class_names), plot, out_dir / plot)
    else:
        plot = "residuals.png"
        tracking.log_figure(ev.residual_figure(y, pred), plot, out_dir / plot)
    # The DAG run's own run carries the headline, so the runs table compares DAG runs one row each.
    tracking.log_run_summary(st.parent_run_id, metrics={
        f"test_{gate.metric}": metrics.get(gate.metric),
        f"champion_{gate.metric}": (champion_metrics or {}).get(gate.metric),
        "training_seconds": tracking.stage_seconds(st.parent_run_id, "train")},
        tags=_gate_tags(decision.to_dict(), gate.metric))
    with atomic_path(out_dir / "predictions.npy", suffix=".npy") as tmp:
        np.save(tmp, pred)
    _write_json(out_dir / "metrics.json", {
        "metrics": metrics, "champion_metrics": champion_metrics, "decision": decision.to_dict(),
        "champion_version": champion_version, "champion_note": champion_note,
        "gate": {"metric": gate.metric, "thresholds": dict(gate.thresholds), "max_regression": gate.max_regression},
        "test_rows": scored.rows, "test_dataset": dataset.name, "plots": {plot: str(out_dir / plot)}})
    for reason in decision.reasons:
        print(f"evaluate: {reason}")
    return {"blessed": decision.blessed, "metric": {gate.metric: metrics.get(gate.metric)},
            "champion_version": champion_version, "metrics_file": str(out_dir / "metrics.json"),
            "predictions": str(out_dir / "predictions.npy"), "run_id": mlflow.active_run().info.run_id}


def _gate_tags(decision: Mapping[str, Any], gate_metric: str) -> dict[str, str]:
    """The gate's decision (``GateDecision.to_dict()``) as tags (``tracking.GATE_TAGS``): columns of the runs
    table (on each DAG run's run) and of the Models tab (on each logged model)."""
    return {"blessed": str(decision["blessed"]).lower(),
            "gate.decision": "blessed" if decision["blessed"] else "not blessed",
            "gate.metric": gate_metric, "gate.reason": "; ".join(decision["reasons"])[:5000]}


@stage_task("export")
def export_task(st: Stage, ingested: Mapping[str, Any], validated: Mapping[str, Any], splits: Mapping[str, Any],
                preprocessed: Mapping[str, Any], trained: Mapping[str, Any],
                evaluated: Mapping[str, Any]) -> dict[str, Any]:
    """Write the candidate SavedModel (raw-feature signature, warmup requests, lineage) to a staging directory
    keyed by the DAG run, check it answers like the Keras model, and log it to MLflow as a checked pyfunc."""
    import shutil

    import mlflow
    import pandas as pd

    from pipeline import registry, tracking
    from pipeline.export import write_candidate
    from pipeline.preprocess import PreprocessMeta, feature_arrays
    from pipeline.pyfunc import log_pyfunc
    from pipeline.train import load_model, release_loaded_model

    cfg, ctx = st.cfg, st.ctx
    meta = PreprocessMeta.load(preprocessed["meta"])
    spec = meta.feature_spec
    staging_root = paths.serving_dir(cfg.serving.model_name)
    from pipeline.datasets import sample_frame

    # the export is checked against the Keras model on the test split, or on a uniform sample of 10,000 of its
    # rows: enough rows to catch a difference; a larger test split is never read whole, and the SavedModel's
    # signature, called on all of them at once, holds their processed features (TF-IDF: 12 KB a row) at once
    test = sample_frame(splits["test"], 10_000, seed=0)
    evaluation = json.loads(Path(evaluated["metrics_file"]).read_text())
    metrics = evaluation["metrics"]
    metadata = {
        "model_name": cfg.serving.model_name, "task": spec.task, "label": spec.label,
        "features": {"numeric": list(spec.numeric), "categorical": list(spec.categorical),
                     "kinds": {k: spec.kind(k) for k in spec.names}},
        "class_names": meta.class_names, "dag_id": ctx.dag_id, "dag_run_id": ctx.run_id,
        "mlflow_run_id": st.parent_run_id,
        "dataset": {"snapshot": ingested["snapshot"], "digest": ingested["digest"], "rows": ingested["rows"],
                    "source": ingested["source"]},
        "train_split": splits["train"], "test_split": splits["test"], "schema": validated["schema"],
        "metrics": metrics, "blessed": evaluated["blessed"],
    }
    schema = json.loads(Path(validated["schema"]).read_text())
    # A retry replaces its own earlier staging copy: the directory is keyed by the DAG run.
    staging = staging_root / f".staging-{paths.safe_key(ctx.run_id)}"
    shutil.rmtree(staging, ignore_errors=True)
    tmp, diff = write_candidate(load_model(trained["model"], meta, cfg.model), meta, test, staging_root, metadata, schema)
    tmp.rename(staging)
    mlflow.log_metric("export_max_abs_diff", diff)
    # Named after the served model and the version the register task, next, gives it: the Models tab's rows
    # and its charts' legends tell candidates apart by it.
    c = tracking.client()
    version = registry.next_version(cfg.serving.model_name)
    name = tracking.logged_model_name(cfg.serving.model_name, version)
    # Raises unless what MLflow stored loads and answers the example (rather than assume it does).
    info = log_pyfunc(staging, pd.DataFrame(feature_arrays(test.head(5), spec)), name=name)
    release_loaded_model()
    memory.release()  # before deploy starts the sandbox server beside this process
    # The evaluation's metrics on the logged model, from the evaluate run, on the test split's dataset: the
    # Models tab's columns. (A result of evaluate without its run id predates this: the metrics go on this run.)
    evaluate_run = evaluated.get("run_id") or mlflow.active_run().info.run_id
    tracking.log_model_metrics(info.model_id, evaluate_run, tracking.run_dataset(evaluate_run), metrics,
                               evaluation.get("champion_metrics"))
    gate_metric = (evaluation.get("gate") or {}).get("metric") or next(iter(evaluated["metric"]))
    c.set_logged_model_tags(info.model_id, {**_gate_tags(evaluation["decision"], gate_metric),
                                            "airflow.dag_id": ctx.dag_id, "airflow.run_id": ctx.run_id})
    c.log_model_params(info.model_id, {"builder": cfg.model.module or cfg.model.builder,
                                       **{f"model_{k}": str(v)[:6000] for k, v in cfg.model.params.items()},
                                       "epochs_run": str(trained.get("epochs_run", "")),
                                       "learning_rate": str(cfg.training.learning_rate),
                                       "dataset_digest": ingested["digest"][:16]})
    card = _model_card(st, ingested, schema, evaluation, info, evaluate_run)
    card_file = _write_json(ctx.work_dir / "export" / "model_card.json", card.to_dict())
    return {"staging": str(staging), "model_uri": info.model_uri, "max_abs_diff": diff, "model_id": info.model_id,
            "logged_model_name": name, "expected_version": version, "model_card": card_file}


def _model_card(st: Stage, ingested: Mapping[str, Any], schema: Mapping[str, Any], evaluation: Mapping[str, Any],
                info: Any, evaluate_run: str) -> "ModelCard":
    """The facts of the candidate's model card (``pipeline.model_card``) as the export knows them: the version
    and the deploy outcome are filled in by the register and deploy tasks."""
    import mlflow

    from pipeline import tracking
    from pipeline.model_card import ModelCard

    cfg, ctx = st.cfg, st.ctx
    features = schema["features"]
    kinds = {col: {"kind": kind, "why": schema["columns"].get(col, {}).get("why") or ""}
             for col, kind in features["kinds"].items()}
    excluded = [f"{col}: {c['excluded']}" for col, c in schema["columns"].items() if c.get("excluded")]
    plots = dict(evaluation.get("plots") or {})
    train_run = tracking.stage_run_id(st.parent_run_id, "train")
    if train_run:
        try:  # the training curves, for the card: the train stage logged them
            plots["training_curves.png"] = mlflow.artifacts.download_artifacts(
                run_id=train_run, artifact_path="training_curves.png", dst_path=str(ctx.work_dir / "export"))
        except Exception as exc:  # noqa: BLE001 - a card without this plot is still a card
            print(f"export: warning: no training curves for the model card ({type(exc).__name__}: {exc})")
    d, run = cfg.deploy, mlflow.active_run()
    return ModelCard(
        model_name=cfg.serving.model_name, task=features["task"], label=features["label"], features=kinds,
        excluded=excluded, metrics=evaluation["metrics"], champion_metrics=evaluation.get("champion_metrics"),
        champion_version=evaluation.get("champion_version"), champion_note=evaluation.get("champion_note", ""),
        gate=evaluation.get("gate") or {}, decision=evaluation["decision"], plots=plots,
        data={"rows": ingested["rows"], "source": ingested["source"], "digest": ingested["digest"],
              "snapshot": ingested["snapshot"], "test_rows": evaluation.get("test_rows"),
              "test_dataset": evaluation.get("test_dataset")},
        deploy_checks={"max_abs_diff": d.max_abs_diff, "latency_budget_ms": d.latency_budget_ms,
                       "latency_requests": d.latency_requests, "allow_signature_change": d.allow_signature_change,
                       "canary": d.canary},
        lineage={"dag_id": ctx.dag_id, "dag_run_id": ctx.run_id, "experiment_id": run.info.experiment_id,
                 "parent_run_id": st.parent_run_id, "evaluate_run_id": evaluate_run, "export_run_id": run.info.run_id,
                 "model_id": info.model_id, "logged_model_name": info.name})


@stage_task("register")
def register_task(st: Stage, ingested: Mapping[str, Any], evaluated: Mapping[str, Any],
                  exported: Mapping[str, Any]) -> dict[str, Any]:
    """Register the logged model as a new version of the served model's registered model (found again, not
    registered twice, on a retry), and describe it there: the version's description (data, metrics against the
    champion, the gate's decision, lineage), the registered model's table of versions, the model card. Publishing
    and the aliases are the deploy task's: registering never changes what is served."""
    import mlflow

    from pipeline import registry, tracking

    name, ctx, parent = st.cfg.serving.model_name, st.ctx, st.parent_run_id
    blessed = str(evaluated["blessed"]).lower()
    c = tracking.client()
    existing = c.search_model_versions(f"name = '{name}' and tags.`airflow.run_id` = '{ctx.run_id}'")
    mv = existing[0] if existing else mlflow.register_model(exported["model_uri"], name, tags={
        "airflow.dag_id": ctx.dag_id, "airflow.run_id": ctx.run_id, "dataset_digest": ingested["digest"],
        "blessed": blessed, "mlflow_parent_run_id": parent})
    version = int(mv.version)
    mlflow.log_params({"registered_model": name, "version": version})
    mlflow.set_tags({"blessed": blessed, "model_version": str(version)})
    tracking.log_run_summary(parent, metrics={"rows": ingested["rows"]},
                             tags={"model_version": str(version), "blessed": blessed})
    model_id = exported.get("model_id")
    if model_id:
        tags = {"model_version": str(version), "registered_model": name}
        expected = exported.get("expected_version")
        if expected is not None and int(expected) != version:
            tags["pipeline.name_note"] = (f"named {exported.get('logged_model_name')} for version {expected}, "
                                          f"registered as version {version} (another run registered in between)")
            print(f"register: warning: {tags['pipeline.name_note']}")
        c.set_logged_model_tags(model_id, tags)
    experiment = c.get_run(parent).info.experiment_id
    if exported.get("model_card") and Path(exported["model_card"]).is_file():
        import dataclasses

        from pipeline.model_card import ModelCard, version_description

        card = ModelCard.from_dict(json.loads(Path(exported["model_card"]).read_text()))
        card = dataclasses.replace(card, version=version)
        _write_json(Path(exported["model_card"]), card.to_dict())  # the deploy task adds its outcome to this
        lineage = card.lineage
        links = {"dag_run": _airflow_run_url(ctx.dag_id, ctx.run_id), "parent": tracking.run_link(experiment, parent),
                 "evaluate": tracking.run_link(experiment, lineage.get("evaluate_run_id", "")),
                 "export": tracking.run_link(experiment, lineage.get("export_run_id", "")),
                 "model": tracking.logged_model_link(experiment, model_id) if model_id else ""}
        registry.describe_version(name, version, version_description(card, links))
        _log_model_card(card, st)
        _describe_versions(name, card.task, card.gate.get("metric") or "")
    gate_metric = next(iter(evaluated["metric"]))
    tracking.save_runs_view(experiment, [f"test_{gate_metric}", f"champion_{gate_metric}", "rows",
                                         "training_seconds"], ("model_version", *tracking.GATE_TAGS))
    return {"model_name": name, "version": version, "blessed": evaluated["blessed"]}


def _airflow_run_url(dag_id: str, run_id: str) -> str:
    """The DAG run's page in the Airflow UI (``AIRFLOW__API__BASE_URL``, else ``pipeline airflow``'s address)."""
    import os
    from urllib.parse import quote

    base = os.environ.get("AIRFLOW__API__BASE_URL") or "http://127.0.0.1:8080"
    return f"{base.rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def _log_model_card(card: "ModelCard", st: Stage) -> None:
    """Log the card as ``model_card.html`` with the logged model and on the DAG run's run (replacing an earlier
    one: the deploy task logs it again with its outcome)."""
    from pipeline import tracking
    from pipeline.model_card import CARD_FILE, render_html

    out = st.ctx.work_dir / "model_card" / CARD_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(card), encoding="utf-8")
    c = tracking.client()
    if card.lineage.get("model_id"):
        c.log_model_artifact(card.lineage["model_id"], str(out))
    c.log_artifact(st.parent_run_id, str(out))


def _describe_versions(model_name: str, task: str, gate_metric: str, last: int = 15) -> None:
    """The registered model's description: its ``last`` versions side by side, each with the metrics its logged
    model carries (``pipeline.model_card.versions_table``)."""
    from datetime import datetime, timezone

    from mlflow.exceptions import MlflowException

    from pipeline import registry, tracking
    from pipeline.model_card import headline_metrics, versions_table

    c = tracking.client()
    rows = []
    for mv in c.search_model_versions(f"name = '{model_name}'", max_results=last, order_by=["version_number DESC"]):
        metrics: dict[str, float] = {}
        if model_id := registry.logged_model_id(mv):
            try:
                metrics = {m.key: m.value for m in c.get_logged_model(model_id).metrics or []}
            except MlflowException:
                pass  # a version of a model logged elsewhere: no metrics to show
        rows.append({"version": int(mv.version), "blessed": {"true": True, "false": False}.get(mv.tags.get("blessed")),
                     "metrics": metrics, "champion_metric": metrics.get(f"champion_{gate_metric}"),
                     "registered": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc)
                     .strftime("%Y-%m-%d %H:%M")})
    union = {k: v for row in rows for k, v in row["metrics"].items() if not k.startswith("champion_")}
    keys = headline_metrics(task, union, gate_metric)[:5]
    registry.describe_model(model_name, versions_table(rows, keys, gate_metric))


@stage_task("deploy", mlflow_run=False)  # pipeline.deploy opens the stage's run itself
def deploy_task(st: Stage, exported: Mapping[str, Any], registered: Mapping[str, Any]) -> dict[str, Any]:
    """Deploy the registered version if it is blessed (``pipeline.deploy``); an unblessed one is only dropped
    from staging. The DAG run's MLflow run is finished here, the last stage. The model card gets the outcome."""
    import shutil

    from pipeline import deploy, registry

    name, version = registered["model_name"], registered["version"]
    staging = Path(exported["staging"])
    if not registered["blessed"]:
        shutil.rmtree(staging, ignore_errors=True)  # registered for comparison, never where a server looks
        source = None  # nothing is deployed: no SavedModel to find (an unblessed version has no serving copy)
    else:  # a retry finds the staging copy (kept when a deploy fails) or the published directory
        source = staging if staging.exists() else registry.saved_model_dir(name, version)
    try:
        result = deploy.run_deploy_stage(st.cfg.deploy, st.parent_run_id, name, version, source,
                                         blessed=registered["blessed"],
                                         reason=f"blessed by {st.ctx.dag_id} run {st.ctx.run_id}")
    except deploy.DeployError as exc:
        _card_after_deploy(st, exported, {"deployed": False, "error": str(exc)})
        raise
    shutil.rmtree(staging, ignore_errors=True)
    _card_after_deploy(st, exported, result)
    return {**result, "retention": _retention(st)}


def _retention(st: Stage) -> dict[str, Any]:
    """``pipeline.retention`` after the deploy: old runs that no served version needs are removed. Its failure
    is reported, never the deploy's: the version is published by now."""
    from pipeline import retention

    try:
        done = retention.apply(st.cfg.retention, current=st.ctx.run_id)
    except Exception as exc:  # noqa: BLE001 - a clean-up that failed leaves more on disk, nothing else
        print(f"deploy: warning: retention failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    if done["removed"]:
        print(f"deploy: retention removed {len(done['removed'])} old run(s) "
              f"({done['freed_bytes'] / 2**20:.1f} MiB): {', '.join(done['removed'][:10])}")
    return {"removed": done["removed"], "freed_bytes": done["freed_bytes"]}


def _card_after_deploy(st: Stage, exported: Mapping[str, Any], outcome: Mapping[str, Any]) -> None:
    """Log the model card again with the deploy stage's outcome and measurements (its run's metrics). A card
    that cannot be written leaves the deployment as it is: a warning, not a failure."""
    import dataclasses

    from pipeline import tracking
    from pipeline.model_card import ModelCard

    path = Path(exported.get("model_card") or "")
    if not path.is_file():
        return
    try:
        run_id = tracking.stage_run_id(st.parent_run_id, "deploy")
        measured = dict(tracking.client().get_run(run_id).data.metrics) if run_id else {}
        keep = ("deployed", "reason", "error", "label", "published")
        card = dataclasses.replace(ModelCard.from_dict(json.loads(path.read_text())),
                                   deploy={**measured, **{k: outcome[k] for k in keep if k in outcome}})
        _write_json(path, card.to_dict())
        _log_model_card(card, st)
    except Exception as exc:  # noqa: BLE001 - the card is a report; the deployment stands without it
        print(f"deploy: warning: the model card was not updated ({type(exc).__name__}: {exc})")
