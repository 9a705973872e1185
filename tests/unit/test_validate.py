from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import FeaturesConfig, LabelsConfig
from pipeline.validate import ValidationError, feature_table, validate


def test_first_run_infers_schema(tiny_frame):
    result = validate(tiny_frame, "label", None)
    cols = result.schema["columns"]
    features = result.schema["features"]
    assert (features["numeric"], features["categorical"], features["label"], features["task"]) == (
        ["x"], ["color"], "label", "classification")
    assert features["kinds"] == {"x": "numeric", "color": "categorical"}
    assert cols["color"]["why"] == "3 distinct values" and cols["color"]["kind"] == "categorical"
    assert cols["color"]["domain"] == ["blue", "green", "red"]
    assert cols["x"]["min"] == 0.1 and cols["x"]["max"] == 2.6
    assert cols["x"]["null_rate"] == pytest.approx(1 / 12)
    assert result.anomalies == []


def _blocking(exc_info):
    return {(a.column, a.kind) for a in exc_info.value.anomalies if a.blocking}


def test_text_in_numeric_column(tiny_frame):
    df = tiny_frame.assign(x=tiny_frame["x"].astype(object))
    df.loc[3, "x"] = "abc"
    df = pd.concat([df] * 3, ignore_index=True)
    with pytest.raises(ValidationError, match=r"x: numeric column has text: 3 of 33 values are not numbers, e.g. \['abc'\]") as err:
        validate(df, "label", None)
    assert ("x", "text_in_numeric") in _blocking(err)


def test_text_in_declared_numeric_column(tiny_frame):
    df = tiny_frame.assign(color_code=["1", "2", "x"] * 4)
    result = validate(df, "label", None, FeaturesConfig(kinds={"color_code": "numeric"}))
    # a pinned numeric column is numeric: its text becomes missing (as pd.to_numeric reads it), not inferred away
    assert result.schema["columns"]["color_code"]["kind"] == "numeric"


def test_label_with_one_class(tiny_frame):
    with pytest.raises(ValidationError, match="label: label has a single class"):
        validate(tiny_frame.assign(label="a"), "label", None)


def test_all_nan_feature(tiny_frame):
    with pytest.raises(ValidationError, match="x: all values are missing"):
        validate(tiny_frame.assign(x=np.nan), "label", None)


def test_missing_label_column(tiny_frame):
    with pytest.raises(ValidationError, match="species: label column not found"):
        validate(tiny_frame, "species", None)


def test_against_reference(tiny_frame):
    reference = validate(tiny_frame, "label", None).schema
    current = tiny_frame.assign(color=["purple"] + list(tiny_frame["color"][1:]), extra=np.linspace(0, 1, 12))
    result = validate(current, "label", None, reference=reference)
    kinds = {(a.column, a.kind, a.blocking) for a in result.anomalies}
    assert ("color", "unseen_categories", False) in kinds and ("extra", "extra_column", False) in kinds
    assert "purple" in next(a.message for a in result.anomalies if a.kind == "unseen_categories")


def test_against_reference_blocking(tiny_frame):
    reference = validate(tiny_frame, "label", None).schema
    with pytest.raises(ValidationError) as err:
        validate(tiny_frame.drop(columns="color"), "label", None, reference=reference)
    assert ("color", "missing_column") in _blocking(err)
    dtype_changed = tiny_frame.assign(x=["v"] * 12)
    with pytest.raises(ValidationError) as err:
        validate(dtype_changed, "label", None, FeaturesConfig(kinds={"x": "categorical"}), reference=reference)
    assert ("x", "dtype_change") in _blocking(err)
    emptier = tiny_frame.assign(x=[np.nan] * 8 + [1.0] * 4)
    with pytest.raises(ValidationError, match="null rate rose") as err:
        validate(emptier, "label", None, reference=reference)
    assert ("x", "null_rate_jump") in _blocking(err)


def test_identifiers_and_constants_are_excluded_with_a_warning(tiny_frame):
    df = pd.concat([tiny_frame] * 3, ignore_index=True).assign(row_id=range(36), source="web")
    result = validate(df, "label", None)
    warned = {(a.column, a.kind) for a in result.anomalies if not a.blocking}
    assert {("row_id", "identifier"), ("source", "constant")} <= warned
    assert set(result.schema["features"]["excluded"]) == {"row_id", "source"}
    assert "identifier" in feature_table(result.schema) and "| source | constant |" in feature_table(result.schema)


def test_split_columns_are_not_features(tiny_frame):
    df = tiny_frame.assign(day=pd.date_range("2021-01-01", periods=12).strftime("%Y-%m-%d"))
    result = validate(df, "label", None, not_features=("day",))
    assert "day" not in result.schema["features"]["kinds"] and "day" in result.schema["features"]["excluded"]


def test_missing_labels_are_counted(tiny_frame):
    df = tiny_frame.assign(label=["a", None] + ["a"] * 4 + ["b"] * 6)
    result = validate(df, "label", None)
    assert [a.message for a in result.anomalies if a.kind == "missing_label"] == [
        "1 of 12 rows have no label and are dropped"]
    regression = tiny_frame.assign(label=[1.5, np.nan] + list(np.linspace(0, 9, 10)))
    assert any(a.kind == "missing_label" for a in validate(regression, "label", "regression").anomalies)


def test_rare_class_is_an_error_or_merged(tiny_frame):
    df = pd.concat([tiny_frame] * 2, ignore_index=True)
    df.loc[0:2, "label"] = "c"  # three rows of a third class
    with pytest.raises(ValidationError, match=r"label: class\(es\) with fewer than 5 rows: 'c' \(3 rows\)"):
        validate(df, "label", None)
    merged = validate(df, "label", None, labels=LabelsConfig(rare_classes="merge"))
    assert any(a.kind == "rare_class" and "merged into 'other'" in a.message for a in merged.anomalies)

    from pipeline.split import prepare_labels

    rows, counts = prepare_labels(df, "label", "classification", LabelsConfig(rare_classes="merge"))
    assert (rows["label"] == "other").sum() == 3 and counts["rows_merged"] == 3
    rows, counts = prepare_labels(df, "label", "classification", LabelsConfig(rare_classes="drop"))
    assert "c" not in set(rows["label"]) and counts["rows_dropped_rare"] == 3


def test_every_unusable_column_is_reported_at_once(tiny_frame):
    df = tiny_frame.assign(empty=np.nan, blank=" ")
    with pytest.raises(ValidationError) as err:
        validate(df, "label", None)
    assert {("empty", "all_missing"), ("blank", "all_missing")} <= _blocking(err)


def test_reference_comparison_ignores_excluded_columns_and_string_kind_changes(tiny_frame):
    base = tiny_frame.assign(year=2007)  # a constant: excluded
    reference = validate(base, "label", None).schema
    # the champion never used `year`: its disappearance (or gaps) is not an anomaly
    assert validate(tiny_frame, "label", None, reference=reference).blocking == []
    # a string column turning from categorical into text is still a string input: a warning, not a refusal
    texty = tiny_frame.assign(color=[f"a much longer {c} description number {i}" for i, c in enumerate(tiny_frame["color"])])
    result = validate(texty, "label", None, FeaturesConfig(kinds={"color": "text"}), reference=reference)
    assert [(a.column, a.blocking) for a in result.anomalies if a.kind == "dtype_change"] == [("color", False)]


def _snapshot(tmp_path, frame):
    """``frame`` as ingest writes a snapshot: Parquet without pandas metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "snapshot.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None), path,
                   row_group_size=50)
    return path


def _assert_same(a, b, where="schema"):
    """Equal, floats to rounding (batches are summed in another order than a whole column)."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12, nan_ok=True), where
    else:
        assert a == b, where


def test_streamed_validation_equals_the_whole_frame_validation(tmp_path, penguins):
    """Record batches of 13 rows: the same kinds, counts, domains, statistics and anomalies as the frame."""
    from pipeline.validate import validate_parquet

    frame = penguins.assign(tagged=[None if i == 7 else i % 2 == 0 for i in range(len(penguins))],
                            code=[f"c{i % 40}" for i in range(len(penguins))])
    frame.loc[[3, 90], "species"] = None
    path = _snapshot(tmp_path, frame)
    whole = validate(pd.read_parquet(path), "species", None)
    streamed = validate_parquet(path, "species", None, batch_rows=13)
    _assert_same(streamed.schema, whole.schema)
    assert streamed.anomalies == whole.anomalies and any(a.kind == "missing_label" for a in whole.anomalies)
    assert whole.schema["columns"]["bill_length_mm"]["quantiles"][3] == pytest.approx(
        penguins["bill_length_mm"].median())


def test_streamed_validation_of_a_larger_table_counts_every_row(tmp_path):
    """Kinds and quantiles from a sample of 200 rows; nulls, domains, distinct values, min, max, mean, spread
    and the classes over all 3,000."""
    from pipeline.validate import validate_parquet

    rng = np.random.default_rng(0)
    n = 3000
    frame = pd.DataFrame({"x": rng.normal(size=n), "color": rng.choice(["red", "green", "blue"], n),
                          "y": rng.choice(["a", "b"], n)})
    frame.loc[2999, "x"] = 50.0   # one extreme value, in no sample of 200 rows but in the range
    frame.loc[17, "color"] = "purple"  # one rare value, in the domain
    frame.loc[[5, 6], "x"] = np.nan
    path = _snapshot(tmp_path, frame)
    whole = validate(frame, "y", None).schema["columns"]
    streamed = validate_parquet(path, "y", None, FeaturesConfig(fit_sample_rows=200), batch_rows=256).schema["columns"]
    assert streamed["x"]["max"] == 50.0 and streamed["x"]["null_rate"] == pytest.approx(2 / n)
    for key in ("min", "max", "mean", "std"):
        assert streamed["x"][key] == pytest.approx(whole["x"][key], rel=1e-9)
    assert streamed["color"]["domain"] == whole["color"]["domain"] == ["blue", "green", "purple", "red"]
    assert streamed["y"]["distinct"] == 2
    assert streamed["x"]["quantiles"] != whole["x"]["quantiles"]  # from the sample
    assert streamed["x"]["quantiles"][3] == pytest.approx(whole["x"]["quantiles"][3], abs=0.25)


def test_distinct_values_beyond_the_exact_count_are_estimated():
    from pipeline.profile import EXACT_DISTINCT, ColumnProfile

    profile = ColumnProfile(categorical=True)
    n = EXACT_DISTINCT + 50_000
    for start in range(0, n, 30_000):
        profile.update(pd.Series([f"id{i}" for i in range(start, min(n, start + 30_000))]))
    entry = profile.entry()
    assert entry["domain"] is None and entry["distinct_estimated"] is True
    assert abs(entry["distinct"] - n) / n < 0.06  # a sketch of 4,096 hashes: about 1.5% standard error
