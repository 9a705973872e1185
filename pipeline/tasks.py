"""The body of each Airflow task: read the config, open the stage's MLflow run, call the stage, log, and
return a small reference (paths, ids, a few numbers) for the next task. No data goes through XCom.

Each function takes the run's ``params`` and a :class:`RunContext`, plus the previous tasks' return values,
and writes its outputs under paths keyed by the DAG run, overwriting a previous attempt: retried tasks are
idempotent. The stage logic itself lives in the stage modules and knows nothing of Airflow or MLflow.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline import memory, paths, progress
from pipeline.config import PipelineConfig, from_dict, load_config

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
    the trigger form's overrides. With a ``source`` and ``label`` but no config file, every other setting is a
    default and the features are inferred from the data."""
    params = dict(params or {})
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
    cfg = resolve_run_config(params)
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


def _write_json(path: Path, payload: Any) -> str:
    from pipeline.atomic import write_json_atomic

    return str(write_json_atomic(path, payload, indent=2, default=str))


def _read_frame(path: str):
    import pandas as pd

    return pd.read_parquet(path)


def ingest_task(params: Mapping[str, Any], ctx: RunContext,
                drift_events: Sequence[Mapping[str, Any] | None] = ()) -> dict[str, Any]:
    """Snapshot the configured source; a run triggered by the drift monitor appends the newly labelled rows
    that its ``drift_events`` (the triggering Asset events' extras) name."""
    import mlflow

    from pipeline import tracking
    from pipeline.ingest import ingest
    from pipeline.monitoring.loop import append_labelled, labelled_data_paths

    cfg = load_run_config(params, ctx)
    parent = tracking.parent_run(cfg.name, ctx.dag_id, ctx.run_id, ctx.logical_date, cfg.to_dict() | {})
    with tracking.stage_run(parent, "ingest"):
        mlflow.log_params({"source": cfg.source, "label": cfg.label})
        snap = ingest(cfg.source, ctx.data_dir, label=cfg.label)
        labelled = labelled_data_paths(drift_events, cfg.serving.model_name)
        if labelled:
            source_rows = snap.rows
            snap = append_labelled(snap, labelled)
            mlflow.log_params({"labelled_data": ",".join(labelled)[:6000], "source_rows": source_rows})
        df = _read_frame(snap.path)
        dataset = mlflow.data.from_pandas(df, source=snap.source, name=cfg.name, targets=cfg.label
                                          if cfg.label in df.columns else None, digest=snap.digest[:16])
        mlflow.log_input(dataset, context="training")
        # On the parent run too, so the runs table shows which data each DAG run trained on.
        from mlflow.entities import DatasetInput, InputTag

        tracking.client().log_inputs(parent, datasets=[DatasetInput(dataset._to_mlflow_entity(),
                                                                    [InputTag("mlflow.data.context", "training")])])
        mlflow.log_metrics({"rows": snap.rows, "columns": len(snap.columns)})
        mlflow.log_params({"snapshot": snap.path, "digest": snap.digest})
    return {"parent_run_id": parent, "snapshot": snap.path, "digest": snap.digest, "rows": snap.rows,
            "source": snap.source, "labelled_data": labelled}


def validate_task(params: Mapping[str, Any], ctx: RunContext, ingested: Mapping[str, Any]) -> dict[str, Any]:
    import mlflow

    from pipeline import registry, tracking
    from pipeline.export import SCHEMA_FILE
    from pipeline.validate import ValidationError, feature_table, load_schema, validate

    cfg = load_run_config(params, ctx)
    with tracking.stage_run(ingested["parent_run_id"], "validate"):
        champion = registry.champion_dir(cfg.serving.model_name)
        ref_path = champion[1] / "assets.extra" / SCHEMA_FILE if champion else None
        reference = load_schema(ref_path) if ref_path is not None and ref_path.exists() else None
        mlflow.log_param("reference_schema", f"champion v{champion[0]}" if reference else "none (first run: inferred)")
        split_columns = tuple(c for c in (cfg.split.key_column, cfg.split.time_column) if c)
        try:
            result = validate(_read_frame(ingested["snapshot"]), cfg.label, cfg.task, cfg.features, cfg.labels,
                              not_features=split_columns, reference=reference, source=ingested["source"])
        except ValidationError as exc:
            mlflow.log_dict({"anomalies": [a.__dict__ for a in exc.anomalies]}, "anomalies.json")
            raise
        schema_path = _write_json(ctx.data_dir / "schema.json", result.schema)
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
    return {"parent_run_id": ingested["parent_run_id"], "schema": schema_path, "features": result.schema["features"]}


def split_task(params: Mapping[str, Any], ctx: RunContext, ingested: Mapping[str, Any],
               validated: Mapping[str, Any]) -> dict[str, Any]:
    import mlflow

    from pipeline import tracking
    from pipeline.split import class_balance, prepare_labels, split_frame, write_splits

    cfg = load_run_config(params, ctx)
    features = validated["features"]
    with tracking.stage_run(validated["parent_run_id"], "split"):
        mlflow.log_params({f"split_{k}": v for k, v in cfg.split.__dict__.items()})
        frame = _read_frame(ingested["snapshot"])
        labelled, dropped = prepare_labels(frame, features["label"], features["task"], cfg.labels)
        parts = split_frame(labelled, features["label"], cfg.split, features["task"], cfg.labels)
        mlflow.log_metrics(dropped)
        if dropped["rows_without_label"]:
            print(f"split: warning: {dropped['rows_without_label']} rows without a label dropped")
        out = write_splits(parts, ctx.work_dir / "split")
        mlflow.log_metrics({f"rows_{k}": len(v) for k, v in parts.items()})
        if features["task"] == "classification":
            balance = class_balance(parts, features["label"])
            mlflow.log_dict(balance, "class_balance.json")
            mlflow.log_metrics({f"share_{s}_{c}": v for s, shares in balance.items() for c, v in shares.items()})
    return {"parent_run_id": validated["parent_run_id"], **out}


def preprocess_task(params: Mapping[str, Any], ctx: RunContext, splits: Mapping[str, Any],
                    validated: Mapping[str, Any]) -> dict[str, Any]:
    import mlflow

    from pipeline import tracking
    from pipeline.features import FeatureSpec
    from pipeline.preprocess import fit_preprocessing, save_preprocessing

    cfg = load_run_config(params, ctx)
    with tracking.stage_run(splits["parent_run_id"], "preprocess"):
        spec = FeatureSpec.from_dict(validated["features"])
        meta = fit_preprocessing(_read_frame(splits["train"]), spec, cfg.features)
        out = save_preprocessing(meta, ctx.work_dir / "preprocess")
        memory.release()
        mspec = meta.model_spec()
        mlflow.log_params({"numeric_features": ",".join(spec.numeric)[:6000],
                           "string_features": ",".join(spec.categorical)[:6000],
                           "task": spec.task, "n_classes": len(meta.class_names), "numeric_width": mspec.numeric_width,
                           "embedded_columns": len(mspec.categorical), "text_columns": len(mspec.text)})
        mlflow.log_dict({"encodings": meta.summary(), "class_names": meta.class_names,
                         "class_counts": meta.class_counts}, "preprocessing.json")
    return {"parent_run_id": splits["parent_run_id"], **out}


def train_task(params: Mapping[str, Any], ctx: RunContext, splits: Mapping[str, Any],
               preprocessed: Mapping[str, Any]) -> dict[str, Any]:
    import mlflow

    from pipeline import tracking
    from pipeline.preprocess import PreprocessMeta
    from pipeline.train import train

    cfg = load_run_config(params, ctx)
    with tracking.stage_run(splits["parent_run_id"], "train"):
        mlflow.log_params({"builder": cfg.model.module or cfg.model.builder,
                           **{f"model_{k}": v for k, v in cfg.model.params.items()},
                           **{f"training_{k}": v for k, v in cfg.training.__dict__.items()}})
        epochs = tracking.EpochLogger()
        try:
            result = train(_read_frame(splits["train"]), _read_frame(splits["val"]),
                           PreprocessMeta.load(preprocessed["meta"]), cfg.model, cfg.training, ctx.work_dir / "train",
                           seed=cfg.training.seed, callbacks=[epochs, progress.keras_callback()])
        finally:
            epochs.flush()  # the epochs of a failed attempt too
        mlflow.log_metrics({"batch_size": result.batch_size, "planned_epochs": result.planned_epochs})
        mlflow.log_params({"strategy": result.strategy, "precision_policy": result.precision_policy})
        mlflow.log_metrics({"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                            "resumed_from_epoch": result.resumed_from_epoch})
        tracking.log_figure(tracking.training_curve_figure(result.history), "training_curves.png")
    memory.release()  # the training data and the fit's tensors are gone: hand their pages back before evaluate
    return {"parent_run_id": splits["parent_run_id"], "model": result.model_path, "epochs_run": result.epochs_run}


def evaluate_task(params: Mapping[str, Any], ctx: RunContext, splits: Mapping[str, Any],
                  preprocessed: Mapping[str, Any], trained: Mapping[str, Any]) -> dict[str, Any]:
    import mlflow
    import numpy as np

    from pipeline import evaluate as ev
    from pipeline import registry, tracking
    from pipeline.atomic import atomic_path
    from pipeline.export import ExportError, predict_keras, predict_saved_model
    from pipeline.preprocess import PreprocessMeta, label_array
    from pipeline.train import load_model

    cfg = load_run_config(params, ctx)
    meta = PreprocessMeta.load(preprocessed["meta"])
    spec = meta.feature_spec
    with tracking.stage_run(splits["parent_run_id"], "evaluate"):
        test = _read_frame(splits["test"])
        y = label_array(test, meta)
        if spec.task == "classification":
            keep = y >= 0  # classes never seen in training cannot be scored
            test, y = test[keep].reset_index(drop=True), y[keep]
        pred = predict_keras(load_model(trained["model"], meta, cfg.model), test, meta)

        def score(p):
            if spec.task == "classification":
                return ev.classification_metrics(y, p, meta.class_names)
            return ev.regression_metrics(y, p)

        metrics = score(pred)
        champion_metrics, champion_version, champion_note = None, None, "no champion"
        champion = registry.champion_dir(cfg.serving.model_name)
        if champion is not None:
            champion_version = champion[0]
            try:
                champion_metrics = score(predict_saved_model(champion[1], test, spec))
                champion_note = f"champion v{champion_version} scored on the same test split"
            except (ExportError, KeyError, ValueError) as exc:
                champion_note = f"champion v{champion_version} could not be scored on this data: {exc}"
        gate = ev.resolve_gate(cfg.gate, spec.task)
        decision = ev.decide_blessing(metrics, gate, champion_metrics)
        mlflow.log_metrics(metrics)
        if champion_metrics:
            mlflow.log_metrics({f"champion_{k}": v for k, v in champion_metrics.items()})
        mlflow.log_params({"champion": champion_note, "gate_metric": gate.metric})
        mlflow.set_tag("blessed", str(decision.blessed).lower())
        mlflow.log_dict(decision.to_dict(), "gate_decision.json")
        if spec.task == "classification":
            tracking.log_figure(ev.confusion_matrix_figure(y, pred.argmax(axis=1), meta.class_names), "confusion_matrix.png")
        else:
            tracking.log_figure(ev.residual_figure(y, pred), "residuals.png")
        out_dir = ctx.work_dir / "evaluate"
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / "predictions.npy", suffix=".npy") as tmp:
            np.save(tmp, pred)
        _write_json(out_dir / "metrics.json", {"metrics": metrics, "champion_metrics": champion_metrics,
                                               "decision": decision.to_dict()})
        for reason in decision.reasons:
            print(f"evaluate: {reason}")
    return {"parent_run_id": splits["parent_run_id"], "blessed": decision.blessed,
            "metric": {gate.metric: metrics.get(gate.metric)}, "champion_version": champion_version,
            "metrics_file": str(out_dir / "metrics.json"), "predictions": str(out_dir / "predictions.npy")}


def export_task(params: Mapping[str, Any], ctx: RunContext, ingested: Mapping[str, Any], validated: Mapping[str, Any],
                splits: Mapping[str, Any], preprocessed: Mapping[str, Any], trained: Mapping[str, Any],
                evaluated: Mapping[str, Any]) -> dict[str, Any]:
    import shutil

    import mlflow
    import pandas as pd

    from pipeline import tracking
    from pipeline.export import write_candidate
    from pipeline.preprocess import PreprocessMeta, feature_arrays
    from pipeline.pyfunc import log_pyfunc
    from pipeline.train import load_model, release_loaded_model

    cfg = load_run_config(params, ctx)
    meta = PreprocessMeta.load(preprocessed["meta"])
    spec = meta.feature_spec
    staging_root = paths.serving_dir(cfg.serving.model_name)
    with tracking.stage_run(splits["parent_run_id"], "export"):
        test = _read_frame(splits["test"])
        metrics = json.loads(Path(evaluated["metrics_file"]).read_text())["metrics"]
        metadata = {
            "model_name": cfg.serving.model_name, "task": spec.task, "label": spec.label,
            "features": {"numeric": list(spec.numeric), "categorical": list(spec.categorical),
                         "kinds": {k: spec.kind(k) for k in spec.names}},
            "class_names": meta.class_names, "dag_id": ctx.dag_id, "dag_run_id": ctx.run_id,
            "mlflow_run_id": splits["parent_run_id"],
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

        # Raises unless what MLflow stored loads and answers the example (rather than assume it does).
        info = log_pyfunc(staging, pd.DataFrame(feature_arrays(test.head(5), spec)))
    release_loaded_model()
    memory.release()  # before deploy starts the sandbox server beside this process
    return {"parent_run_id": splits["parent_run_id"], "staging": str(staging), "model_uri": info.model_uri,
            "max_abs_diff": diff}


def register_task(params: Mapping[str, Any], ctx: RunContext, ingested: Mapping[str, Any],
                  evaluated: Mapping[str, Any], exported: Mapping[str, Any]) -> dict[str, Any]:
    import mlflow

    from pipeline import tracking

    cfg = load_run_config(params, ctx)
    name = cfg.serving.model_name
    parent = exported["parent_run_id"]
    with tracking.stage_run(parent, "register"):
        c = tracking.client()
        # A retried task finds the version it registered before instead of registering a duplicate.
        existing = c.search_model_versions(f"name = '{name}' and tags.`airflow.run_id` = '{ctx.run_id}'")
        mv = existing[0] if existing else mlflow.register_model(exported["model_uri"], name, tags={
            "airflow.dag_id": ctx.dag_id, "airflow.run_id": ctx.run_id, "dataset_digest": ingested["digest"],
            "blessed": str(evaluated["blessed"]).lower(), "mlflow_parent_run_id": parent})
        version = int(mv.version)
        # Publishing and the aliases are the deploy task's: registering never changes what is served.
        mlflow.log_params({"registered_model": name, "version": version})
        mlflow.set_tags({"blessed": str(evaluated["blessed"]).lower(), "model_version": str(version)})
    with mlflow.start_run(run_id=parent):
        mlflow.log_metrics({f"test_{k}": v for k, v in evaluated["metric"].items() if v is not None})
        mlflow.set_tags({"model_version": str(version), "blessed": str(evaluated["blessed"]).lower()})
    return {"parent_run_id": parent, "model_name": name, "version": version, "blessed": evaluated["blessed"]}


def deploy_task(params: Mapping[str, Any], ctx: RunContext, exported: Mapping[str, Any],
                registered: Mapping[str, Any]) -> dict[str, Any]:
    """Deploy the registered version if it is blessed (``pipeline.deploy``); an unblessed one is only dropped
    from staging. The DAG run's MLflow run is finished here, the last stage."""
    import shutil

    from pipeline import deploy, registry

    cfg = load_run_config(params, ctx)
    name, version, parent = registered["model_name"], registered["version"], registered["parent_run_id"]
    staging = Path(exported["staging"])
    if not registered["blessed"]:
        shutil.rmtree(staging, ignore_errors=True)  # registered for comparison, never where a server looks
    # A retry finds the staging copy (kept when a deploy fails) or the published directory.
    source = staging if staging.exists() else registry.saved_model_dir(name, version)
    result = deploy.run_deploy_stage(cfg.deploy, parent, name, version, source, blessed=registered["blessed"],
                                     reason=f"blessed by {ctx.dag_id} run {ctx.run_id}")
    shutil.rmtree(staging, ignore_errors=True)
    return {"parent_run_id": parent, **result}
