"""A window or a reference table read batch by batch, so that no whole table is ever in memory.

``table_batches`` reads a Parquet file, directory or glob (record batches, ``pipeline.datasets.iter_frames``), a
CSV file (pandas chunks) or a request-log JSONL file (chunks of lines, ``request_log.parse_lines``), and yields
pandas frames of at most ``batch_rows`` rows. A file that cannot be read is an error naming the file (and, for a
CSV, the line pandas reports). ``request_log.iter_request_log`` is the same for the request-log directories.
``with_predictions`` derives the prediction columns of each batch as the whole-frame path derives them.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path

import pandas as pd

from pipeline.datasets import BATCH_ROWS, iter_frames, parquet_files
from pipeline.monitoring.request_log import parse_lines, prediction_columns

PARQUET_SUFFIXES = {".parquet", ".pq"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
CSV_SUFFIXES = {".csv", ".txt", ".gz"}


class WindowReadError(ValueError):
    """A window or reference file that cannot be read; the message names the file."""


def parquet_sources(path: str | Path) -> list[Path] | None:
    """The Parquet files of ``path`` (a file, a directory of ``*.parquet`` or a glob), else ``None``."""
    text = str(path)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text))
        if not files:
            raise FileNotFoundError(f"{text}: no file matches")
        return files if all(p.suffix.lower() in PARQUET_SUFFIXES for p in files) else None
    p = Path(path)
    if p.is_dir():
        return parquet_files(p)
    return [p] if p.suffix.lower() in PARQUET_SUFFIXES else None


def table_batches(
    path: str | Path, batch_rows: int = BATCH_ROWS, columns: Sequence[str] | None = None
) -> Iterator[pd.DataFrame]:
    """The rows of a CSV, Parquet (file, directory or glob) or request-log JSONL file, as frames of at most
    ``batch_rows`` rows, in file order. ``columns`` (Parquet and CSV): only those that exist."""
    files = parquet_sources(path)
    if files is not None:
        yield from _parquet_batches(files, batch_rows, columns)
        return
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from jsonl_batches(path, batch_rows)
    elif suffix in CSV_SUFFIXES:
        yield from _csv_batches(path, batch_rows, columns)
    else:
        raise ValueError(f"{path}: unknown table format {suffix!r} (csv, parquet or jsonl)")


def _parquet_batches(files: list[Path], batch_rows: int, columns: Sequence[str] | None) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for f in files:
        try:
            names = pq.ParquetFile(f).schema_arrow.names
            wanted = None if columns is None else [c for c in columns if c in names]
            # iter_frames reads one record batch at a time; errors are re-raised with the shard's name
            yield from iter_frames(f, columns=wanted, batch_rows=batch_rows)
        except (pa.ArrowException, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise WindowReadError(f"{f}: unreadable Parquet file ({type(exc).__name__}: {exc})") from exc


def _csv_batches(path: Path, batch_rows: int, columns: Sequence[str] | None) -> Iterator[pd.DataFrame]:
    usecols = None
    if columns is not None:
        header = pd.read_csv(path, nrows=0).columns
        usecols = [c for c in header if c in set(columns)]
    try:
        # pandas chunks rather than pyarrow.csv.open_csv: pyarrow fixes each column's type from the first block
        # and fails on a later block, while the sketches coerce each batch's values as the whole read does
        yield from pd.read_csv(path, chunksize=batch_rows, usecols=usecols)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise WindowReadError(f"{path}: bad CSV ({exc})") from exc


def jsonl_batches(path: Path, batch_rows: int = BATCH_ROWS) -> Iterator[pd.DataFrame]:
    """A request-log JSONL file as frames of ``batch_rows`` lines (broken lines skipped, as ``parse_lines``)."""
    with open(path, encoding="utf-8") as fh:
        while True:
            lines = list(islice(fh, batch_rows))
            if not lines:
                return
            yield parse_lines(lines)


def with_predictions(
    batches: Iterator[pd.DataFrame], task: str, class_names: Sequence[str] = ()
) -> Iterator[pd.DataFrame]:
    """Each batch with its model outputs turned into the compared ``prediction.*`` columns (they replace any
    column of the same name), as ``monitor.run_monitor`` does on a whole frame."""
    for frame in batches:
        outputs = prediction_columns(frame, task, class_names)
        if len(outputs.columns):
            frame = pd.concat(
                [frame.drop(columns=[c for c in outputs.columns if c in frame.columns]), outputs], axis=1
            )
        yield frame


def value_counts(batches: Iterator[pd.DataFrame], column: str) -> dict:
    """Value -> rows of one column over all batches (missing values left out): e.g. which model version served
    a window, in one streamed pass."""
    counts: dict = {}
    for frame in batches:
        if column in frame.columns:
            for v, n in frame[column].dropna().value_counts().items():
                counts[v] = counts.get(v, 0) + int(n)
    return counts


def most_common(counts: dict):
    """The most frequent key of ``counts`` (the smallest among ties, as ``Series.mode``); ``None`` when empty."""
    return min(counts, key=lambda k: (-counts[k], k)) if counts else None
