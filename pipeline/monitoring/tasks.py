"""The bodies of the ``drift_monitor`` DAG's tasks: resolve the window, analyse it, decide on retraining.

Each takes the run's ``params`` and the monitor run's identity, plus what only Airflow knows as plain values
(the window end, the previous run's window end, the drift Asset's earlier events, whether training is in
flight), so that they run and are tested without Airflow. Everything a run writes lies under
``loop.run_dir(model, run_id)`` and is overwritten by a retry; XCom carries paths and a few numbers.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import paths
from pipeline.atomic import atomic_path, write_json_atomic
from pipeline.monitoring import loop

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

DEFAULT_CONFIG = paths.DEFAULT_CONFIG
# Rows of one window batch read or written by the tasks (the request log in lines, Parquet in record batches):
# with the summary's caps (``window``), what bounds the tasks' memory, whatever the window's rows.
BATCH_ROWS = 65_536


class MonitorInputError(ValueError):
    """The monitor cannot find its window or reference; the message says which and where it looked."""


def load_config(params: Mapping[str, Any]):
    """The ``MonitorConfig`` of a run (``params["config"]``, default conf/penguins.yaml) and the model name
    (``params["model_name"]`` over the config's)."""
    from pipeline.monitoring.monitor import MonitorConfig

    path = Path(params["config"]) if params.get("config") else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    try:
        config = MonitorConfig.from_yaml(path) if path else MonitorConfig()
    except (ValueError, TypeError) as exc:  # a bad section stays bad: refused at once, not retried
        raise MonitorInputError(f"{path}: monitoring: {exc}") from None
    name = params.get("model_name") or config.model_name
    if not name:
        raise MonitorInputError("no model name: set the model_name param or serving.model_name in the config")
    return config, name


def _exported_versions(model_name: str) -> list[int]:
    base = paths.serving_dir(model_name)
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit()) if base.is_dir() else []


def _champion_version(model_name: str) -> int | None:
    try:
        from pipeline import registry

        mv = registry.version_by_alias(model_name, registry.CHAMPION)
    except Exception:  # noqa: BLE001 - no registry (or no model in it) is the same as no champion
        return None
    return int(mv.version) if mv is not None else None


def reference_version(served: Mapping[Any, int], model_name: str, requested: int | None) -> int:
    """The model version whose training data is the reference: the one asked for, else the one that served most
    of the window (``served``: version -> rows, from one pass over the ``model_version`` column), else the
    champion, else the latest exported version."""
    from pipeline.monitoring.batches import most_common

    if requested:
        return int(requested)
    if served:
        return int(most_common(served))
    version = _champion_version(model_name)
    if version is None:
        versions = _exported_versions(model_name)
        version = versions[-1] if versions else None
    if version is None:
        raise MonitorInputError(f"no exported version of {model_name!r} under {paths.serving_base()}")
    return version


def count_versions(batches: Iterable[pd.DataFrame]) -> tuple[int, dict]:
    """The rows of a window and version -> rows served (``model_version``, missing values left out), in one
    streamed pass; batches without the column count their rows only."""
    rows, served = 0, {}
    for frame in batches:
        rows += len(frame)
        if "model_version" in frame.columns:
            for v, n in frame["model_version"].dropna().value_counts().items():
                served[v] = served.get(v, 0) + int(n)
    return rows, served


def scan_log(batches: Iterable[pd.DataFrame]) -> tuple[dict[int, int], pa.Schema]:
    """Version -> rows and the Arrow schema of all the rows of a request-log window, in one streamed pass.

    The schema is the union of the batches' (first appearance order; a column that is all null in one batch and
    numbers in another is numbers, ints and floats are floats): the columns and types the whole window read as one
    frame would have, so that every batch can be written into one Parquet file (``write_window``).
    """
    import pyarrow as pa

    from pipeline.monitoring.request_log import parse_lines

    # the empty log's columns first: a window with no rows is still written with its metadata columns
    schema = pa.Schema.from_pandas(parse_lines([]), preserve_index=False).remove_metadata()
    served: dict[int, int] = {}
    for frame in batches:
        if "model_version" in frame.columns:
            for v, n in frame["model_version"].dropna().astype(int).value_counts().items():
                served[int(v)] = served.get(int(v), 0) + int(n)
        try:
            batch_schema = pa.Schema.from_pandas(frame, preserve_index=False).remove_metadata()
            schema = pa.unify_schemas([schema, batch_schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:  # e.g. a feature logged as text here, numbers there
            raise MonitorInputError(f"the request log window cannot be stored as one table: {exc}") from None
    return served, schema


def conform(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """One window batch as an Arrow table of ``schema``: its columns cast to the window's types, the columns the
    batch lacks (no row of it had them) all null."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    arrays = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(frame), f.type)
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_window(batches: Iterable[pd.DataFrame], path: Path, schema: pa.Schema) -> int:
    """Write the window's batches into one Parquet file, one batch at a time; returns the rows written.

    Atomic (``atomic.atomic_path``): a failure on any batch leaves the earlier file, or none, and no part file.
    """
    import pyarrow.parquet as pq

    rows = 0
    with atomic_path(path, suffix=".parquet") as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for frame in batches:
            writer.write_table(conform(frame, schema))
            rows += len(frame)
    return rows


def _current_source(current: str) -> str:
    """The absolute path of the ``current`` window (file, directory or glob of Parquet shards, CSV, JSONL): the
    analyse and decide tasks may run in another working directory."""
    text = os.path.abspath(current)
    if any(ch in text for ch in "*?["):
        if not glob.glob(text):
            raise MonitorInputError(f"{current}: no window file matches")
    elif not Path(text).exists():
        raise MonitorInputError(f"{current}: the window file does not exist")
    return text


def resolve_task(params: Mapping[str, Any], run_id: str, end: datetime,
                 previous_end: datetime | None) -> dict[str, Any]:
    """The window (the request log between the previous run and ``end``, or the ``current`` file) and the
    lineage file of the model version that served it.

    Bounded memory: the window is read batch by batch. A request-log window is read twice: once for the serving
    versions and the columns, then again to write the rows of the chosen version into the run's
    ``window.parquet``, which pins the window for the later tasks (the log keeps growing). A ``current`` file is
    the user's and is not copied: ``window`` names it, and a pass over it counts its rows and versions.
    """
    from pipeline.monitoring.batches import WindowReadError, parquet_sources, table_batches
    from pipeline.monitoring.request_log import iter_request_log

    _, model_name = load_config(params)
    start, end = loop.window_bounds(end, previous_end, timedelta(hours=float(params.get("lookback_hours") or 24)))
    out = loop.run_dir(model_name, run_id)
    if params.get("current"):
        source = _current_source(str(params["current"]))
        try:
            # a Parquet window: the model_version column alone (none read when it is absent: the row count then
            # comes from the batches of zero columns); a CSV / JSONL one is read whole, batch by batch
            columns = ["model_version"] if parquet_sources(source) is not None else None
            rows, served = count_versions(table_batches(source, BATCH_ROWS, columns=columns))
        except (WindowReadError, FileNotFoundError) as exc:  # a broken shard stays broken: refused, not retried
            raise MonitorInputError(str(exc)) from None
        version = reference_version(served, model_name, params.get("model_version"))
        window_path = source
    else:
        source = str(paths.request_log_dir(model_name))
        try:
            served, schema = scan_log(iter_request_log(model_name, start, end, batch_rows=BATCH_ROWS))
        except WindowReadError as exc:  # a log file that is not text stays so: refused, not retried
            raise MonitorInputError(str(exc)) from None
        version = reference_version(served, model_name, params.get("model_version"))
    lineage = paths.serving_dir(model_name) / str(version) / "assets.extra" / "pipeline_metadata.json"
    if not lineage.exists():
        raise MonitorInputError(f"lineage file {lineage} not found (the reference of {model_name} v{version})")
    out.mkdir(parents=True, exist_ok=True)
    if not params.get("current"):
        window_path = str(out / "window.parquet")
        # the rows of the serving version only, as before (the reference is that version's training data)
        rows = write_window(iter_request_log(model_name, start, end, model_version=version, batch_rows=BATCH_ROWS),
                            Path(window_path), schema)
    return {"model_name": model_name, "model_version": version, "lineage": str(lineage), "window": window_path,
            "source": source, "rows": int(rows), "window_start": start.isoformat(),
            "window_end": end.isoformat(), "run_dir": str(out), "config": str(params.get("config") or "")}


def analyse_task(params: Mapping[str, Any], dag_id: str, run_id: str, resolved: Mapping[str, Any]) -> dict[str, Any]:
    """``run_monitor`` on the resolved window: drift, performance on late labels, the HTML report and the MLflow
    monitor run. Writes ``drift.json`` (the ``DriftResult`` dict before the retraining decision).

    The window is streamed from its file, ``BATCH_ROWS`` rows at a time (``run_monitor`` summarises it in bounded
    memory); the late labels are joined per batch, and batches without request ids keep their own label column.
    """
    from pipeline.monitoring.batches import table_batches
    from pipeline.monitoring.monitor import run_monitor

    config, model_name = load_config(params)
    out = Path(resolved["run_dir"])
    labels = loop.read_labels(params.get("labels"), model_name)
    result = run_monitor(
        config, table_batches(resolved["window"], BATCH_ROWS), resolved["lineage"], labels=labels,
        window_start=loop.parse_time(resolved["window_start"]), window_end=loop.parse_time(resolved["window_end"]),
        report_dir=out / "report", log_mlflow=bool(config.mlflow and params.get("mlflow", True)),
        run_tags={"airflow.dag_id": dag_id, "airflow.run_id": run_id},
    )
    doc = result.to_dict()
    drift_path = out / "drift.json"
    write_json_atomic(drift_path, doc, indent=2, allow_nan=False)
    return {"drift": str(drift_path), "dataset_drift": doc["dataset_drift"], "skipped": doc["skipped"],
            "drifted_features": doc["drifted_features"], "n_current": doc["n_current"],
            "mlflow_run_id": doc["meta"].get("mlflow_run_id"),
            "report": str(out / "report" / "report.html") if (out / "report" / "report.html").exists() else None}


def _labelled(params: Mapping[str, Any], model_name: str, resolved: Mapping[str, Any], lineage: Mapping,
              last_trigger: datetime | None):
    """The labelled served rows a retraining would learn from, and how many of them are new since
    ``last_trigger``: the request log of the last ``labels_lookback_hours`` joined with the late labels (or the
    ``current`` file's labelled rows). Streamed: only the labelled rows are kept (``loop.labelled_rows_of``)."""
    from pipeline.monitoring.batches import table_batches
    from pipeline.monitoring.request_log import iter_request_log

    label = lineage.get("label") or "label"
    features = [*lineage["features"].get("numeric", []), *lineage["features"].get("categorical", [])]
    labels = loop.read_labels(params.get("labels"), model_name)
    end = loop.parse_time(resolved["window_end"])
    if params.get("current"):
        served = table_batches(resolved["window"], BATCH_ROWS)
    else:
        lookback = timedelta(hours=float(params.get("labels_lookback_hours") or 168))
        served = iter_request_log(model_name, end - lookback, end, batch_rows=BATCH_ROWS)
    rows = loop.labelled_rows_of(served, labels, label, features, by_ts=not params.get("current"))
    return rows, loop.count_since(rows, last_trigger)


def decide_task(params: Mapping[str, Any], run_id: str, resolved: Mapping[str, Any], analysed: Mapping[str, Any],
                event_extras: Sequence[Mapping | None], in_flight: bool) -> dict[str, Any]:
    """The retraining decision (``guards.should_retrain``) and, when it triggers, the labelled rows for the
    retraining and the Asset event's extra. Writes ``result.json``: the ``--json`` output of ``pipeline monitor``.

    Args:
        event_extras: the extras of the drift Asset's earlier events (the retraining history).
        in_flight: a ``training_pipeline`` run is queued or running.
    """
    from pipeline.monitoring.guards import should_retrain
    from pipeline.monitoring.monitor import read_lineage

    config, model_name = load_config(params)
    out = Path(resolved["run_dir"])
    doc = json.loads(Path(analysed["drift"]).read_text())
    events = loop.drift_events(event_extras, model_name)
    already = any(e.get("dag_run_id") == run_id for e in events)
    history = loop.retraining_history(events, exclude_run_id=run_id)
    now = loop.parse_time(resolved["window_end"])
    labelled = {"path": None, "rows": 0, "new_rows": 0}
    rows = None
    if doc.get("dataset_drift") or (doc.get("performance") or {}).get("degraded"):
        rows, new = _labelled(params, model_name, resolved, read_lineage(Path(resolved["lineage"])),
                              history[-1] if history else None)
        labelled.update(rows=int(len(rows)), new_rows=new)
    triggered, reason = should_retrain(doc, history, now=now, cooldown=config.cooldown,
                                       max_per_day=config.max_retrains_per_day,
                                       min_new_labels=config.min_new_labels, in_flight=in_flight,
                                       new_labels=labelled["new_rows"])
    if already:  # this run was cleared and run again after it had emitted: the same decision, no second event
        triggered, reason = True, "retraining already triggered by this monitor run"
    if triggered and rows is not None:
        labelled["path"] = loop.write_labelled(rows, out / "labelled.parquet")
    doc.update(retraining_triggered=triggered, reason=reason)
    doc["meta"] = {**(doc.get("meta") or {}), "dag_run_id": run_id, "in_flight": in_flight,
                   "retrainings_last_24h": sum(1 for t in history if now - t < timedelta(days=1)),
                   "labelled_rows": labelled["rows"], "new_labelled_rows": labelled["new_rows"],
                   "report": analysed.get("report")}
    result_path = out / "result.json"
    write_json_atomic(result_path, doc, indent=2, allow_nan=False)
    _tag_mlflow_run(analysed.get("mlflow_run_id"), triggered, reason)
    return {"result": str(result_path), "retraining_triggered": triggered, "reason": reason,
            "already_emitted": already,
            "event_extra": loop.event_extra(doc, resolved, run_id, labelled) if triggered else None}


def _tag_mlflow_run(mlflow_run_id: str | None, triggered: bool, reason: str) -> None:
    """Record the decision on the monitor's MLflow run (which was logged before it was taken)."""
    if not mlflow_run_id:
        return
    from pipeline.tracking import client

    c = client()
    c.set_tag(mlflow_run_id, "retraining_triggered", str(triggered).lower())
    c.set_tag(mlflow_run_id, "retraining_reason", reason[:5000])
