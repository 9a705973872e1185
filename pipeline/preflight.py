"""Checks a command runs before it starts Airflow: what would otherwise fail its first task, after Airflow,
MLflow and the retries have spent their seconds, is refused at once with one line.

``pipeline train``: the config loads (every key checked, :mod:`pipeline.config`), the source exists, is a readable
CSV or Parquet file, and its header (a CSV's first line, a Parquet file's schema) holds the label column.
``pipeline monitor``: its config file loads and the files it names exist. Each check returns the problem as one
line naming the file, the column or the key, or None; the tasks still check everything again when they run (a
file can change in between), so these checks only decide whether starting is worth it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


def train_problem(params: Mapping[str, Any]) -> str | None:
    """Why the ``training_pipeline`` run of ``params`` (the DAG run conf of ``pipeline train``) would fail at
    once, or None.

    Only local sources are checked (a path, ``file://`` or ``pkg://``); another URI is the ingest task's to read.
    """
    from pipeline.config import ConfigError
    from pipeline.ingest import IngestError, resolve_source
    from pipeline.tasks import resolve_run_config

    try:
        cfg = resolve_run_config(params)
    except ConfigError as exc:
        return str(exc)
    if "://" in cfg.source and not cfg.source.startswith(("file://", "pkg://")):
        return None
    try:
        path = resolve_source(cfg.source)
        from pipeline.images.snapshot import is_image_folder

        if cfg.images is not None or is_image_folder(path):
            return image_source_problem(path, cfg)
        columns = source_columns(path)
    except IngestError as exc:
        return str(exc)
    return label_problem(path, columns, cfg.label)


def image_source_problem(path: Path, cfg) -> str | None:
    """Why an image source cannot be trained on, found without opening the images (ingest inspects each):
    a folder needs two or more class subfolders, none empty; a manifest needs its path and label columns."""
    from pipeline.images.manifest import ImageSourceError, scan_folder

    if not path.exists():
        return f"{path}: no such folder or manifest file"
    if path.is_dir():
        try:
            scan_folder(path)
        except ImageSourceError as exc:
            return str(exc)
        return None
    from pipeline.ingest import IngestError

    try:
        columns = source_columns(path)
    except IngestError as exc:
        return str(exc)
    column = cfg.images.path_column if cfg.images is not None else "path"
    if column not in columns:
        return f"{path}: no path column {column!r} (images.path_column); columns are {', '.join(columns)}"
    return label_problem(path, columns, cfg.label)


def source_columns(path: Path) -> list[str]:
    """The column names of a CSV or Parquet source (a file, or the first of its shards), read from its header alone (a CSV's first line, parsed as the
    ingest stage parses the whole file; a Parquet file's schema).

    Raises:
        IngestError: the file is missing, not a file, unreadable, empty, of another type, or its header cannot
            be parsed (the message names the file).
    """
    from pipeline.ingest import IngestError, source_files

    kind, files = source_files(path)
    path = files[0]  # shards must all have the first one's columns: ingest checks the rest
    try:
        if kind == "csv":
            import pandas as pd

            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    except Exception as exc:  # the parser's message says where; keep it, prefixed with the file
        raise IngestError(f"{path}: cannot be parsed as {kind}: {exc}") from exc


def label_problem(path: Path, columns: list[str], label: str) -> str | None:
    """Why ``columns`` (the header of ``path``) cannot be trained on for ``label``, or None: the columns must
    have distinct model input names (:func:`pipeline.features.key_columns`) and one of them must be the label,
    compared by those names, as the ingest stage compares them."""
    from pipeline.features import column_key, key_columns

    try:
        keys = key_columns(columns)
    except ValueError as exc:
        return f"{path}: {exc}"
    if column_key(label) not in keys.values():
        return f"{path}: label column {label!r} not found; columns are {', '.join(columns)}"
    return None


def monitor_problem(params: Mapping[str, Any]) -> str | None:
    """Why the ``drift_monitor`` run of ``params`` (the DAG run conf of ``pipeline monitor``) would fail at once,
    or None: its config file (the ``monitoring:`` section and the model name) must load, and the window and
    labels files it names must exist."""
    from pipeline.monitoring.tasks import MonitorInputError, load_config

    for key, what in (("config", "config file"), ("current", "window file"), ("labels", "labels file")):
        value = params.get(key)
        if key == "current" and value and (Path(value).is_dir() or any(ch in str(value) for ch in "*?[")):
            import glob

            # a window of Parquet shards: a directory of them, or a glob
            if Path(value).is_dir() and not any(Path(value).glob("*.parquet")):
                return f"{value} holds no *.parquet file ({what}, --{key})"
            if not Path(value).is_dir() and not glob.glob(str(value)):
                return f"{value} matches no file ({what}, --{key})"
            continue
        if value and not Path(value).exists():
            return f"{value} does not exist ({what}, --{key})"
        if value and not Path(value).is_file():
            return f"{value} is not a file ({what}, --{key})"
    try:
        load_config(params)
    except MonitorInputError as exc:
        return str(exc)
    except Exception as exc:  # YAML that does not parse, a file that cannot be read
        return f"{params.get('config') or 'the default config'}: cannot be read: {exc}".replace("\n", " ")
    return None
