"""Performance on labelled windows against the lineage baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score

from pipeline.monitoring.performance import (
    baseline_value,
    classification_metrics,
    evaluate_performance,
    regression_metrics,
)


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    t = rng.choice(["a", "b", "c"], 200)
    p = np.where(rng.random(200) < 0.7, t, rng.choice(["a", "b", "c"], 200))
    m = classification_metrics(t, p)
    assert m["accuracy"] == pytest.approx(accuracy_score(t, p))
    assert m["f1_macro"] == pytest.approx(f1_score(t, p, average="macro"))


def test_regression_metrics_known_values():
    assert regression_metrics([1, 2, 3], [1, 2, 5]) == {
        "mae": pytest.approx(2 / 3),
        "rmse": pytest.approx(np.sqrt(4 / 3)),
    }
    assert regression_metrics([], []) == {}


def test_baseline_lookup_prefixes_and_aliases():
    assert baseline_value({"test_accuracy": 0.9}, "accuracy") == 0.9
    assert baseline_value({"val_macro_f1": 0.8}, "f1_macro") == 0.8
    assert baseline_value({"accuracy": True}, "accuracy") is None
    assert baseline_value({}, "mae") is None


def test_degraded_classification_with_integer_labels():
    window = pd.DataFrame({"prediction.class": ["A", "B", "A", "A"], "label": [0, 1, 1, np.nan]})
    perf = evaluate_performance(
        window,
        "classification",
        prediction="prediction.class",
        class_names=["A", "B"],
        baseline={"accuracy": 0.95},
    )
    assert perf["evaluated"] and perf["n_labelled"] == 3
    assert perf["metrics"]["accuracy"] == pytest.approx(2 / 3)
    assert perf["delta"]["accuracy"] == pytest.approx(2 / 3 - 0.95)
    assert perf["degraded"] and perf["degraded_metrics"] == ["accuracy"]


def test_regression_within_tolerance_is_not_degraded():
    window = pd.DataFrame({"prediction.value": [1.0, 2.0, 3.0], "y": [1.1, 2.1, 2.9]})
    perf = evaluate_performance(
        window,
        "regression",
        label="y",
        prediction="prediction.value",
        baseline={"test_mae": 0.1, "test_rmse": 0.2},
    )
    assert perf["metrics"]["mae"] == pytest.approx(0.1)
    assert not perf["degraded"]


def test_too_few_labels_is_not_evaluated():
    window = pd.DataFrame({"prediction.class": ["A", "B"], "label": ["A", np.nan]})
    perf = evaluate_performance(window, "classification", prediction="prediction.class", min_labels=5)
    assert not perf["evaluated"] and perf["n_labelled"] == 1 and perf["metrics"] == {}
