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
