"""The serving request log as the monitor's current window (format: docs/contracts.md).

One JSON object per served instance row in ``request_logs/<model>/<YYYY-MM-DD>/<HH>-<pid>.jsonl`` (UTC).
``read_request_log`` returns one DataFrame row per line: the metadata columns (``META_COLUMNS``), one column per
feature under its own name, and one column per model output named ``output.<name>``. ``prediction_columns``
turns the outputs into the columns the drift test compares (``prediction.class``, ``prediction.proba.<class>``,
``prediction.value``); ``join_labels`` attaches labels that arrive later, on the request id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import paths

META_COLUMNS = ("request_id", "row", "ts", "model_name", "model_version", "signature_name", "api")
OUTPUT_PREFIX = "output."
PREDICTION_PREFIX = "prediction."
PREDICTED_CLASS = "prediction.class"
PREDICTED_VALUE = "prediction.value"


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def log_files(model_dir: Path, start: datetime, end: datetime) -> list[Path]:
    """The log files that may hold rows with ``start <= ts < end``, chosen by their date folder and hour prefix."""
    start, end = _utc(start), _utc(end)
    files: list[Path] = []
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    while day < end:
        folder = Path(model_dir) / day.strftime("%Y-%m-%d")
        for f in sorted(folder.glob("*.jsonl")) if folder.is_dir() else ():
            try:
                hour = day + timedelta(hours=int(f.name.split("-", 1)[0]))
            except ValueError:
                hour = day  # unexpected name: read it, the ts filter decides
                files.append(f)
                continue
            if hour < end and hour + timedelta(hours=1) > start:
                files.append(f)
        day += timedelta(days=1)
    return files


def _scalar(value):
    """A feature value as a hashable scalar: the server writes non-UTF-8 strings as ``{"b64": ...}``."""
    if isinstance(value, dict):
        return "b64:" + str(value.get("b64", "")) if "b64" in value else json.dumps(value, sort_keys=True)
    if isinstance(value, list):  # rank > 1 is outside the contract; kept visible rather than dropped
        return json.dumps(value)
    return value


def parse_lines(lines: Iterable[str]) -> pd.DataFrame:
    """Request-log lines -> the window's DataFrame (see the module docstring); blank or broken lines skipped."""
    records = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash of the writer; the rest of the file is still good
        if not isinstance(rec, dict):
            continue
        row = {k: rec.get(k) for k in META_COLUMNS}
        row.update({k: _scalar(v) for k, v in (rec.get("features") or {}).items()})
        row.update({OUTPUT_PREFIX + k: v for k, v in (rec.get("outputs") or {}).items()})
        records.append(row)
    frame = pd.DataFrame.from_records(records, columns=None if records else list(META_COLUMNS))
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    return frame


def read_request_log(
    model_name: str,
    start: datetime,
    end: datetime,
    *,
    base_dir: Path | None = None,
    model_version: int | None = None,
) -> pd.DataFrame:
    """The rows served for ``model_name`` with ``start <= ts < end`` (UTC; naive times are taken as UTC).

    Args:
        model_name: the served model.
        start, end: the window, usually (end of the last monitor run, this run's logical date).
        base_dir: the request-log root (default ``PIPELINE_HOME/request_logs``).
        model_version: keep only rows served by this version.
    Returns:
        One row per instance, ordered by ``ts``; empty (with the metadata columns) when nothing was served.
    """
    root = Path(base_dir) if base_dir is not None else paths.request_log_dir()
    lines: list[str] = []
    for f in log_files(root / model_name, start, end):
        with open(f, encoding="utf-8") as fh:
            lines.extend(fh)
    frame = parse_lines(lines)
    keep = (frame["ts"] >= pd.Timestamp(_utc(start))) & (frame["ts"] < pd.Timestamp(_utc(end)))
    if model_version is not None:
        keep &= frame["model_version"] == model_version
    return frame[keep].sort_values("ts", kind="stable").reset_index(drop=True)


def iter_request_log(
    model_name: str,
    start: datetime,
    end: datetime,
    *,
    base_dir: Path | None = None,
    model_version: int | None = None,
    batch_rows: int = 65_536,
) -> Iterator[pd.DataFrame]:
    """``read_request_log`` one chunk of ``batch_rows`` lines at a time (file order, not sorted by ``ts``): the
    streamed window, for logs too big to hold. The same rows, kept by the same ``ts`` / version filter."""
    root = Path(base_dir) if base_dir is not None else paths.request_log_dir()
    lo, hi = pd.Timestamp(_utc(start)), pd.Timestamp(_utc(end))
    for f in log_files(root / model_name, start, end):
        for lines in _line_chunks(f, batch_rows):
            frame = parse_lines(lines)
            keep = (frame["ts"] >= lo) & (frame["ts"] < hi)
            if model_version is not None:
                keep &= frame["model_version"] == model_version
            if keep.any():
                yield frame[keep].reset_index(drop=True)


def _line_chunks(path: Path, batch_rows: int) -> Iterator[list[str]]:
    """The lines of one log file, ``batch_rows`` at a time; a file that is not UTF-8 text (not a request log, or
    damaged on disk) is an error naming it (``batches.WindowReadError``), not a bare decode error."""
    from pipeline.monitoring.batches import WindowReadError

    try:
        with open(path, encoding="utf-8") as fh:
            while lines := list(islice(fh, batch_rows)):
                yield lines
    except UnicodeDecodeError as exc:
        raise WindowReadError(f"{path}: not a UTF-8 request-log file ({exc})") from exc


def request_log_versions(
    model_name: str, start: datetime, end: datetime, *, base_dir: Path | None = None
) -> dict[int, int]:
    """Model version -> rows served in the window (one streamed pass), to pick the reference version."""
    counts: dict[int, int] = {}
    for frame in iter_request_log(model_name, start, end, base_dir=base_dir):
        if "model_version" in frame.columns:
            for v, n in frame["model_version"].dropna().astype(int).value_counts().items():
                counts[int(v)] = counts.get(int(v), 0) + int(n)
    return counts


def prediction_columns(frame: pd.DataFrame, task: str, class_names: Sequence[str] = ()) -> pd.DataFrame:
    """The model outputs of a window as the columns the drift test compares.

    Classification (``output.probabilities``, one list per row): ``prediction.class`` (the arg-max class name)
    and ``prediction.proba.<class>`` per class. Regression (``output.value``): ``prediction.value``.
    A window without the output column gives an empty frame.
    """
    out = pd.DataFrame(index=frame.index)
    if task == "classification" and OUTPUT_PREFIX + "probabilities" in frame:
        proba = _matrix(frame[OUTPUT_PREFIX + "probabilities"], len(class_names))
        names = list(class_names) or [str(i) for i in range(proba.shape[1])]
        if proba.shape[1] != len(names):
            raise ValueError(f"{proba.shape[1]} probabilities per row but {len(names)} class names")
        valid = ~np.isnan(proba).any(axis=1)
        labels = np.asarray(names, dtype=object)[np.argmax(np.nan_to_num(proba, nan=-1.0), axis=1)]
        out[PREDICTED_CLASS] = np.where(valid, labels, None)
        for j, name in enumerate(names):
            out[f"{PREDICTION_PREFIX}proba.{name}"] = proba[:, j]
    elif task == "regression" and OUTPUT_PREFIX + "value" in frame:
        values = frame[OUTPUT_PREFIX + "value"].map(lambda v: v[0] if isinstance(v, (list, tuple)) else v)
        out[PREDICTED_VALUE] = pd.to_numeric(values, errors="coerce")
    return out


def _matrix(column: pd.Series, default_width: int = 0) -> np.ndarray:
    """Rows of equal-length lists as a float matrix; a row of another length (or none) is all NaN."""
    rows = [r if isinstance(r, (list, tuple, np.ndarray)) else () for r in column.tolist()]
    width = max((len(r) for r in rows), default=0) or default_width
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        if len(r) == width:
            out[i] = r
    return out


def join_labels(window: pd.DataFrame, labels: pd.DataFrame, label: str = "label") -> pd.DataFrame:
    """Attach labels that arrived after serving, on ``request_id`` (and ``row`` when the labels have it).

    Args:
        window: the request-log rows.
        labels: ``request_id`` [, ``row``], ``label``; one label per (request, row), or per request when the
            labels carry no ``row`` (single-instance requests). Later duplicates replace earlier ones.
        label: the name of the label column, in ``labels`` and in the result.
    Returns:
        ``window`` with a ``label`` column, NaN where no label arrived (yet).
    """
    keys = ["request_id", "row"] if "row" in labels.columns else ["request_id"]
    missing = [k for k in (*keys, label) if k not in labels.columns]
    if missing:
        raise KeyError(f"labels lack columns {missing}")
    latest = labels[[*keys, label]].drop_duplicates(subset=keys, keep="last")
    base = window.drop(columns=[label]) if label in window.columns else window
    return base.merge(latest, on=keys, how="left", validate="many_to_one")


def window_columns(frame: pd.DataFrame) -> list[str]:
    """Columns of a window that are not features: metadata, outputs and predictions (for ``ignore_columns``)."""
    return [
        c for c in frame.columns if c in META_COLUMNS or str(c).startswith((OUTPUT_PREFIX, PREDICTION_PREFIX))
    ]
