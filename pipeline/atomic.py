"""Atomic file writes: a temporary file in the target's directory, flushed, then ``os.replace``d over the target.

A reader (another task, a server polling a file, a retry after a crash) sees the old file or the new one, never
half of one, and a failed write leaves no temporary file behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (``np.save``, ``to_parquet``); once the
    block ends without an error it replaces ``path``, otherwise it is removed.

    Args:
        path: the file to (re)place; its directory is created.
        suffix: the temporary name's ending, for writers that add one (``np.save`` appends ``.npy`` otherwise).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | Path, obj: Any, **dumps_kwargs: Any) -> Path:
    """``json.dumps(obj, **dumps_kwargs)`` written to ``path`` atomically (serialised first: an object that does not
    serialise leaves the old file in place)."""
    return write_text_atomic(path, json.dumps(obj, **dumps_kwargs))


def write_parquet_atomic(path: str | Path, df: "pd.DataFrame", **to_parquet_kwargs: Any) -> Path:
    """``df.to_parquet`` to ``path`` atomically (``index=False`` unless told otherwise)."""
    to_parquet_kwargs.setdefault("index", False)
    with atomic_path(path, suffix=".parquet") as tmp:
        df.to_parquet(tmp, **to_parquet_kwargs)
    return Path(path)
