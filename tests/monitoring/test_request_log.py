"""Reading the serving request log (docs/contracts.md) and joining late labels."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from pipeline.monitoring.request_log import (
    join_labels,
    log_files,
    prediction_columns,
    read_request_log,
    window_columns,
)


def _line(
    rid: str, row: int, ts: str, island: str | None, bill: float | None, proba: list[float], version: int = 3
) -> str:
    return json.dumps(
        {
            "request_id": rid,
            "row": row,
            "ts": ts,
            "model_name": "penguins",
            "model_version": version,
            "signature_name": "serving_default",
            "api": "rest",
            "features": {"island": island, "bill_length_mm": bill},
            "outputs": {"probabilities": proba},
        }
    )


@pytest.fixture
def log_root(tmp_path):
    root = tmp_path / "request_logs"
    d1 = root / "penguins" / "2026-11-22"
    d1.mkdir(parents=True)
    (d1 / "01-100.jsonl").write_text(
        "\n".join(
            [
                _line("r1", 0, "2026-11-22T01:02:03.456789+00:00", "Biscoe", 39.1, [0.9, 0.05, 0.05]),
                _line("r1", 1, "2026-11-22T01:02:03.456789+00:00", "Dream", None, [0.1, 0.8, 0.1]),
                '{"request_id": "broken", "ro',  # a line cut by a crash
                "",
            ]
        )
    )
    (d1 / "02-100.jsonl").write_text(
        _line("r2", 0, "2026-11-22T02:30:00+00:00", "Torgersen", 45.0, [0.2, 0.2, 0.6], version=4) + "\n"
    )
    (d1 / "05-100.jsonl").write_text(
        _line("r3", 0, "2026-11-22T05:00:00+00:00", "Biscoe", 50.0, [0.3, 0.3, 0.4]) + "\n"
    )
    d0 = root / "penguins" / "2026-11-21"
    d0.mkdir()
    (d0 / "23-7.jsonl").write_text(
        _line("r0", 0, "2026-11-21T23:59:59+00:00", "Biscoe", 38.0, [1, 0, 0]) + "\n"
    )
    return root


def test_files_are_chosen_by_date_and_hour(log_root):
    files = log_files(
        log_root / "penguins",
        datetime(2026, 11, 21, 23, 30, tzinfo=UTC),
        datetime(2026, 11, 22, 2, 0, tzinfo=UTC),
    )
    assert [f.name for f in files] == ["23-7.jsonl", "01-100.jsonl"]


def test_window_rows_features_flattened_and_outputs(log_root):
    frame = read_request_log(
        "penguins", datetime(2026, 11, 22, 0, 0), datetime(2026, 11, 22, 3, 0), base_dir=log_root
    )
    assert frame["request_id"].tolist() == ["r1", "r1", "r2"]
    assert frame["row"].tolist() == [0, 1, 0]
    assert frame["island"].tolist() == ["Biscoe", "Dream", "Torgersen"]
    assert frame["bill_length_mm"].isna().tolist() == [False, True, False]
    assert frame["output.probabilities"].iloc[0] == [0.9, 0.05, 0.05]
    assert str(frame["ts"].dt.tz) == "UTC"
    assert set(window_columns(frame)) == {
        "request_id",
        "row",
        "ts",
        "model_name",
        "model_version",
        "signature_name",
        "api",
        "output.probabilities",
    }


def test_window_bounds_are_half_open_and_version_filter(log_root):
    frame = read_request_log(
        "penguins",
        datetime(2026, 11, 22, 2, 30, tzinfo=UTC),
        datetime(2026, 11, 22, 5, 0, tzinfo=UTC),
        base_dir=log_root,
    )
    assert frame["request_id"].tolist() == ["r2"]  # 05:00:00 is the next window's
    v3 = read_request_log(
        "penguins", datetime(2026, 11, 21), datetime(2026, 11, 23), base_dir=log_root, model_version=3
    )
    assert v3["request_id"].tolist() == ["r0", "r1", "r1", "r3"]


def test_empty_window_has_the_metadata_columns(log_root):
    frame = read_request_log("penguins", datetime(2030, 1, 1), datetime(2030, 1, 2), base_dir=log_root)
    assert len(frame) == 0 and "request_id" in frame.columns


def test_prediction_columns_classification_and_regression():
    frame = pd.DataFrame({"output.probabilities": [[0.9, 0.05, 0.05], [0.1, 0.2, 0.7], None]})
    pred = prediction_columns(frame, "classification", ["Adelie", "Chinstrap", "Gentoo"])
    assert pred["prediction.class"].fillna("-").tolist() == ["Adelie", "Gentoo", "-"]
    assert pred["prediction.proba.Gentoo"].iloc[1] == pytest.approx(0.7)
    assert np.isnan(pred["prediction.proba.Adelie"].iloc[2])
    reg = prediction_columns(pd.DataFrame({"output.value": [1.5, [2.5]]}), "regression")
    assert reg["prediction.value"].tolist() == [1.5, 2.5]
    assert prediction_columns(pd.DataFrame({"x": [1]}), "classification").columns.empty
    with pytest.raises(ValueError, match="class names"):
        prediction_columns(frame, "classification", ["a", "b"])


def test_join_labels_on_request_and_row(log_root):
    frame = read_request_log("penguins", datetime(2026, 11, 22), datetime(2026, 11, 23), base_dir=log_root)
    labels = pd.DataFrame(
        {
            "request_id": ["r1", "r1", "r3", "r3"],
            "row": [1, 0, 0, 0],
            "species": ["Chinstrap", "Adelie", "Gentoo", "Adelie"],
        }
    )  # r3 corrected later
    joined = join_labels(frame, labels, "species")
    assert joined["species"].fillna("-").tolist() == ["Adelie", "Chinstrap", "-", "Adelie"]
    assert len(joined) == len(frame)


def test_join_labels_per_request_and_missing_columns():
    window = pd.DataFrame({"request_id": ["a", "b"], "row": [0, 0], "x": [1, 2]})
    joined = join_labels(window, pd.DataFrame({"request_id": ["b"], "label": [1]}))
    assert joined["label"].isna().tolist() == [True, False]
    with pytest.raises(KeyError, match="labels lack"):
        join_labels(window, pd.DataFrame({"id": ["b"], "label": [1]}))


def test_prediction_columns_of_an_empty_window():
    empty = pd.DataFrame({"output.probabilities": pd.Series([], dtype=object)})
    pred = prediction_columns(empty, "classification", ["a", "b"])
    assert len(pred) == 0 and list(pred.columns) == [
        "prediction.class",
        "prediction.proba.a",
        "prediction.proba.b",
    ]


def test_non_utf8_and_non_scalar_feature_values_stay_hashable():
    from pipeline.monitoring.request_log import parse_lines

    line = json.dumps(
        {
            "request_id": "r",
            "row": 0,
            "ts": "2026-11-22T01:00:00+00:00",
            "features": {"s": {"b64": "/w=="}, "v": [1, 2]},
        }
    )
    frame = parse_lines([line])
    assert frame["s"].tolist() == ["b64:/w=="] and frame["v"].tolist() == ["[1, 2]"]
