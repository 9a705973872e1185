from __future__ import annotations

import pandas as pd
import pytest

from pipeline.features import column_key, infer_task, key_columns, resolve_features


@pytest.mark.parametrize("name, key", [("bill_length_mm", "bill_length_mm"), ("Body Mass (g)", "Body_Mass__g_"),
                                       ("_id", "f_id"), ("naïve", "na_ve")])
def test_column_key(name, key):
    assert column_key(name) == key


def test_colliding_keys_are_an_error():
    with pytest.raises(ValueError, match="both become 'a_b'"):
        key_columns(["a b", "a-b", "a_b"])


@pytest.mark.parametrize("values, task", [(["x", "y"], "classification"), ([0, 1, 1, 0], "classification"),
                                          ([0.5, 1.7, 2.2], "regression"), (list(range(100)), "regression")])
def test_infer_task(values, task):
    assert infer_task(pd.Series(values)) == task


def test_resolve_features_keeps_pins_and_infers_the_rest(tiny_frame):
    df = tiny_frame.assign(code=[1, 2] * 6, year=2007)
    spec = resolve_features(df, "label", None, categorical=["code"], exclude=["year"])
    assert spec.numeric == ("x",) and spec.categorical == ("code", "color")
    assert spec.label == "label" and spec.task == "classification"


def test_resolve_features_unknown_pinned_column(tiny_frame):
    with pytest.raises(ValueError, match="not in the data: nope"):
        resolve_features(tiny_frame, "label", None, numeric=["nope"])
