from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import GateConfig
from pipeline.evaluate import classification_metrics, decide_blessing, regression_metrics


def test_classification_metrics_known_values():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.1, 0.2, 0.7]])
    m = classification_metrics(y, proba, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["recall_b"] == pytest.approx(0.5) and m["precision_a"] == pytest.approx(2 / 3)
    assert m["f1_c"] == pytest.approx(1.0)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.6, 0.7, 0.4, 0.8, 0.7])))
    assert 0.9 < m["roc_auc_ovr"] <= 1.0


def test_regression_metrics_known_values():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert m["mae"] == pytest.approx(2 / 3) and m["rmse"] == pytest.approx(np.sqrt(4 / 3))
    assert m["r2"] == pytest.approx(1 - 4 / 2)


GATE = GateConfig(metric="accuracy", thresholds={"accuracy": 0.9}, max_regression=0.02)


@pytest.mark.parametrize("candidate, champion, blessed", [
    ({"accuracy": 0.95}, None, True),                        # first model: thresholds only
    ({"accuracy": 0.85}, None, False),                       # below the floor
    ({"accuracy": 0.95}, {"accuracy": 0.96}, True),          # within the tolerance
    ({"accuracy": 0.93}, {"accuracy": 0.96}, False),         # regresses by more than 0.02
])
def test_gate(candidate, champion, blessed):
    decision = decide_blessing(candidate, GATE, champion)
    assert decision.blessed is blessed
    assert decision.reasons


def test_gate_for_error_metrics_prefers_lower():
    gate = GateConfig(metric="rmse", thresholds={"rmse": 10.0}, max_regression=0.5)
    assert decide_blessing({"rmse": 5.0}, gate, {"rmse": 5.2}).blessed
    assert not decide_blessing({"rmse": 6.0}, gate, {"rmse": 5.2}).blessed
    assert not decide_blessing({"rmse": 11.0}, gate, None).blessed


def test_gate_metric_not_computed():
    decision = decide_blessing({"rmse": 1.0}, GATE, None)
    assert not decision.blessed and any("not computed" in r for r in decision.reasons)


def test_default_gate_metric_follows_the_task():
    from pipeline.evaluate import resolve_gate

    assert resolve_gate(GateConfig(), "classification").metric == "accuracy"
    assert resolve_gate(GateConfig(), "regression").metric == "rmse"
    assert resolve_gate(GATE, "regression").metric == "accuracy"  # a configured metric is kept
    assert decide_blessing({"rmse": 3.0}, resolve_gate(GateConfig(), "regression"), {"rmse": 2.0}).blessed is False


def test_scoring_a_split_batch_by_batch_equals_scoring_the_frame(tmp_path, penguins):
    """The test split's Parquet read in record batches: the labels and predictions of the whole frame, rows of a
    class unseen in training left out, a predictor that fails dropped with its error."""
    from pipeline.evaluate import score_split
    from pipeline.features import resolve_features
    from pipeline.preprocess import fit_preprocessing, label_array
    from pipeline.tracking import split_digest

    df = penguins.dropna(subset=["species"]).reset_index(drop=True)
    spec = resolve_features(df, "species", None)
    meta = fit_preprocessing(df[df["species"] != "Gentoo"], spec)  # Gentoo: unseen in training
    df.to_parquet(tmp_path / "test.parquet", index=False, row_group_size=50)

    calls = []

    def fails_late(frame):  # the second batch has what this predictor cannot read
        calls.append(len(frame))
        if len(calls) == 2:
            raise ValueError("no such input")
        return np.zeros(len(frame))

    predictors = {"rows": lambda frame: frame["bill_length_mm"].to_numpy(), "late": fails_late}
    scored = score_split(tmp_path / "test.parquet", meta, predictors, catch=(ValueError,), head_rows=60, batch_rows=50)
    whole = score_split(df, meta, {"rows": predictors["rows"]})
    y = label_array(df, meta)
    np.testing.assert_array_equal(scored.y, y[y >= 0])
    np.testing.assert_array_equal(scored.predictions["rows"], df["bill_length_mm"][y >= 0].to_numpy())
    np.testing.assert_array_equal(scored.predictions["rows"], whole.predictions["rows"])
    assert scored.errors == {"late": "no such input"} and "late" not in scored.predictions
    assert scored.rows == int((y >= 0).sum()) and len(calls) == 2
    pd.testing.assert_frame_equal(scored.head, df[y >= 0].head(60).reset_index(drop=True))

    from mlflow.data.digest_utils import compute_pandas_digest

    assert split_digest(whole.head, whole.rows) == compute_pandas_digest(whole.head)
