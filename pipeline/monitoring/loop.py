"""The retraining loop's own logic, apart from Airflow: the monitor's window, the retraining history read from
the drift Asset's events, the newly labelled rows that a retraining learns from, and the Asset event's extra.

``drift_monitor`` (dags/) reads what only Airflow knows (data interval, earlier drift events, in-flight training
runs) and hands it to these functions as plain values; ``training_pipeline``'s ingest calls
``labelled_data_paths`` and ``append_labelled`` on the events that triggered it. See docs/monitoring.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline import paths

EVENT_KIND = "drift_monitor.retraining"
LABEL_SUFFIXES = (".csv", ".parquet", ".pq", ".jsonl", ".ndjson")


def _utc(t: datetime) -> datetime:
    """An aware UTC ``datetime.datetime`` (naive means UTC); pendulum's subclass is turned into the plain
    type, whose arithmetic keeps the time zone."""
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return datetime(t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond, tzinfo=UTC)


def parse_time(value: Any) -> datetime | None:
    """An ISO string or datetime as an aware UTC datetime; None for anything else."""
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, str) and value:
        try:
            return _utc(datetime.fromisoformat(value))
        except ValueError:
            return None
    return None


def window_bounds(end: datetime, previous_end: datetime | None, lookback: timedelta) -> tuple[datetime, datetime]:
    """The monitor's window ``[start, end)``: from the end of the previous successful monitor run's window, at
    most ``lookback`` back (the first run, or one after a long outage, does not read the whole log).

    Args:
        end: this run's window end (the data interval's end, i.e. its logical date on a cron timetable).
        previous_end: the previous successful run's window end, if any.
        lookback: how far back a window may reach.
    """
    end = _utc(end)
    earliest = end - lookback
    if previous_end is None:
        return earliest, end
    previous_end = _utc(previous_end)
    if previous_end >= end:  # a rerun of an older interval: fall back to the lookback
        return earliest, end
    return max(previous_end, earliest), end


def run_dir(model_name: str, run_id: str) -> Path:
    """Where one monitor run writes (window, report, result, labelled rows); keyed by the DAG run."""
    return paths.pipeline_home() / "monitoring" / "runs" / paths.safe_key(model_name) / paths.safe_key(run_id)


def label_store(model_name: str) -> Path:
    """``PIPELINE_HOME/labels/<model>/``: files of late labels (``request_id`` [, ``row``], ``<label>``)."""
    return paths.pipeline_home() / "labels" / paths.safe_key(model_name)


def read_labels(location: str | Path | None, model_name: str):
    """All late labels of a model: the files under ``location`` (a file or a folder; default the label store),
    concatenated in name order so that a later file's label replaces an earlier one. None when there are none."""
    import pandas as pd

    from pipeline.monitoring.monitor import read_table

    root = Path(location) if location else label_store(model_name)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES)
    else:
        files = []
    frames = [read_table(f) for f in files]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else None


def drift_events(extras: Iterable[Mapping | None], model_name: str) -> list[dict]:
    """The retraining triggers among the drift Asset's events for ``model_name``, as their extras.

    Events without the monitor's ``model_name`` (emitted by hand, or by another tool) count for every model:
    erring towards "a retraining happened" can only hold a trigger back, never cause a storm.
    """
    out = []
    for extra in extras:
        extra = dict(extra or {})
        if extra.get("model_name") in (None, "", model_name):
            out.append(extra)
    return out


def retraining_history(events: Sequence[Mapping], exclude_run_id: str | None = None) -> list[datetime]:
    """When earlier retrainings were triggered: each event's ``window_end`` (the monitor run's decision time),
    else its ``timestamp`` (the time Airflow recorded it). The events of ``exclude_run_id`` are left out, so that
    a monitor run that is run again is not held back by its own earlier trigger."""
    times = []
    for e in events:
        if exclude_run_id is not None and e.get("dag_run_id") == exclude_run_id:
            continue
        t = parse_time(e.get("window_end")) or parse_time(e.get("timestamp"))
        if t is not None:
            times.append(t)
    return sorted(times)


def labelled_rows(window, labels, label: str, features: Sequence[str]):
    """The rows of ``window`` that have a label: the window's own label column, or late labels joined on the
    request id. Returns the feature columns, the label and ``ts`` (when present); empty when nothing is labelled."""
    import pandas as pd

    from pipeline.monitoring.request_log import join_labels

    if labels is not None and len(window) and "request_id" in window.columns and label in labels.columns:
        window = join_labels(window, labels, label)
    if label not in window.columns or not len(window):
        return pd.DataFrame(columns=[*features, label])
    keep = window[window[label].notna() & (window[label].astype(str) != "")]
    columns = [c for c in features if c in keep.columns] + [label] + (["ts"] if "ts" in keep.columns else [])
    return keep[columns].reset_index(drop=True)


def labelled_rows_of(batches: Iterable, labels, label: str, features: Sequence[str], by_ts: bool = False):
    """``labelled_rows`` of a window read batch by batch: only the labelled rows of each batch are kept (labels
    are usually few), so memory is one batch plus the labelled rows.

    The same rows and columns as ``labelled_rows`` on the whole window: the join on the request id is row by row,
    a feature column is kept when any batch has it. ``by_ts``: put the rows in ``ts`` order (stable), as
    ``request_log.read_request_log`` orders the whole log, for batches of ``iter_request_log`` (file order);
    filtering then sorting stably gives the same order as sorting then filtering.
    """
    import pandas as pd

    kept, seen = [], {}
    for frame in batches:
        seen.update(dict.fromkeys(frame.columns))
        rows = labelled_rows(frame, labels, label, features)
        if len(rows):
            kept.append(rows)
    if not kept:
        return labelled_rows(pd.DataFrame(columns=list(seen)), labels, label, features)
    rows = pd.concat(kept, ignore_index=True) if len(kept) > 1 else kept[0]
    columns = [c for c in features if c in seen] + [label] + (["ts"] if "ts" in seen else [])
    rows = rows.reindex(columns=columns)
    if by_ts and "ts" in rows.columns:
        rows = rows.sort_values("ts", kind="stable").reset_index(drop=True)
    return rows


def count_since(rows, since: datetime | None) -> int:
    """How many of ``rows`` arrived at or after ``since`` (all of them when there is no ``ts`` or no ``since``)."""
    import pandas as pd

    if since is None or "ts" not in rows.columns:
        return int(len(rows))
    return int((pd.to_datetime(rows["ts"], utc=True) >= pd.Timestamp(_utc(since))).sum())


def write_labelled(rows, path: Path) -> str:
    """The labelled rows a retraining appends to its data, as Parquet (feature columns and the label only)."""
    from pipeline.atomic import write_parquet_atomic

    return str(write_parquet_atomic(path, rows.drop(columns=[c for c in ("ts",) if c in rows.columns])))


def event_extra(result: Mapping, resolved: Mapping, run_id: str, labelled: Mapping) -> dict:
    """The drift Asset event's ``extra``: the drift summary, where the monitor run's outputs are, and the
    labelled rows that the triggered retraining appends to its configured data. JSON only."""
    return {
        "kind": EVENT_KIND,
        "model_name": resolved["model_name"],
        "model_version": resolved["model_version"],
        "dag_run_id": run_id,
        "config": resolved.get("config") or "",
        "window_start": resolved.get("window_start"),
        "window_end": resolved["window_end"],
        "dataset_drift": bool(result.get("dataset_drift")),
        "drift_share": result.get("drift_share"),
        "drifted_features": list(result.get("drifted_features") or []),
        "prediction_drift": bool(result.get("prediction_drift")),
        "performance_degraded": bool((result.get("performance") or {}).get("degraded")),
        "reason": result.get("reason"),
        "drift_reason": result.get("drift_reason"),
        "n_current": result.get("n_current"),
        "mlflow_run_id": (result.get("meta") or {}).get("mlflow_run_id"),
        "labelled_data": labelled.get("path"),
        "labelled_rows": labelled.get("rows", 0),
        "new_labelled_rows": labelled.get("new_rows", 0),
    }


# The training side: what a run triggered by drift events adds to its configured data.


def labelled_data_paths(extras: Iterable[Mapping | None], model_name: str) -> list[str]:
    """The labelled-data files named by the drift events that triggered a training run, for ``model_name``,
    without duplicates, in event order."""
    out: list[str] = []
    for extra in extras:
        extra = dict(extra or {})
        path = extra.get("labelled_data")
        if path and extra.get("model_name") in (None, "", model_name) and path not in out:
            out.append(str(path))
    return out


def append_labelled(snapshot, labelled: Sequence[str]):
    """Append newly labelled rows to an ingested snapshot, in place of the snapshot file.

    Columns are matched by their model-facing key (``pipeline.features.column_key``); a column the labelled rows
    lack is missing (NaN) there, one the snapshot lacks is dropped. The digest becomes that of the source and the
    labelled files together, so the lineage (and the monitor's reference cache) tells the two datasets apart.

    Args:
        snapshot: the ``pipeline.ingest.Snapshot`` of the configured source.
        labelled: Parquet/CSV files written by the monitor (``write_labelled``).
    Returns:
        The updated ``Snapshot``.
    """
    import pandas as pd

    from pipeline.atomic import write_json_atomic, write_parquet_atomic
    from pipeline.features import column_key, is_bytes_column
    from pipeline.ingest import IngestError, file_digest
    from pipeline.monitoring.monitor import read_table

    base = pd.read_parquet(snapshot.path)
    parts = [base]
    digest = hashlib.sha256(snapshot.digest.encode())
    for item in labelled:
        path = Path(item)
        if not path.exists():
            raise IngestError(f"{path}: labelled data named by the drift event does not exist")
        extra = read_table(path)
        extra = extra.rename(columns={c: column_key(str(c)) for c in extra.columns})
        extra = extra[[c for c in base.columns if c in extra.columns]]
        for c in extra.columns:  # keep the snapshot's dtypes (the log stores numbers as JSON)
            if pd.api.types.is_numeric_dtype(base[c]) and not pd.api.types.is_numeric_dtype(extra[c]):
                extra[c] = pd.to_numeric(extra[c], errors="coerce")
            elif is_bytes_column(base[c]):
                # an image column: the request log holds the files as "b64:..." text; the snapshot, their bytes
                from pipeline.monitoring.images import image_bytes

                extra[c] = [image_bytes(v) for v in extra[c]]
        parts.append(extra.reindex(columns=base.columns))
        digest.update(file_digest(path).encode())
    merged = pd.concat(parts, ignore_index=True)
    out = write_parquet_atomic(snapshot.path, merged)
    updated = replace(snapshot, digest=digest.hexdigest(), rows=int(len(merged)))
    meta = out.with_name("snapshot.json")
    record = {**updated.to_dict(), "labelled_data": list(labelled), "source_rows": int(len(base)),
              "source_digest": snapshot.digest}
    write_json_atomic(meta, record, indent=2)
    return updated
