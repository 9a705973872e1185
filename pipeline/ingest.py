"""Ingest: read the source (CSV or Parquet, in chunks) into an immutable Parquet snapshot keyed by the DAG run.

The snapshot has model-facing column keys (:func:`pipeline.features.column_key`) and is what every later stage
reads, so a source file that changes after ingest cannot change a run half way through.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from pipeline.features import key_columns

CHUNK_ROWS = 200_000
SUPPORTED = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class IngestError(ValueError):
    """The source cannot be read into a snapshot; the message names the file and the problem."""


@dataclass(frozen=True)
class Snapshot:
    """An ingested dataset: where its Parquet snapshot lives and what it contains."""

    path: str          # the Parquet snapshot
    source: str        # the resolved source file it was read from
    digest: str        # sha256 of the source file's bytes: same bytes, same digest
    rows: int
    columns: dict[str, str]  # key -> original column name

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_source(source: str) -> Path:
    """A local path for ``source``: a path, a ``file://`` URI, or ``pkg://<package>/<file>`` for data that
    ships inside an installed package (the penguins CSV in ``palmerpenguins``)."""
    if source.startswith("pkg://"):
        package, _, rel = source[len("pkg://"):].partition("/")
        try:
            return Path(str(resources.files(package).joinpath(rel)))
        except ModuleNotFoundError as exc:
            raise IngestError(f"source {source}: package {package!r} is not installed") from exc
    if source.startswith("file://"):
        source = source[len("file://"):]
    return Path(source).expanduser().resolve()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_source_file(path: Path) -> str:
    """The kind of ``path`` (``csv`` or ``parquet``) once it is known to be a readable, non-empty file of one.

    Raises:
        IngestError: the file is of another type, missing, not a file, unreadable or empty (the message names it).
    """
    kind = SUPPORTED.get(path.suffix.lower())
    if kind is None:
        raise IngestError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .parquet")
    if not path.exists():
        raise IngestError(f"{path}: file does not exist")
    if not path.is_file():
        raise IngestError(f"{path}: not a file")
    try:
        with open(path, "rb") as fh:
            empty = not fh.read(1)
    except OSError as exc:
        raise IngestError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    if empty:
        raise IngestError(f"{path}: file is empty")
    return kind


def read_source(path: Path, chunk_rows: int = CHUNK_ROWS):
    """Read a CSV or Parquet file into a DataFrame, chunk by chunk so that parsing memory stays bounded."""
    import pandas as pd
    import pyarrow.parquet as pq

    kind = check_source_file(path)
    try:
        if kind == "csv":
            chunks = list(pd.read_csv(path, chunksize=chunk_rows, low_memory=False))
            df = pd.concat(chunks, ignore_index=True) if chunks else pd.read_csv(path, nrows=0)
        else:
            pf = pq.ParquetFile(path)
            batches = [b.to_pandas() for b in pf.iter_batches(batch_size=chunk_rows)]
            df = pd.concat(batches, ignore_index=True) if batches else pf.schema_arrow.empty_table().to_pandas()
    except IngestError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise IngestError(f"{path}: file has no header and no rows") from exc
    except Exception as exc:  # parser errors carry the line; keep them, prefixed with the file
        raise IngestError(f"{path}: cannot be parsed as {kind}: {exc}") from exc
    if len(df.columns) == 0:
        raise IngestError(f"{path}: file has no columns")
    if len(df) == 0:
        raise IngestError(f"{path}: file has a header but no rows")
    return df


def ingest(source: str, out_dir: str | Path, label: str | None = None) -> Snapshot:
    """Snapshot ``source`` into ``out_dir/snapshot.parquet`` (overwriting a previous attempt of the same run).

    Args:
        source: path, ``file://`` or ``pkg://`` URI of a CSV or Parquet file.
        out_dir: the run-keyed data directory.
        label: when given, the label column must exist (checked here so the error names the file).
    """
    path = resolve_source(source)
    df = read_source(path)
    try:
        mapping = key_columns(df.columns)
    except ValueError as exc:
        raise IngestError(f"{path}: {exc}") from exc
    df = df.rename(columns=mapping)
    if label is not None:
        from pipeline.features import column_key

        if column_key(label) not in df.columns:
            raise IngestError(f"{path}: label column {label!r} not found; columns are {', '.join(map(str, mapping))}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "snapshot.parquet"
    tmp = out_dir / f".snapshot.{uuid.uuid4().hex}.tmp"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, final)  # atomic: readers see the old snapshot or the new one, never half of one
    snap = Snapshot(str(final), str(path), file_digest(path), int(len(df)), {v: str(k) for k, v in mapping.items()})
    (out_dir / "snapshot.json").write_text(json.dumps(snap.to_dict(), indent=2))
    return snap
