from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import SplitConfig
from pipeline.split import class_balance, split_frame


def test_stratified_split_is_deterministic_and_balanced(penguins):
    cfg = SplitConfig(train=0.7, val=0.15, test=0.15, seed=7, strategy="stratified")
    a = split_frame(penguins, "species", cfg, "classification")
    b = split_frame(penguins, "species", cfg, "classification")
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert sum(len(p) for p in a.values()) == len(penguins)
    balance = class_balance(a, "species")
    for cls, share in balance["train"].items():
        assert abs(balance["test"][cls] - share) < 0.05
    c = split_frame(penguins, "species", SplitConfig(seed=8, strategy="stratified"), "classification")
    assert not a["test"].equals(c["test"])  # another seed, another split


def test_rows_without_label_are_dropped(tiny_frame):
    df = tiny_frame.copy()
    df.loc[0, "label"] = None
    parts = split_frame(df, "label", SplitConfig(train=0.5, val=0.0, test=0.5), "classification")
    assert sum(len(p) for p in parts.values()) == 11


def test_hash_split_is_stable_under_appends():
    df = pd.DataFrame({"id": range(1000), "y": [0.0, 1.0] * 500})
    cfg = SplitConfig(strategy="hash", key_column="id")
    first = split_frame(df, "y", cfg, "regression")
    grown = split_frame(pd.concat([df, pd.DataFrame({"id": range(1000, 1500), "y": 1.0})]), "y", cfg, "regression")
    assert set(first["test"]["id"]) == set(grown["test"]["id"][grown["test"]["id"] < 1000])
    assert 0.1 < len(first["test"]) / 1000 < 0.2


def test_by_default_a_retraining_on_appended_rows_never_moves_an_old_row_between_splits(penguins):
    """The champion trained on the first run's train split; the retraining's test split, where the champion is
    scored, must hold none of those rows (nor may the candidate train on the champion's test rows)."""
    cfg = SplitConfig()  # the default strategy
    rows = penguins.assign(row=range(len(penguins)))  # only to tell the rows apart below
    first = split_frame(rows, "species", cfg, "classification")
    labelled = penguins.sample(120, random_state=1).assign(bill_length_mm=lambda d: d["bill_length_mm"] + 0.05)
    grown = pd.concat([rows, labelled.assign(row=range(len(rows), len(rows) + 120))], ignore_index=True)
    grown["year"] = grown["year"].astype("float64")  # a dtype widened by the appended rows
    second = split_frame(grown, "species", cfg, "classification")

    def keys(frame):
        return set(frame["row"])

    for name in ("train", "val", "test"):
        assert keys(first[name]) <= keys(second[name]), name  # every old row is still where it was
    assert not keys(first["train"]) & keys(second["test"])
    for cls, share in class_balance(first, "species")["test"].items():  # roughly balanced without stratifying
        assert abs(class_balance(first, "species")["train"][cls] - share) < 0.1
    assert 0.10 < len(first["test"]) / len(penguins) < 0.20


def test_the_hash_split_depends_on_the_seed_and_on_a_key_column_only_when_given():
    df = pd.DataFrame({"id": list(range(200)) * 2, "x": range(400), "y": [0.0, 1.0] * 200})
    by_key = split_frame(df, "y", SplitConfig(strategy="hash", key_column="id"), "regression")
    ids = [set(part["id"]) for part in by_key.values()]
    assert sum(len(i) for i in ids) == 200  # rows sharing a key share a split
    a = split_frame(df, "y", SplitConfig(), "regression")["test"]
    assert not a.equals(split_frame(df, "y", SplitConfig(seed=43), "regression")["test"])


def test_time_split_puts_newest_rows_in_test():
    df = pd.DataFrame({"t": pd.date_range("2026-01-01", periods=20, freq="D")[::-1], "y": range(20)})
    parts = split_frame(df, "y", SplitConfig(train=0.6, val=0.2, test=0.2, strategy="time", time_column="t"), "regression")
    assert parts["train"]["t"].max() < parts["val"]["t"].min() <= parts["val"]["t"].max() < parts["test"]["t"].min()


def test_too_few_rows():
    with pytest.raises(ValueError, match="too few"):
        split_frame(pd.DataFrame({"x": [1.0], "y": ["a"]}), "y", SplitConfig(), "classification")


def _streamed_equals_whole(tmp_path, frame, label, cfg, task, labels=None, batch_rows=7, pandas_metadata=True):
    """split_parquet on ``frame``'s snapshot, record batches of ``batch_rows`` rows, gives split_frame's splits
    (a snapshot without pandas metadata is what ingest writes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import LabelsConfig
    from pipeline.split import split_parquet

    labels = labels or LabelsConfig()
    snapshot = tmp_path / "snapshot.parquet"
    tmp_path.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table if pandas_metadata else table.replace_schema_metadata(None), snapshot)
    whole = split_frame(pd.read_parquet(snapshot), label, cfg, task, labels)
    summary = split_parquet(snapshot, tmp_path / "split", label, cfg, task, labels, batch_rows=batch_rows)
    for name, part in whole.items():
        streamed = pd.read_parquet(summary.paths[name])
        pd.testing.assert_frame_equal(streamed.astype(part.dtypes.to_dict()), part, check_dtype=False)
        assert summary.rows[name] == len(part)
    if task == "classification":
        for name, shares in class_balance(whole, label).items():
            assert summary.balance[name] == pytest.approx(shares)
    return summary


def test_streamed_hash_split_equals_the_whole_frame_split(tmp_path, penguins):
    """Same rows in the same splits and order, whatever the record batches: penguins has gaps in numbers and
    text; a boolean column with a gap in one batch only, rows without a label too."""
    frame = penguins.copy()
    frame["tagged"] = pd.array([i % 3 == 0 for i in range(len(frame))], dtype="boolean")
    frame.loc[5, "tagged"] = pd.NA
    frame.loc[[3, 40], "species"] = None
    for metadata in (True, False):  # a nullable boolean column, or bools and None read as objects
        summary = _streamed_equals_whole(tmp_path / str(metadata), frame, "species", SplitConfig(), "classification",
                                         pandas_metadata=metadata)
        assert summary.dropped == {"rows_without_label": 2, "rows_merged": 0, "rows_dropped_rare": 0}
    keyed = SplitConfig(strategy="hash", key_column="year", seed=3)
    _streamed_equals_whole(tmp_path / "k", penguins, "species", keyed, "classification", batch_rows=50)


@pytest.mark.parametrize("rule", ["merge", "drop"])
def test_streamed_split_handles_rare_classes_as_the_whole_frame(tmp_path, penguins, rule):
    from pipeline.config import LabelsConfig

    frame = penguins.copy()
    frame.loc[[0, 1, 2], "species"] = "Rare"  # three rows: under min_class_rows, counted over every batch
    labels = LabelsConfig(min_class_rows=5, rare_classes=rule)
    summary = _streamed_equals_whole(tmp_path, frame, "species", SplitConfig(), "classification", labels)
    assert summary.dropped[f"rows_{'merged' if rule == 'merge' else 'dropped_rare'}"] == 3


def test_streamed_split_refuses_what_it_cannot_stream(tmp_path, tiny_frame):
    from pipeline.split import split_parquet

    tiny_frame.to_parquet(tmp_path / "s.parquet", index=False)
    with pytest.raises(ValueError, match="'stratified' needs the whole table"):
        split_parquet(tmp_path / "s.parquet", tmp_path / "o", "label", SplitConfig(strategy="stratified"),
                      "classification")
    with pytest.raises(ValueError, match="key_column 'id' is not a column"):
        split_parquet(tmp_path / "s.parquet", tmp_path / "o", "label", SplitConfig(key_column="id"), "classification")
