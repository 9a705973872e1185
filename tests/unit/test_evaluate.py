from __future__ import annotations

import numpy as np
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
