"""``run_monitor``: one monitor run, from a window and the serving model's lineage file to a ``DriftResult``.

The edge of the monitoring stage: it reads the lineage (``assets.extra/pipeline_metadata.json``), the
reference statistics (cached per model version, built from the training split on a miss), the window (a
DataFrame, a CSV/Parquet file or a request-log JSONL file), optional late labels; then calls the pure
functions of ``drift`` and ``performance``, and writes the report / MLflow run when asked. The retraining
decision (``guards.should_retrain``) is left to the caller, which knows the retraining history.

Configuration: the ``monitoring:`` section of the pipeline YAML (see docs/monitoring.md), loaded by
``MonitorConfig.from_yaml`` into a frozen object.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain
from pathlib import Path

import pandas as pd

from pipeline.datasets import BATCH_ROWS
from pipeline.monitoring.batches import parquet_sources, table_batches, with_predictions
from pipeline.monitoring.drift import DriftConfig, DriftResult, analyse_drift
from pipeline.monitoring.images import IMAGE_STATS, expand_batches, image_bytes, image_columns, stat_columns
from pipeline.monitoring.performance import evaluate_performance
from pipeline.monitoring.reference import (
    FeatureTypes,
    ReferenceStats,
    load_or_build_reference,
    reference_cache_dir,
)
from pipeline.monitoring.reference_stream import build_reference_streamed
from pipeline.monitoring.request_log import (
    OUTPUT_PREFIX,
    PREDICTED_CLASS,
    PREDICTED_VALUE,
    join_labels,
    parse_lines,
    prediction_columns,
    window_columns,
)
from pipeline.monitoring.window import summarise_window


@dataclass(frozen=True)
class MonitorConfig:
    """Settings of the monitor (the ``monitoring:`` section of the pipeline YAML).

    Attributes:
        model_name: the served model (default: ``serving.model_name`` or ``name`` of the pipeline YAML).
        drift: thresholds and the dataset rule.
        schedule: for the ``drift_monitor`` DAG (cron or preset).
        performance_tolerance: relative metric degradation allowed before ``performance.degraded``.
        min_labels: labelled rows needed before performance is evaluated.
        cooldown: minimal time between two triggered retrainings.
        max_retrains_per_day: at most this many triggers in any 24 hours.
        min_new_labels: labelled rows needed since the last retraining to trigger another.
        report: write the HTML report; mlflow: log the monitor run to MLflow.
    """

    model_name: str = ""
    drift: DriftConfig = field(default_factory=DriftConfig)
    schedule: str = "@hourly"
    performance_tolerance: float = 0.05
    min_labels: int = 50
    cooldown: timedelta = timedelta(hours=6)
    max_retrains_per_day: int = 2
    min_new_labels: int = 100
    report: bool = True
    mlflow: bool = True

    @classmethod
    def from_mapping(cls, raw: Mapping | None, model_name: str = "") -> MonitorConfig:
        raw = dict(raw or {})
        perf = dict(raw.pop("performance", None) or {})
        retrain = dict(raw.pop("retraining", None) or {})
        known = {"model_name", "drift", "schedule", "report", "mlflow"}
        unknown = (
            (set(raw) - known)
            | (set(perf) - {"tolerance", "min_labels"})
            | (set(retrain) - {"cooldown_hours", "max_per_day", "min_new_labels"})
        )
        if unknown:
            raise ValueError(f"unknown monitoring settings {sorted(unknown)}")
        return cls(
            model_name=str(raw.get("model_name") or model_name),
            drift=DriftConfig.from_dict(raw.get("drift")),
            schedule=str(raw.get("schedule", "@hourly")),
            performance_tolerance=float(perf.get("tolerance", 0.05)),
            min_labels=int(perf.get("min_labels", 50)),
            cooldown=timedelta(hours=float(retrain.get("cooldown_hours", 6))),
            max_retrains_per_day=int(retrain.get("max_per_day", 2)),
            min_new_labels=int(retrain.get("min_new_labels", 100)),
            report=bool(raw.get("report", True)),
            mlflow=bool(raw.get("mlflow", True)),
        )

    @classmethod
    def from_yaml(cls, path: Path) -> MonitorConfig:
        """The ``monitoring:`` section of a pipeline YAML; the model name defaults to its serving model name."""
        import yaml

        doc = yaml.safe_load(Path(path).read_text()) or {}
        name = (doc.get("serving") or {}).get("model_name") or doc.get("name") or ""
        return cls.from_mapping(doc.get("monitoring"), model_name=name)


def read_lineage(path: Path) -> dict:
    """The lineage file of an exported model version (docs/contracts.md)."""
    lineage = json.loads(Path(path).read_text())
    for key in ("model_name", "version", "task", "features"):
        if key not in lineage:
            raise KeyError(f"{path}: lineage lacks {key!r}")
    return lineage


def read_table(path: Path) -> pd.DataFrame:
    """A CSV, Parquet (file, directory or glob of shards) or request-log JSONL file (by extension) as a whole
    DataFrame: for small tables (labels); ``run_monitor`` reads a window path batch by batch instead."""
    files = parquet_sources(path)
    if files is not None:
        frames = [pd.read_parquet(f) for f in files]
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        with open(path, encoding="utf-8") as fh:
            return parse_lines(fh)
    if suffix in {".csv", ".txt", ".gz"}:
        return pd.read_csv(path)
    raise ValueError(f"{path}: unknown table format {suffix!r} (csv, parquet or jsonl)")


def _resolve(path: str | None, base: Path) -> Path | None:
    if not path:
        return None
    p = Path(path)
    return p if p.is_absolute() else (base / p)


def reference_source(lineage: Mapping, lineage_path: Path) -> Path:
    """The table the model was trained on: the training split, else the dataset snapshot."""
    base = Path(lineage_path).parent
    for candidate in (lineage.get("train_split"), (lineage.get("dataset") or {}).get("snapshot")):
        p = _resolve(candidate, base)
        if p is not None and p.exists():
            return p
    raise FileNotFoundError(f"{lineage_path}: neither train_split nor dataset.snapshot exists")


def lineage_features(lineage: Mapping, with_predictions: bool) -> FeatureTypes:
    feats = lineage.get("features") or {}
    pred_num: tuple[str, ...] = ()
    pred_cat: tuple[str, ...] = ()
    if with_predictions:
        if lineage.get("task") == "classification":
            pred_cat = (PREDICTED_CLASS,)
            pred_num = tuple(f"prediction.proba.{c}" for c in lineage.get("class_names") or ())
        else:
            pred_num = (PREDICTED_VALUE,)
    # Dates move on by themselves and free text is new in every row: their values are not compared as
    # categories (the numeric and categorical columns still are). An image is compared through the numeric
    # statistics of ``images`` (``<column>.brightness`` ...), which every frame gets from ``images.expand_batches``.
    kinds = feats.get("kinds") or {}
    categorical = tuple(
        c for c in feats.get("categorical") or () if kinds.get(c) not in ("datetime", "text", "image")
    )
    numeric = (*(feats.get("numeric") or ()), *(s for c in image_columns(lineage) for s in stat_columns(c)))
    return FeatureTypes(tuple(numeric), categorical, pred_num, pred_cat)


def serving_inputs(frame: pd.DataFrame, lineage: Mapping) -> dict:
    """The ``serving_default`` inputs of a frame as numpy arrays: numeric columns as float32 (non-numbers NaN),
    string columns as objects (missing ``""``), image columns as the files' bytes (``images.image_bytes``:
    ``"b64:..."`` values decoded, bytes as they are; missing ``b""``)."""
    import numpy as np

    feats = lineage["features"]
    images = set(image_columns(lineage))
    inputs = {c: pd.to_numeric(frame[c], errors="coerce").to_numpy(np.float32) for c in feats.get("numeric") or ()}
    for c in feats.get("categorical") or ():
        if c in images:
            values = np.empty(len(frame), dtype=object)
            values[:] = [image_bytes(v) or b"" for v in frame[c].tolist()]
            inputs[c] = values
        else:
            inputs[c] = frame[c].fillna("").astype(str).to_numpy(dtype=object)
    return inputs


def saved_model_predictions(model_dir: Path, lineage: Mapping) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """A function running the exported model's ``serving_default`` on a frame, returning its outputs as
    ``output.<name>`` columns (the request-log layout). TensorFlow is imported only when it is called, and the
    model loaded once for all the reference's batches."""
    loaded: dict = {}

    def predict(frame: pd.DataFrame, batch: int = 8192) -> pd.DataFrame:
        import tensorflow as tf

        from pipeline.contracts import SIGNATURE

        if "fn" not in loaded:
            loaded["model"] = tf.saved_model.load(str(model_dir))  # kept: the signature needs its owner alive
            loaded["fn"] = loaded["model"].signatures[SIGNATURE]
        fn = loaded["fn"]
        outputs: dict[str, list] = {}
        for start in range(0, len(frame), batch):
            part = frame.iloc[start : start + batch]
            inputs = {c: tf.constant(v) for c, v in serving_inputs(part, lineage).items()}
            for name, value in fn(**inputs).items():
                if name == "classes":
                    continue
                outputs.setdefault(OUTPUT_PREFIX + name, []).extend(value.numpy().tolist())
        return pd.DataFrame(outputs, index=frame.index)

    return predict


def load_reference_stats(
    lineage: Mapping,
    lineage_path: Path,
    *,
    cache_dir: Path | None = None,
    predict: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> tuple[ReferenceStats, bool]:
    """The reference statistics of the model version of ``lineage``: cached, or built from its training split.

    Prediction columns are included when ``predict`` (reference frame -> ``output.*`` columns) is given and works;
    a failure there leaves prediction drift out (``meta["predictions_error"]``), never the feature drift. Image
    columns reach ``predict`` as the split holds them (bytes), and the statistics as their ``images`` columns.
    """
    source = reference_source(lineage, lineage_path)
    digest = (lineage.get("dataset") or {}).get("digest") or ""
    expect = {
        "model_name": lineage["model_name"],
        "version": lineage["version"],
        "dataset_digest": digest,
        "reference_source": str(source),
        "with_predictions": predict is not None,
    }
    images = image_columns(lineage)
    if images:  # a cache of an image model built before (or with other) image statistics is rebuilt
        expect["image_stats"] = list(IMAGE_STATS)
    directory = cache_dir or reference_cache_dir(lineage["model_name"], lineage["version"])

    def build() -> ReferenceStats:
        meta = dict(expect)
        columns = [*(lineage.get("features") or {}).get("numeric", ()), *(lineage.get("features") or {}).get(
            "categorical", ())]
        if predict is not None:
            try:
                return build_reference_streamed(
                    lambda: expand_batches(_predicted(table_batches(source, columns=columns), predict, lineage),
                                           images),
                    lineage_features(lineage, with_predictions=True),
                    meta=meta,
                )
            except _PredictFailed as failed:  # predictions are optional; the reason is kept
                exc = failed.__cause__
                meta["predictions_error"] = f"{type(exc).__name__}: {exc}"[:500]
        return build_reference_streamed(
            lambda: expand_batches(table_batches(source, columns=columns), images),
            lineage_features(lineage, with_predictions=False),
            meta=meta,
        )

    return load_or_build_reference(directory, build, expect)


class _PredictFailed(Exception):
    """The model failed on a reference batch (the cause is chained)."""


def _predicted(batches: Iterable[pd.DataFrame], predict, lineage: Mapping) -> Iterator[pd.DataFrame]:
    """Each reference batch with the model's prediction columns, computed on that batch alone."""
    for frame in batches:
        try:
            outputs = predict(frame)
        except Exception as exc:  # noqa: BLE001 - reported as predictions_error by the caller
            raise _PredictFailed() from exc
        yield pd.concat(
            [frame, prediction_columns(outputs, lineage["task"], lineage.get("class_names") or ())], axis=1
        )


def window_batches(
    current: pd.DataFrame | str | Path | Iterable[pd.DataFrame], batch_rows: int = BATCH_ROWS
) -> Iterator[pd.DataFrame]:
    """The window as frames: a DataFrame is one batch; a path is read batch by batch (``batches``)."""
    if isinstance(current, pd.DataFrame):
        return iter([current])
    if isinstance(current, (str, Path)):
        return table_batches(current, batch_rows)
    return iter(current)


def run_monitor(
    config: MonitorConfig,
    current: pd.DataFrame | str | Path | Iterable[pd.DataFrame],
    reference_meta_path: str | Path,
    *,
    labels: pd.DataFrame | None = None,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    cache_dir: Path | None = None,
    predict_reference: Callable[[pd.DataFrame], pd.DataFrame] | None | bool = None,
    report_dir: Path | None = None,
    log_mlflow: bool | None = None,
    tracking_uri: str | None = None,
    run_tags: Mapping[str, str] | None = None,
) -> DriftResult:
    """Analyse one window against the model version that served it.

    Args:
        config: the monitoring settings.
        current: the window: a DataFrame (e.g. from ``request_log.read_request_log``), a CSV / Parquet (file,
            directory or glob) / JSONL path, or an iterable of frames (``request_log.iter_request_log``). Paths
            and iterables are read batch by batch and summarised (``window.summarise_window``): memory is one
            batch plus the summary's caps, whatever the window's rows. Performance is computed on the labelled
            rows, all kept; the report's plots use a uniform sample of ``window.SAMPLE_ROWS`` rows.
        reference_meta_path: the lineage file ``.../serving/<model>/<version>/assets.extra/pipeline_metadata.json``.
        labels: late labels (``request_id`` [, ``row``], label column named as in the lineage) to join.
        window_start, window_end: the window's bounds, for the result, the report and the MLflow run.
        cache_dir: reference-statistics cache (default ``PIPELINE_HOME/monitoring/reference/<model>/<version>``).
        predict_reference: computes the model's outputs on the reference (for prediction drift); ``None`` uses
            the SavedModel next to the lineage file when the window carries outputs, ``False`` disables.
        report_dir: where to write the HTML report (default: no report).
        log_mlflow: log the monitor run (default ``config.mlflow``; needs ``window_end``).
        tracking_uri: MLflow store (default ``paths.mlflow_tracking_uri()``).
        run_tags: more MLflow run tags (Airflow dag/run ids).
    Returns:
        The drift result with ``performance`` filled when labels are present; ``retraining_triggered`` is False
        (the caller decides with ``guards.should_retrain`` and ``DriftResult.with_retraining``).
    """
    lineage_path = Path(reference_meta_path)
    lineage = read_lineage(lineage_path)
    task, class_names = lineage["task"], lineage.get("class_names") or ()
    label = lineage.get("label") or "label"

    # the first batch says whether the window carries model outputs (and so whether the reference needs them);
    # image columns become their statistics here, the one place every window batch passes
    batches = expand_batches(with_predictions(window_batches(current), task, class_names), image_columns(lineage))
    first = next(batches, None)
    has_outputs = first is not None and any(str(c).startswith(OUTPUT_PREFIX) for c in first.columns)
    if predict_reference is None and has_outputs:
        model_dir = lineage_path.parent.parent
        predict_reference = (
            saved_model_predictions(model_dir, lineage) if (model_dir / "saved_model.pb").exists() else None
        )
    predict = predict_reference or None
    stats, from_cache = load_reference_stats(lineage, lineage_path, cache_dir=cache_dir, predict=predict)

    window_iter: Iterable[pd.DataFrame] = chain([first], batches) if first is not None else ()
    if labels is not None:
        window_iter = _joined(window_iter, labels, label)
    prediction = PREDICTED_CLASS if task == "classification" else PREDICTED_VALUE
    summary = summarise_window(window_iter, stats, label=label, label_columns=[prediction])
    meta = {
        "model_name": lineage["model_name"],
        "model_version": lineage["version"],
        "reference_from_cache": from_cache,
        "reference_source": stats.meta.get("reference_source"),
        "window_start": window_start.isoformat() if window_start else None,
        "window_end": window_end.isoformat() if window_end else None,
    }
    if stats.meta.get("predictions_error"):
        meta["predictions_error"] = stats.meta["predictions_error"]
    ignore = [*window_columns(pd.DataFrame(columns=list(summary.columns))), label]
    result = analyse_drift(stats, summary, config.drift, ignore_columns=ignore, meta=meta)
    if label in summary.columns and summary.rows:
        # the labelled rows are all kept up to window.MAX_LABELLED: the metrics are exact over the window
        labelled = summary.labelled if summary.labelled is not None else pd.DataFrame(columns=[label])
        result.performance = evaluate_performance(
            labelled,
            task,
            label=label,
            prediction=prediction,
            class_names=class_names,
            baseline=lineage.get("metrics") or {},
            tolerance=config.performance_tolerance,
            min_labels=config.min_labels,
        )

    if report_dir is not None and config.report:
        from pipeline.monitoring.report import write_report

        # plots from the uniform sample of the window (``window.SAMPLE_ROWS`` rows at most)
        sample = summary.sample if summary.sample is not None else pd.DataFrame()
        write_report(result, stats, sample, Path(report_dir))
    if (config.mlflow if log_mlflow is None else log_mlflow) and window_end is not None:
        from pipeline.monitoring.report import log_monitor_run

        model_id, link = judged_version_tags(lineage["model_name"], lineage["version"], tracking_uri)
        run_id = log_monitor_run(
            result,
            report_dir,
            model_name=lineage["model_name"],
            window_end=window_end,
            window_start=window_start,
            tracking_uri=tracking_uri,
            tags={**link, **(run_tags or {})},
        )
        if model_id:
            link_logged_model(run_id, model_id, tracking_uri)
        result.meta["mlflow_run_id"] = run_id
    return result


def _joined(batches: Iterable[pd.DataFrame], labels: pd.DataFrame, label: str) -> Iterator[pd.DataFrame]:
    """Each window batch with its late labels (``request_log.join_labels``; batches without request ids pass)."""
    for frame in batches:
        yield join_labels(frame, labels, label) if "request_id" in frame.columns and len(frame) else frame


def judged_version_tags(
    model_name: str, version: int | str, tracking_uri: str | None = None
) -> tuple[str | None, dict[str, str]]:
    """The tags that link a monitor run to the registered version it judged: its ``models:/`` URI, its page in
    the UI, its logged model's id, and the run's description (``mlflow.note.content``, markdown with the link).

    Returns:
        The version's logged model id (None when the version is not in the registry of ``tracking_uri``), and
        the tags.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipeline import paths
    from pipeline.registry import logged_model_id

    uri = tracking_uri or paths.mlflow_tracking_uri()
    page = f"#/models/{model_name}/versions/{version}"
    tags = {"monitor.registered_model": f"models:/{model_name}/{version}", "monitor.model_version_url": page,
            "mlflow.note.content": f"Drift of the traffic served by [{model_name} version {version}]({page}), "
                                   f"against the data it was trained on."}
    try:
        mv = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(model_name, str(version))
    except MlflowException:
        return None, tags
    model_id = logged_model_id(mv)
    if model_id:
        tags["monitor.model_id"] = model_id
    return model_id, tags


def link_logged_model(run_id: str, model_id: str, tracking_uri: str | None = None) -> None:
    """Make the judged version's logged model an input of the monitor run (once: a retry reuses the run)."""
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelInput
    from mlflow.exceptions import MlflowException

    from pipeline import paths

    client = MlflowClient(tracking_uri=tracking_uri or paths.mlflow_tracking_uri())
    run = client.get_run(run_id)
    if any(m.model_id == model_id for m in (run.inputs.model_inputs if run.inputs else None) or []):
        return
    try:
        client.log_inputs(run_id, models=[LoggedModelInput(model_id)])
    except MlflowException as exc:  # a logged model in another store: the tags still name the version
        print(f"monitor: warning: the run is not linked to logged model {model_id}: {exc}")
