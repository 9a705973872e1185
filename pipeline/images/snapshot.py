"""Ingest of an image source: the files' bytes, labels and tabular columns into the run's Parquet snapshot.

The snapshot of an image dataset is a table like any other, so validation, the split, the preprocessing, the
training input pipeline and evaluation read it as they read a table: one row per image, the encoded file (its
bytes, unchanged) in the image column, the label, and the manifest's other columns. The files' facts (path,
digest, size, channels, format) go beside it in ``manifest.parquet``, which validation reports and the model card
cites; they are not features (a model that learns from a file's name or size learns the collection, not the
image). Files are read in batches of :data:`BATCH_FILES`, so the snapshot is written in bounded memory whatever
the number of files; each file's bytes are checked against the digest taken when it was inspected, so a file
rewritten while the snapshot is taken fails the ingest instead of training on something unrecorded.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.images.manifest import (IMAGE_SUFFIXES, LABEL, MAX_PIXELS, PATH, ImageSourceError, dataset_digest,
                                      inspect, read_manifest, scan_folder, summary)

if TYPE_CHECKING:
    from pipeline.config import ImagesConfig
    from pipeline.ingest import Snapshot

BATCH_FILES = 2048
MANIFEST_FILE = "manifest.parquet"
SUMMARY_FILE = "images.json"
FACTS = ("digest", "width", "height", "channels", "format", "bytes")


def is_image_folder(path: Path) -> bool:
    """A folder with class subfolders of image files and no table of its own."""
    if not path.is_dir() or any(p.suffix.lower() in (".csv", ".parquet", ".pq") for p in path.iterdir()
                                if p.is_file()):
        return False
    for sub in path.iterdir():
        if sub.is_dir() and not sub.name.startswith("."):
            if any(p.suffix.lower() in IMAGE_SUFFIXES for p in sub.iterdir() if p.is_file()):
                return True
    return False


def ingest_images(path: Path, out_dir: str | Path, label: str | None, images: "ImagesConfig") -> "Snapshot":
    """Snapshot the image source ``path`` (a folder of class subfolders or a CSV/Parquet manifest) into
    ``out_dir/snapshot.parquet`` with ``manifest.parquet`` and ``images.json`` (:func:`summary`) beside it.

    Raises:
        IngestError: the folder or the manifest cannot be used, or files are missing, empty, undecodable or too
            large (every such file named), or a file changed while it was read.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.features import column_key
    from pipeline.ingest import IngestError, Snapshot

    label_key = column_key(label or LABEL)
    column = column_key(images.column)
    try:
        if path.is_dir():
            frame = scan_folder(path)
        else:
            frame = read_manifest(path, images.path_column, label or LABEL)
        frame = inspect(frame, images.max_pixels or MAX_PIXELS)
    except ImageSourceError as exc:
        raise IngestError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from exc
    extra = [c for c in frame.columns if c not in (PATH, LABEL, *FACTS)]
    keys = {c: column_key(c) for c in extra}
    clash = [c for c in extra if keys[c] in (column, label_key)]
    if clash:
        raise IngestError(f"{path}: manifest column {clash[0]!r} has the name of the "
                          f"{'image' if keys[clash[0]] == column else 'label'} column; rename it")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final, tmp = out_dir / "snapshot.parquet", out_dir / f".snapshot.{uuid.uuid4().hex}.tmp"
    extra_types = {c: pa.Table.from_pandas(frame[[c]], preserve_index=False).schema.field(0).type for c in extra}
    schema = pa.schema([pa.field(column, pa.binary()), pa.field(label_key, pa.string()),
                        *[pa.field(keys[c], extra_types[c]) for c in extra]])
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for start in range(0, len(frame), BATCH_FILES):
                part = frame.iloc[start:start + BATCH_FILES]
                data = []
                for file, digest in zip(part[PATH], part["digest"]):
                    content = Path(file).read_bytes()
                    if hashlib.sha256(content).hexdigest() != digest:
                        raise IngestError(f"{file}: changed while the snapshot was taken; ingest again")
                    data.append(content)
                arrays = [pa.array(data, pa.binary()), pa.array(part[LABEL].astype(str).tolist(), pa.string()),
                          *[pa.array(part[c].tolist(), extra_types[c]) for c in extra]]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=BATCH_FILES)
        manifest = frame[[PATH, LABEL, *FACTS]].rename(columns={LABEL: label_key})
        manifest_tmp = out_dir / f".{MANIFEST_FILE}.{uuid.uuid4().hex}.tmp"
        manifest.to_parquet(manifest_tmp, index=False)
        facts = summary(frame)
        (out_dir / SUMMARY_FILE).write_text(json.dumps({**facts, "source": str(path)}, indent=2))
        os.replace(manifest_tmp, out_dir / MANIFEST_FILE)
        os.replace(tmp, final)  # last: a snapshot is never there without its manifest
    finally:
        tmp.unlink(missing_ok=True)
        for leftover in out_dir.glob(f".{MANIFEST_FILE}.*.tmp"):
            leftover.unlink(missing_ok=True)
    columns = {column: images.column, label_key: label or LABEL, **{keys[c]: str(c) for c in extra}}
    return Snapshot(str(final), str(path), dataset_digest(frame), int(len(frame)), columns)
