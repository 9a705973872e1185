from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.features import FeatureError, FeatureSpec, column_key, infer_kind, infer_task, key_columns, resolve_features


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


RNG = np.random.default_rng(0)
N = 400
WORDS = np.array("the quick brown fox jumps over a lazy dog while it rains outside today".split())


@pytest.mark.parametrize("name, values, kind", [
    ("amount", RNG.normal(size=N), "numeric"),
    ("amount_with_gaps", np.where(RNG.random(N) < 0.3, np.nan, RNG.normal(size=N)), "numeric"),
    ("measured", np.where(RNG.random(N) < 0.05, "?", RNG.normal(size=N).round(3).astype(str)), "numeric"),
    ("flag", RNG.random(N) < 0.5, "boolean"),
    ("answer", RNG.choice(["yes", "no"], N), "boolean"),
    ("color", RNG.choice(["red", "green", "blue"], N), "categorical"),
    # ZIP codes with a few ZIP+4 among them: a code, not a broken number
    ("zip", np.where(np.arange(N) < 10, "02134-1234", RNG.choice(["02134", "10001", "94105"], N)), "categorical"),
    ("tail", [f"N{i}" for i in RNG.integers(0, 3000, 5000)], "high_cardinality"),
    ("review", [" ".join(RNG.choice(WORDS, 6)) for _ in range(N)], "text"),
    # names of things: whole values rare, words shared ("ford torino", "ford pinto", ...)
    ("car_name", [f"{RNG.choice(['ford', 'toyota', 'fiat'])} m{i}" for i in RNG.integers(0, 150, N)], "text"),
    ("city", RNG.choice(["New York", "San Francisco", "Los Angeles", "Las Vegas"], N), "categorical"),
    ("when", pd.date_range("2020-01-01", periods=N, freq="D").strftime("%Y-%m-%d"), "datetime"),
    ("stamp", pd.date_range("2020-01-01", periods=N, freq="h").strftime("%Y-%m-%dT%H:%M:%SZ"), "datetime"),
    ("us_date", pd.date_range("2020-01-01", periods=N, freq="D").strftime("%m/%d/%Y"), "datetime"),
    ("dtype_date", pd.date_range("2020-01-01", periods=N, freq="D"), "datetime"),
    ("row", np.arange(N), "identifier"),
    ("customer_id", RNG.permutation(N) * 7 + 3, "identifier"),
    ("uuid", [f"{i:08x}-aa" for i in RNG.permutation(N)], "identifier"),
    ("constant", ["A"] * N, "constant"),
])
def test_infer_kind(name, values, kind):
    got, details, why = infer_kind(name, pd.Series(values, name=name))
    assert got == kind, why
    assert why


def test_high_cardinality_threshold_is_configurable():
    from pipeline.config import FeaturesConfig

    s = pd.Series([f"c{i % 50}" for i in range(500)])
    assert infer_kind("c", s)[0] == "categorical"
    assert infer_kind("c", s, FeaturesConfig(max_vocabulary=20))[0] == "high_cardinality"


def test_numbers_with_words_are_refused_naming_the_column():
    s = pd.Series(["1.5", "2.0", "3.1"] * 40 + ["abc"])
    with pytest.raises(FeatureError, match=r"column 'weight': numeric column has text: 1 of 121 .*\['abc'\]") as err:
        infer_kind("weight", s)
    assert err.value.problem == "text_in_numeric"


def test_mixed_date_formats_are_refused_naming_the_column():
    s = pd.Series(["2024-01-31", "31.01.2024", "Jan 31 2024", "2024-02-01", "01.02.2024"] * 20)
    with pytest.raises(FeatureError, match="column 'signup': dates in mixed or unsupported formats") as err:
        infer_kind("signup", s)
    assert err.value.problem == "mixed_date_formats"


def test_all_missing_and_all_empty_columns_are_refused():
    for values in ([np.nan] * 30, ["", "  "] * 15):
        with pytest.raises(FeatureError, match="all values are missing or empty") as err:
            infer_kind("notes", pd.Series(values))
        assert err.value.column == "notes"


def test_resolve_features_keeps_pins_and_infers_the_rest(tiny_frame):
    df = tiny_frame.assign(code=[1, 2] * 6, year=2007)
    spec = resolve_features(df, "label", None, categorical=["code"], exclude=["year"])
    assert spec.numeric == ("x",) and spec.categorical == ("color", "code")
    assert spec.kind("code") == "categorical" and spec.label == "label" and spec.task == "classification"
    assert spec.excluded["year"].startswith("exclude")


def test_resolve_features_per_column_kinds_and_split_columns(tiny_frame):
    df = tiny_frame.assign(when=pd.date_range("2021-01-01", periods=12).strftime("%Y-%m-%d"), key=range(12))
    spec = resolve_features(df, "label", None, kinds={"color": "text"}, not_features=("when", "key"))
    assert spec.kinds == {"x": "numeric", "color": "text"}
    assert set(spec.excluded) == {"when", "key"}
    pinned = resolve_features(df, "label", None, kinds={"when": "datetime"}, not_features=("when", "key"))
    assert pinned.kind("when") == "datetime" and pinned.details["when"]["format"] == "ymd"


def test_resolve_features_unknown_pinned_column(tiny_frame):
    with pytest.raises(FeatureError, match="not in the data: nope"):
        resolve_features(tiny_frame, "label", None, numeric=["nope"])


def test_only_an_identifier_is_no_feature():
    df = pd.DataFrame({"id": range(100), "y": ["a", "b"] * 50})
    with pytest.raises(FeatureError, match=r"no feature columns left besides the label 'y': id \(identifier"):
        resolve_features(df, "y", None)


def test_spec_round_trip():
    spec = FeatureSpec(("x",), ("c", "t"), "y", "classification", {"x": "numeric", "c": "categorical", "t": "text"},
                       {"t": {"distinct": 9}}, {"id": "identifier: unique"})
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    legacy = FeatureSpec.from_dict({"numeric": ["x"], "categorical": ["c"], "label": "y", "task": "regression"})
    assert legacy.kind("c") == "categorical" and legacy.kind("x") == "numeric"
