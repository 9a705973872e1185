from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import SplitConfig
from pipeline.split import class_balance, split_frame


def test_stratified_split_is_deterministic_and_balanced(penguins):
    cfg = SplitConfig(train=0.7, val=0.15, test=0.15, seed=7)
    a = split_frame(penguins, "species", cfg, "classification")
    b = split_frame(penguins, "species", cfg, "classification")
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert sum(len(p) for p in a.values()) == len(penguins)
    balance = class_balance(a, "species")
    for cls, share in balance["train"].items():
        assert abs(balance["test"][cls] - share) < 0.05
    c = split_frame(penguins, "species", SplitConfig(seed=8), "classification")
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


def test_time_split_puts_newest_rows_in_test():
    df = pd.DataFrame({"t": pd.date_range("2026-01-01", periods=20, freq="D")[::-1], "y": range(20)})
    parts = split_frame(df, "y", SplitConfig(train=0.6, val=0.2, test=0.2, strategy="time", time_column="t"), "regression")
    assert parts["train"]["t"].max() < parts["val"]["t"].min() <= parts["val"]["t"].max() < parts["test"]["t"].min()


def test_too_few_rows():
    with pytest.raises(ValueError, match="too few"):
        split_frame(pd.DataFrame({"x": [1.0], "y": ["a"]}), "y", SplitConfig(), "classification")
