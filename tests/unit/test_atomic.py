"""Tests of pipeline.atomic, and of the stage outputs written through it: a failed write leaves the old file whole
and no temporary file; a reader never sees half of a file."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline import atomic


class Unserialisable:
    pass


def test_json_and_text_replace_the_file_and_leave_nothing_else(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    atomic.write_json_atomic(target, {"a": 1})
    atomic.write_json_atomic(target, {"a": 2}, indent=2)
    assert json.loads(target.read_text()) == {"a": 2} and [p.name for p in target.parent.iterdir()] == ["metrics.json"]
    with pytest.raises(TypeError):
        atomic.write_json_atomic(target, {"a": Unserialisable()})
    assert json.loads(target.read_text()) == {"a": 2}
    atomic.write_text_atomic(tmp_path / "r.html", "é")
    assert (tmp_path / "r.html").read_text(encoding="utf-8") == "é"


def test_a_writer_failing_half_way_keeps_the_old_file(tmp_path):
    target = tmp_path / "predictions.npy"
    np.save(target, np.arange(3))
    with pytest.raises(OSError, match="disk full"):
        with atomic.atomic_path(target, suffix=".npy") as tmp:
            tmp.write_bytes(b"half a")
            raise OSError(28, "disk full")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.npy"]
    with atomic.atomic_path(target, suffix=".npy") as tmp:
        np.save(tmp, np.arange(5))
    np.testing.assert_array_equal(np.load(target), np.arange(5))


def test_parquet_is_replaced_whole(tmp_path, monkeypatch):
    frame = pd.DataFrame({"x": [1, 2, 3]})
    target = atomic.write_parquet_atomic(tmp_path / "train.parquet", frame)
    real = pd.DataFrame.to_parquet

    def half(self, path, **kwargs):  # writes part of a file, then fails
        open(path, "wb").write(b"PAR1")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half)
    with pytest.raises(OSError, match="No space left"):
        atomic.write_parquet_atomic(target, pd.DataFrame({"x": [9]}))
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real)
    pd.testing.assert_frame_equal(pd.read_parquet(target), frame)
    assert [p.name for p in tmp_path.iterdir()] == ["train.parquet"]


def test_write_splits_never_leaves_half_a_split(tmp_path, monkeypatch):
    from pipeline.split import write_splits

    parts = {"train": pd.DataFrame({"x": [1, 2]}), "test": pd.DataFrame({"x": [3]})}
    written = write_splits(parts, tmp_path / "split")
    assert sorted(written) == ["test", "train"]

    def half(self, path, **kwargs):
        open(path, "wb").write(b"PAR1")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half)
    with pytest.raises(OSError):
        write_splits({"train": pd.DataFrame({"x": [7]})}, tmp_path / "split")
    monkeypatch.undo()
    assert pd.read_parquet(written["train"])["x"].tolist() == [1, 2], "the earlier split is whole"
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["test.parquet", "train.parquet"]

