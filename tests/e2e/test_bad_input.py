"""Bad input that the feature inference must refuse, each a small CSV such as a user could bring: a
feature whose every value is missing, a label whose every value is missing, dates in three formats mixed in
one column, a text column of nothing but whitespace, a table whose only column besides the label is a row id.

Each file is read as the ingest stage reads it and validated with the features inferred (no config), and the
error must name the column and the problem. Two of them (mixed dates, id only) also go through
``pipeline train --source FILE --label y`` as a user runs it: the run fails, says why, and nothing is
published or registered.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROWS = 100
DATE_FORMATS = ("%Y-%m-%d", "%d.%m.%Y", "%b %d %Y")  # 2024-01-31, 31.01.2024, Jan 31 2024


def _base() -> pd.DataFrame:
    """A usable table: a number and a category that carry the two-class label ``y``."""
    rng = np.random.default_rng(0)
    y = np.where(np.arange(ROWS) % 2 == 0, "yes", "no")
    return pd.DataFrame({"x": (rng.normal(size=ROWS) + (y == "yes")).round(3),
                         "color": rng.choice(["red", "green", "blue"], ROWS), "y": y})


def _frame(case: str) -> pd.DataFrame:
    base = _base()
    if case == "all_missing_feature":
        return base.assign(score=np.nan)
    if case == "all_missing_label":
        return base.assign(y=np.nan)
    if case == "mixed_dates":
        days = pd.date_range("2024-01-01", periods=ROWS, freq="D")
        return base.assign(signup=[d.strftime(DATE_FORMATS[i % 3]) for i, d in enumerate(days)])
    if case == "blank_text":
        return base.assign(comment=[(" ", "  ", "\t", "   ")[i % 4] for i in range(ROWS)])
    if case == "id_only":
        return pd.DataFrame({"id": np.arange(ROWS), "y": base["y"]})
    raise ValueError(case)


def write_case(case: str, directory: Path) -> Path:
    """The case's CSV; strings quoted (``" "`` stays a string of spaces), a missing value an empty field."""
    path = directory / f"{case}.csv"
    _frame(case).to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC)
    return path


# case -> (the column the error names, phrases the message must contain)
EXPECTED = {
    "all_missing_feature": ("score", ["all values are missing or empty"]),
    "all_missing_label": ("y", ["label column has no values"]),
    "mixed_dates": ("signup", ["dates in mixed or unsupported formats", "YYYY-MM-DD"]),
    "blank_text": ("comment", ["all values are missing or empty"]),
    "id_only": ("id", ["no feature columns left besides the label 'y'", "id (identifier"]),
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_validate_names_the_column_and_the_problem(case, tmp_path):
    from pipeline.ingest import read_source
    from pipeline.validate import ValidationError, validate

    df = read_source(write_case(case, tmp_path))
    if case == "blank_text":  # the premise: pandas kept the quoted blanks as strings, not as missing values
        assert df["comment"].notna().all() and (df["comment"].str.strip() == "").all()
    column, phrases = EXPECTED[case]
    with pytest.raises(ValidationError) as err:
        validate(df, "y", None)
    message = str(err.value)
    assert column in message and all(p in message for p in phrases), message
    blocking = [a for a in err.value.anomalies if a.blocking]
    assert len(blocking) == 1, f"one problem, reported once: {blocking}"
    if case != "id_only":  # no feature left is a finding about the table, not about one column
        assert blocking[0].column == column


def test_a_configured_feature_column_absent_from_the_file_is_named(tmp_path):
    from pipeline.config import FeaturesConfig
    from pipeline.ingest import read_source
    from pipeline.validate import ValidationError, validate

    path = tmp_path / "usable.csv"
    _base().to_csv(path, index=False)
    df = read_source(path)
    validate(df, "y", None)  # usable as it is
    with pytest.raises(ValidationError) as err:
        validate(df, "y", None, FeaturesConfig(kinds={"score": "numeric"}))
    assert "score" in str(err.value) and "not in the data" in str(err.value)


def _published_versions(home: Path, model: str) -> list[str]:
    base = home / "serving" / model
    return sorted(p.name for p in base.iterdir() if p.name.isdigit()) if base.is_dir() else []


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["mixed_dates", "id_only"])
def test_pipeline_train_refuses_the_file_and_publishes_nothing(case, tmp_path, run_train, monkeypatch):
    import mlflow

    source = write_case(case, tmp_path)
    home = tmp_path / "home"
    result = run_train(home, "--source", str(source), "--label", "y")
    out = result.stdout
    assert result.returncode != 0, out[-5000:]
    column, phrases = EXPECTED[case]
    assert "data validation failed" in out and str(source) in out, out[-5000:]
    assert column in out and all(p in out for p in phrases), out[-5000:]
    assert "Failed tasks:     validate" in out and "Registered model:" not in out

    model = source.stem  # with --source alone the model is named after the file
    assert _published_versions(home, model) == [], "nothing published"
    monkeypatch.setenv("PIPELINE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from pipeline import paths

    client = mlflow.MlflowClient(paths.mlflow_tracking_uri())
    assert client.search_model_versions(f"name = '{model}'") == [], "nothing registered"
