from __future__ import annotations

import numpy as np
import pytest

from pipeline.validate import ValidationError, validate


def test_first_run_infers_schema(tiny_frame):
    result = validate(tiny_frame, "label", None)
    cols = result.schema["columns"]
    assert result.schema["features"] == {"numeric": ["x"], "categorical": ["color"], "label": "label",
                                         "task": "classification"}
    assert cols["color"]["domain"] == ["blue", "green", "red"]
    assert cols["x"]["min"] == 0.1 and cols["x"]["max"] == 2.6
    assert cols["x"]["null_rate"] == pytest.approx(1 / 12)
    assert result.anomalies == []


def _blocking(exc_info):
    return {(a.column, a.kind) for a in exc_info.value.anomalies if a.blocking}


def test_text_in_numeric_column(tiny_frame):
    df = tiny_frame.assign(x=tiny_frame["x"].astype(object))
    df.loc[3, "x"] = "abc"
    with pytest.raises(ValidationError, match=r"x: numeric column has text: 1 of 11 values are not numbers, e.g. \['abc'\]") as err:
        validate(df, "label", None)
    assert ("x", "text_in_numeric") in _blocking(err)


def test_text_in_declared_numeric_column(tiny_frame):
    df = tiny_frame.assign(color_code=["1", "2", "x"] * 4)
    with pytest.raises(ValidationError, match="color_code: numeric column contains text"):
        validate(df, "label", None, numeric=["color_code"])


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
    current = tiny_frame.assign(color=["purple"] + list(tiny_frame["color"][1:]), extra=1.0)
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
        validate(dtype_changed, "label", None, categorical=["x"], reference=reference)
    assert ("x", "dtype_change") in _blocking(err)
    emptier = tiny_frame.assign(x=[np.nan] * 8 + [1.0] * 4)
    with pytest.raises(ValidationError, match="null rate rose") as err:
        validate(emptier, "label", None, reference=reference)
    assert ("x", "null_rate_jump") in _blocking(err)
