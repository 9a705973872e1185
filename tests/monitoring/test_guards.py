"""Retraining guards: drift alone is not enough; cooldown, daily cap, labels and in-flight hold it back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.monitoring.guards import should_retrain

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DRIFT = {"dataset_drift": True, "skipped": False, "drift_reason": "2 of 5 features drifted", "reason": ""}
KW = {"cooldown": timedelta(hours=6), "max_per_day": 2, "min_new_labels": 100}


def _decide(result=DRIFT, history=(), in_flight=False, new_labels=500, now=NOW):
    return should_retrain(result, list(history), now, in_flight=in_flight, new_labels=new_labels, **KW)


def test_drift_with_all_guards_passing_triggers():
    ok, reason = _decide()
    assert ok and reason.startswith("retraining triggered: dataset drift")


@pytest.mark.parametrize(
    "result, expected",
    [
        ({"dataset_drift": False, "skipped": False}, "no dataset drift"),
        (
            {"dataset_drift": False, "skipped": True, "drift_reason": "skipped: empty window"},
            "window skipped",
        ),
    ],
)
def test_no_drift_or_skipped_window_does_not_trigger(result, expected):
    ok, reason = _decide(result)
    assert not ok and expected in reason


def test_degraded_performance_alone_triggers():
    ok, reason = _decide(
        {"dataset_drift": False, "performance": {"degraded": True, "degraded_metrics": ["accuracy"]}}
    )
    assert ok and "performance degraded: accuracy" in reason


def test_in_flight_blocks():
    ok, reason = _decide(in_flight=True)
    assert not ok and "in flight" in reason


def test_cooldown_blocks_until_it_has_passed():
    assert not _decide(history=[NOW - timedelta(hours=5)])[0]
    assert "cooldown" in _decide(history=[NOW - timedelta(hours=5)])[1]
    assert _decide(history=[NOW - timedelta(hours=6)])[0]


def test_daily_cap_counts_the_last_24_hours():
    two = [NOW - timedelta(hours=7), NOW - timedelta(hours=20)]
    ok, reason = _decide(history=two)
    assert not ok and "daily cap" in reason
    assert _decide(history=[NOW - timedelta(hours=7), NOW - timedelta(hours=25)])[0]


def test_too_few_new_labels_blocks():
    ok, reason = _decide(new_labels=99)
    assert not ok and "99 new labelled rows < 100" in reason


def test_future_history_entries_are_ignored_and_naive_times_are_utc():
    ok, _ = _decide(history=[datetime(2026, 11, 22, 13, 0)], now=datetime(2026, 11, 22, 12, 0))
    assert ok


def test_persisting_drift_triggers_once_per_cooldown():
    """Hourly monitor runs under persisting drift: one trigger per cooldown, at most the daily cap."""
    history: list[datetime] = []
    for hour in range(24):
        now = NOW + timedelta(hours=hour)
        ok, _ = _decide(history=history, now=now)
        if ok:
            history.append(now)
    assert len(history) == 2 and history[1] - history[0] >= timedelta(hours=6)


def test_accepts_a_drift_result_object(frames):
    from pipeline.monitoring.drift import DriftConfig, detect_drift

    result = detect_drift(
        frames(2000, 1), frames(2000, 2, shift=1.0), ["x", "y"], ["c"], DriftConfig(drift_share=0.3)
    )
    assert _decide(result)[0]
