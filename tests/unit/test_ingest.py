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


MESSY_CSV = """id,count,flag,code,note,empty,mixed
1,3,True,007,hello,,1
2,4,False,012,,,2
3,,True,100,world,,x
4,5,,200,again,,3
5,6,False,300,more,,4
6,7,True,abc,last,,5
7,8.5,False,400,,,6
"""


def test_streamed_csv_types_columns_as_a_whole_read(tmp_path):
    """Chunks of 2 rows: a column that is integer in one chunk and has a blank or a decimal in another is float,
    one word anywhere makes a column text (its digits kept as written), bools with blanks stay bools."""
    src = tmp_path / "messy.csv"
    src.write_text(MESSY_CSV)
    whole = pd.read_csv(src, low_memory=False)
    snap = ingest(str(src), tmp_path / "out", chunk_rows=2)
    streamed = pd.read_parquet(snap.path)
    reference = tmp_path / "whole.parquet"
    whole.to_parquet(reference, index=False)
    pd.testing.assert_frame_equal(streamed, pd.read_parquet(reference), check_dtype=False)
    assert streamed["code"].tolist()[:2] == ["007", "012"]
    assert streamed["count"].dtype == "float64" and streamed["flag"].tolist()[3] is None
    assert snap.rows == 7


def test_generated_table_streams_to_the_whole_read(tmp_path):
    from pipeline.generate import generate_table

    src = tmp_path / "orders.csv"
    generate_table(rows=3000, seed=1).to_csv(src, index=False)
    snap = ingest(str(src), tmp_path / "out", chunk_rows=500)
    reference = tmp_path / "whole.parquet"
    pd.read_csv(src, low_memory=False).to_parquet(reference, index=False)
    pd.testing.assert_frame_equal(pd.read_parquet(snap.path), pd.read_parquet(reference), check_dtype=False)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_shards_as_directory_and_glob(tmp_path, tiny_frame, suffix):
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, part in enumerate([tiny_frame.iloc[:5], tiny_frame.iloc[5:9], tiny_frame.iloc[9:]]):
        out = shards / f"part-{i}.{suffix}"
        part.to_csv(out, index=False) if suffix == "csv" else part.to_parquet(out, index=False)
    by_dir = ingest(str(shards), tmp_path / "a", label="label")
    by_glob = ingest(str(shards / f"part-*.{suffix}"), tmp_path / "b")
    assert by_dir.rows == by_glob.rows == 12 and by_dir.digest == by_glob.digest
    pd.testing.assert_frame_equal(pd.read_parquet(by_dir.path), tiny_frame, check_dtype=False)


def test_shard_with_another_schema_is_named(tmp_path, tiny_frame):
    shards = tmp_path / "shards"
    shards.mkdir()
    tiny_frame.to_parquet(shards / "part-0.parquet", index=False)
    tiny_frame.assign(x=tiny_frame["x"].astype(str)).to_parquet(shards / "part-1.parquet", index=False)
    with pytest.raises(IngestError, match=r"part-1.parquet: schema differs .*x: double vs (large_)?string"):
        ingest(str(shards), tmp_path / "out")
    assert not (tmp_path / "out" / "snapshot.parquet").exists()


def test_string_and_large_string_shards_are_one_table(tmp_path, tiny_frame):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = tmp_path / "shards"
    shards.mkdir()
    for i, string in enumerate([pa.string(), pa.large_string()]):
        table = pa.Table.from_pandas(tiny_frame.iloc[i * 6:(i + 1) * 6], preserve_index=False)
        pq.write_table(table.cast(pa.schema([pa.field(f.name, string if pa.types.is_string(f.type)
                                                      or pa.types.is_large_string(f.type) else f.type)
                                             for f in table.schema])), shards / f"part-{i}.parquet")
    snap = ingest(str(shards), tmp_path / "out")
    pd.testing.assert_frame_equal(pd.read_parquet(snap.path), tiny_frame, check_dtype=False)


def test_truncated_parquet_shard_and_bad_csv_row_are_named(tmp_path, tiny_frame):
    shards = tmp_path / "shards"
    shards.mkdir()
    tiny_frame.to_parquet(shards / "part-0.parquet", index=False)
    whole = (shards / "part-0.parquet").read_bytes()
    (shards / "part-1.parquet").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IngestError, match=r"part-1.parquet: cannot be parsed as parquet"):
        ingest(str(shards), tmp_path / "out")
    src = tmp_path / "extra.csv"
    src.write_text("a,b\n" + "1,2\n" * 20 + "3,4,5\n" + "6,7\n" * 5)
    with pytest.raises(IngestError, match=r"extra.csv: cannot be parsed as csv: .*line 22") as err:
        ingest(str(src), tmp_path / "out2", chunk_rows=4)
    assert not list((tmp_path / "out2").glob("*.parquet")) and not list((tmp_path / "out2").glob(".snapshot*"))


def test_failed_ingest_keeps_the_previous_snapshot(tmp_path, tiny_frame):
    src = tmp_path / "data.csv"
    tiny_frame.to_csv(src, index=False)
    ingest(str(src), tmp_path / "run")
    src.write_text(src.read_text() + "1,2,3,4,5\n")
    with pytest.raises(IngestError):
        ingest(str(src), tmp_path / "run", chunk_rows=4)
    assert len(pd.read_parquet(tmp_path / "run" / "snapshot.parquet")) == 12
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["snapshot.json", "snapshot.parquet"]
