from __future__ import annotations

import pandas as pd
import pytest

from pipeline.ingest import IngestError, ingest, resolve_source


def test_ingest_csv_snapshot_and_digest(tmp_path, tiny_frame):
    src = tmp_path / "data.csv"
    tiny_frame.rename(columns={"x": "x value"}).to_csv(src, index=False)
    snap = ingest(str(src), tmp_path / "run1", label="label")
    df = pd.read_parquet(snap.path)
    assert snap.rows == 12 and list(df.columns) == ["x_value", "color", "label"]
    assert snap.columns["x_value"] == "x value"
    again = ingest(str(src), tmp_path / "run2")
    assert again.digest == snap.digest  # same bytes, same digest
    src.write_text(src.read_text().replace("red", "pink"))
    assert ingest(str(src), tmp_path / "run3").digest != snap.digest


def test_ingest_parquet_in_chunks(tmp_path, monkeypatch, tiny_frame):
    import pipeline.ingest as ingest_mod

    monkeypatch.setattr(ingest_mod, "CHUNK_ROWS", 5)  # 12 rows in 3 chunks
    src = tmp_path / "data.parquet"
    tiny_frame.to_parquet(src)
    snap = ingest(str(src), tmp_path / "out")
    pd.testing.assert_frame_equal(pd.read_parquet(snap.path), tiny_frame)


def test_reingest_overwrites(tmp_path, tiny_frame):
    src = tmp_path / "data.csv"
    tiny_frame.to_csv(src, index=False)
    ingest(str(src), tmp_path / "run")
    tiny_frame.head(3).to_csv(src, index=False)
    assert ingest(str(src), tmp_path / "run").rows == 3
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["snapshot.json", "snapshot.parquet"]


def test_pkg_source_resolves_to_shipped_penguins():
    assert resolve_source("pkg://palmerpenguins/data/penguins.csv").is_file()


@pytest.mark.parametrize("name, content, message", [
    ("missing.csv", None, "file does not exist"),
    ("empty.csv", "", "file is empty"),
    ("header.csv", "a,b,label\n", "header but no rows"),
    ("blank.csv", "\n\n", "no header and no rows"),
    ("data.txt", "a,b\n1,2\n", "unsupported file type"),
    ("bad.parquet", "not parquet at all", "cannot be parsed as parquet"),
])
def test_bad_sources_name_the_file_and_problem(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(IngestError, match=message) as err:
        ingest(str(path), tmp_path / "out")
    assert str(path) in str(err.value)
    assert not (tmp_path / "out" / "snapshot.parquet").exists()


def test_missing_label_column_named(tmp_path, tiny_frame):
    src = tmp_path / "data.csv"
    tiny_frame.to_csv(src, index=False)
    with pytest.raises(IngestError, match=r"label column 'species' not found"):
        ingest(str(src), tmp_path / "out", label="species")
