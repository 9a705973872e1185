"""Ingest: read the source (CSV or Parquet, in chunks) into an immutable Parquet snapshot keyed by the DAG run.

The snapshot has model-facing column keys (:func:`pipeline.features.column_key`) and is what every later stage
reads, so a source file that changes after ingest cannot change a run half way through.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.features import key_columns

if TYPE_CHECKING:
    from pipeline.config import ImagesConfig

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
    """Read a CSV or Parquet file whole into a DataFrame (the bad-input tests read sources as pandas does; ingest
    streams with :func:`ingest` instead)."""
    import pandas as pd
    import pyarrow.parquet as pq

    kind = check_source_file(path)
    with _guard(path, kind):
        if kind == "csv":
            chunks = list(pd.read_csv(path, chunksize=chunk_rows, low_memory=False))
            df = pd.concat(chunks, ignore_index=True) if chunks else pd.read_csv(path, nrows=0)
        else:
            pf = pq.ParquetFile(path)
            batches = [b.to_pandas() for b in pf.iter_batches(batch_size=chunk_rows)]
            df = pd.concat(batches, ignore_index=True) if batches else pf.schema_arrow.empty_table().to_pandas()
    if len(df.columns) == 0:
        raise IngestError(f"{path}: file has no columns")
    if len(df) == 0:
        raise IngestError(f"{path}: file has a header but no rows")
    return df


def source_files(path: Path) -> tuple[str, list[Path]]:
    """The kind and the files of a source: one file, a directory of shards (its ``.csv`` or ``.parquet`` files,
    by name) or a glob of them (``data/part-*.parquet``). Shards are read in name order as one table.

    Raises:
        IngestError: nothing matches, shards of both kinds are mixed, or a shard is not a readable, non-empty file
            (the message names it).
    """
    text = str(path)
    if any(ch in path.name for ch in "*?["):
        files = sorted(p for p in path.parent.glob(path.name) if p.is_file())
        if not files:
            raise IngestError(f"{text}: no file matches")
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED)
        if not files:
            raise IngestError(f"{text}: directory has no .csv or .parquet file")
    else:
        files = [path]
    kinds = {check_source_file(f) for f in files}
    if len(kinds) > 1:
        raise IngestError(f"{text}: shards of both CSV and Parquet; use one kind")
    return kinds.pop(), files


def source_bytes(path: Path) -> int:
    """The total size of a source's files (0 when it cannot be listed)."""
    try:
        return sum(f.stat().st_size for f in source_files(path)[1])
    except (IngestError, OSError):
        return 0


def sources_digest(files: list[Path]) -> str:
    """sha256 of the source's bytes; for shards, of each shard's name and digest in order."""
    if len(files) == 1:
        return file_digest(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{file_digest(f)}\n".encode())
    return h.hexdigest()


# Column kinds of a CSV chunk, as pandas infers them from the text; "null" is a column empty in that chunk.
def _chunk_kinds(df) -> dict[str, str]:
    import pandas as pd

    kinds = {}
    for col in df.columns:
        s = df[col]
        if s.isna().all():
            kinds[col] = "null"
            continue
        inferred = pd.api.types.infer_dtype(s, skipna=True)
        kinds[col] = {"integer": "int", "floating": "float", "boolean": "bool",
                      "mixed-integer-float": "float"}.get(inferred, "string")
    return kinds


def _unify(a: str, b: str) -> str:
    """The kind pandas gives a column whose values, read whole, are of kinds ``a`` and ``b``."""
    if a == b or b == "null":
        return a
    if a == "null":
        return b
    if {a, b} == {"int", "float"}:
        return "float"
    return "string"


def _csv_reader(path: Path, chunk_rows: int, dtype=None):
    import pandas as pd

    return pd.read_csv(path, chunksize=chunk_rows, low_memory=False, dtype=dtype)


def _stream_csv(files: list[Path], chunk_rows: int):
    """Record batches of CSV shards, typed as pandas types each column when it reads the whole table at once.

    Two passes, each holding one chunk: the first finds each column's kind over every chunk (a column of
    integers with a blank cell somewhere is float, a column with one word in it is text, as in a whole read), the
    second parses again with text columns read as text (so "007" stays "007") and converts each chunk to the
    Arrow schema those kinds give."""
    import pyarrow as pa

    kinds: dict[str, str] = {}
    columns: list[str] | None = None
    for f in files:
        with _guard(f, "csv"):
            for chunk in _csv_reader(f, chunk_rows):
                if columns is None:
                    columns = [str(c) for c in chunk.columns]
                elif [str(c) for c in chunk.columns] != columns:
                    raise IngestError(f"{f}: columns {list(map(str, chunk.columns))} differ from the first "
                                      f"shard's {columns}")
                for col, kind in _chunk_kinds(chunk).items():
                    kinds[col] = _unify(kinds.get(col, "null"), kind)
    if columns is None:
        return None, iter(())
    arrow = {"int": pa.int64(), "float": pa.float64(), "null": pa.float64(), "bool": pa.bool_(),
             "string": pa.string()}
    schema = pa.schema([(c, arrow[kinds.get(c, "null")]) for c in columns])
    dtype = {c: (str if kinds.get(c) == "string" else "float64") for c in columns
             if kinds.get(c, "null") in ("string", "float", "null")}

    def batches():
        for f in files:
            with _guard(f, "csv"):
                for chunk in _csv_reader(f, chunk_rows, dtype=dtype):
                    chunk.columns = columns
                    for col in columns:  # bools with blanks come as objects; Arrow takes them as bool
                        if kinds.get(col) == "bool" and chunk[col].dtype != bool:
                            chunk[col] = chunk[col].astype(object)
                    yield pa.RecordBatch.from_pandas(chunk, schema=schema, preserve_index=False)

    return schema, batches()


def _stream_parquet(files: list[Path], chunk_rows: int):
    """Record batches of Parquet shards as stored (a pandas index saved as a column is left out, as a whole
    read into pandas would make it the index); every shard must have the first one's schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = None
    readers = []
    for f in files:
        with _guard(f, "parquet"):
            pf = pq.ParquetFile(f)
            meta = pf.schema_arrow.pandas_metadata or {}
            index_cols = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
            cols = [n for n in pf.schema_arrow.names if n not in index_cols]
            this = pa.schema([pf.schema_arrow.field(n) for n in cols])
            if schema is None:
                schema = this
            elif not _logical(this).equals(_logical(schema)):
                raise IngestError(f"{f}: schema differs from the first shard's ({files[0].name}): "
                                  f"{_schema_difference(schema, this)}")
            readers.append((f, cols))
            pf.close()

    def batches():
        # Each shard is opened when its turn comes and closed once read: an open ParquetFile keeps what it
        # read buffered, and 40 shards held open grew ingest by 12 MB a record batch (582 MB of Arrow memory
        # at 5M rows, 129 MB with this).
        for f, cols in readers:
            with _guard(f, "parquet"):
                pf = pq.ParquetFile(f)
                try:
                    for batch in pf.iter_batches(batch_size=chunk_rows, columns=cols):
                        batch = batch.replace_schema_metadata(None)
                        if not batch.schema.equals(schema):  # string in one shard, large_string in another
                            batch = pa.Table.from_batches([batch]).cast(schema).combine_chunks().to_batches()[0]
                        yield batch
                finally:
                    pf.close()

    return schema, batches()


def _logical(schema):
    """``schema`` with Arrow's 64-bit-offset string and binary types as the plain ones: writers pick either."""
    import pyarrow as pa

    plain = {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}
    return pa.schema([pa.field(f.name, plain.get(f.type, f.type)) for f in schema])


def _schema_difference(a, b) -> str:
    fa, fb = dict(zip(a.names, a.types)), dict(zip(b.names, b.types))
    parts = [f"{n}: {fa[n]} vs {fb[n]}" for n in fa if n in fb and fa[n] != fb[n]]
    parts += [f"{n} missing" for n in fa if n not in fb] + [f"{n} extra" for n in fb if n not in fa]
    return "; ".join(parts) or "column order"


@contextlib.contextmanager
def _guard(path: Path, kind: str):
    """Parser errors, prefixed with the shard they came from (pandas' messages carry the line)."""
    import pandas as pd

    try:
        yield
    except IngestError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise IngestError(f"{path}: file has no header and no rows") from exc
    except Exception as exc:
        raise IngestError(f"{path}: cannot be parsed as {kind}: {exc}") from exc


def ingest(source: str, out_dir: str | Path, label: str | None = None, chunk_rows: int | None = None,
           images: "ImagesConfig | None" = None) -> Snapshot:
    """Snapshot ``source`` into ``out_dir/snapshot.parquet`` (overwriting a previous attempt of the same run),
    streamed: one chunk of ``chunk_rows`` rows is in memory at a time, whatever the source's size.

    Args:
        source: path, ``file://`` or ``pkg://`` URI of a CSV or Parquet file, a directory of shards or a glob.
        out_dir: the run-keyed data directory.
        label: when given, the label column must exist (checked here so the error names the file).
        images: how to read an image source (``pipeline.images.snapshot``); a folder of class subfolders of
            image files is read as one without it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.images.snapshot import ingest_images, is_image_folder

    chunk_rows = chunk_rows or CHUNK_ROWS
    path = resolve_source(source)
    if images is not None or is_image_folder(path):
        from pipeline.config import ImagesConfig

        if not path.exists():
            raise IngestError(f"{path}: no such folder or manifest file")
        snap = ingest_images(path, out_dir, label, images or ImagesConfig())
        (Path(out_dir) / "snapshot.json").write_text(json.dumps(snap.to_dict(), indent=2))
        return snap
    kind, files = source_files(path)
    schema, batches = (_stream_csv if kind == "csv" else _stream_parquet)(files, chunk_rows)
    if schema is None or len(schema) == 0:
        raise IngestError(f"{path}: file has no columns")
    try:
        mapping = key_columns(schema.names)
    except ValueError as exc:
        raise IngestError(f"{path}: {exc}") from exc
    if label is not None:
        from pipeline.features import column_key

        if column_key(label) not in mapping.values():
            raise IngestError(f"{path}: label column {label!r} not found; columns are {', '.join(map(str, mapping))}")
    out_schema = pa.schema([pa.field(mapping[f.name], f.type) for f in schema])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / "snapshot.parquet"
    tmp = out_dir / f".snapshot.{uuid.uuid4().hex}.tmp"
    rows = 0
    try:
        with pq.ParquetWriter(tmp, out_schema) as writer:
            for batch in batches:
                rows += batch.num_rows
                writer.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=out_schema))
        if rows == 0:
            raise IngestError(f"{path}: file has a header but no rows")
        os.replace(tmp, final)  # atomic: readers see the old snapshot or the new one, never half of one
    finally:
        tmp.unlink(missing_ok=True)
    snap = Snapshot(str(final), str(path), sources_digest(files), rows, {v: str(k) for k, v in mapping.items()})
    (out_dir / "snapshot.json").write_text(json.dumps(snap.to_dict(), indent=2))
    return snap
