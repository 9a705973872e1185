"""The bodies of the ``drift_monitor`` DAG's tasks: resolve the window, analyse it, decide on retraining.

Each takes the run's ``params`` and the monitor run's identity, plus what only Airflow knows as plain values
(the window end, the previous run's window end, the drift Asset's earlier events, whether training is in
flight), so that they run and are tested without Airflow. Everything a run writes lies under
``loop.run_dir(model, run_id)`` and is overwritten by a retry; XCom carries paths and a few numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.atomic import write_json_atomic, write_parquet_atomic
from pipeline.monitoring import loop

DEFAULT_CONFIG = paths.DEFAULT_CONFIG


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


def reference_version(window, model_name: str, requested: int | None) -> int:
    """The model version whose training data is the reference: the one asked for, else the one that served most
    of the window, else the champion, else the latest exported version."""
    if requested:
        return int(requested)
    if "model_version" in window.columns and window["model_version"].notna().any():
        return int(window["model_version"].dropna().mode().iloc[0])
    version = _champion_version(model_name)
    if version is None:
        versions = _exported_versions(model_name)
        version = versions[-1] if versions else None
    if version is None:
        raise MonitorInputError(f"no exported version of {model_name!r} under {paths.serving_base()}")
    return version


def resolve_task(params: Mapping[str, Any], run_id: str, end: datetime,
                 previous_end: datetime | None) -> dict[str, Any]:
    """The window (the request log between the previous run and ``end``, or the ``current`` file) and the
    lineage file of the model version that served it; the window is written to the run's directory."""
    from pipeline.monitoring.monitor import read_table
    from pipeline.monitoring.request_log import read_request_log

    _, model_name = load_config(params)
    start, end = loop.window_bounds(end, previous_end, timedelta(hours=float(params.get("lookback_hours") or 24)))
    if params.get("current"):
        current = Path(params["current"])
        if not current.exists():
            raise MonitorInputError(f"{current}: the window file does not exist")
        window, source = read_table(current), str(current)
    else:
        window, source = read_request_log(model_name, start, end), str(paths.request_log_dir(model_name))
    version = reference_version(window, model_name, params.get("model_version"))
    if "model_version" in window.columns and not params.get("current"):
        window = window[window["model_version"] == version].reset_index(drop=True)
    lineage = paths.serving_dir(model_name) / str(version) / "assets.extra" / "pipeline_metadata.json"
    if not lineage.exists():
        raise MonitorInputError(f"lineage file {lineage} not found (the reference of {model_name} v{version})")
    out = loop.run_dir(model_name, run_id)
    out.mkdir(parents=True, exist_ok=True)
    window_path = out / "window.parquet"
    write_parquet_atomic(window_path, window)
    return {"model_name": model_name, "model_version": version, "lineage": str(lineage), "window": str(window_path),
            "source": source, "rows": int(len(window)), "window_start": start.isoformat(),
            "window_end": end.isoformat(), "run_dir": str(out), "config": str(params.get("config") or "")}


def analyse_task(params: Mapping[str, Any], dag_id: str, run_id: str, resolved: Mapping[str, Any]) -> dict[str, Any]:
    """``run_monitor`` on the resolved window: drift, performance on late labels, the HTML report and the MLflow
    monitor run. Writes ``drift.json`` (the ``DriftResult`` dict before the retraining decision)."""
    from pipeline.monitoring.monitor import run_monitor

    config, model_name = load_config(params)
    out = Path(resolved["run_dir"])
    labels = loop.read_labels(params.get("labels"), model_name)
    window = _read_window(resolved["window"])
    if labels is not None and "request_id" not in window.columns:
        labels = None  # a window file without request ids cannot be joined; its own label column still counts
    result = run_monitor(
        config, window, resolved["lineage"], labels=labels,
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


def _read_window(path: str):
    import pandas as pd

    return pd.read_parquet(path)


def _labelled(params: Mapping[str, Any], model_name: str, resolved: Mapping[str, Any], lineage: Mapping,
              last_trigger: datetime | None):
    """The labelled served rows a retraining would learn from, and how many of them are new since
    ``last_trigger``: the request log of the last ``labels_lookback_hours`` joined with the late labels (or the
    ``current`` file's labelled rows)."""
    from pipeline.monitoring.request_log import read_request_log

    label = lineage.get("label") or "label"
    features = [*lineage["features"].get("numeric", []), *lineage["features"].get("categorical", [])]
    labels = loop.read_labels(params.get("labels"), model_name)
    end = loop.parse_time(resolved["window_end"])
    if params.get("current"):
        served = _read_window(resolved["window"])
    else:
        lookback = timedelta(hours=float(params.get("labels_lookback_hours") or 168))
        served = read_request_log(model_name, end - lookback, end)
    rows = loop.labelled_rows(served, labels, label, features)
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
