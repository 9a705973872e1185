"""Guards of the retraining loop: whether a monitor result may trigger a retraining now. Pure.

A retraining is triggered by dataset drift (or by degraded performance on labelled traffic) only when all hold:
no retraining is in flight, the last one is older than the cooldown, fewer than ``max_per_day`` were triggered
in the 24 hours before ``now``, and at least ``min_new_labels`` labelled rows arrived since the last one (the
new model needs new data to learn the drifted distribution from). Together they keep persisting drift from
causing a retraining storm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def should_retrain(
    result,
    history: Sequence[datetime],
    now: datetime,
    cooldown: timedelta,
    max_per_day: int,
    min_new_labels: int,
    in_flight: bool,
    new_labels: int = 0,
) -> tuple[bool, str]:
    """Decide whether to trigger a retraining.

    Args:
        result: a ``DriftResult`` or its ``to_dict()`` form.
        history: when earlier retrainings were triggered (any order; naive times are UTC).
        now: the decision time (the monitor run's logical date, not the wall clock).
        cooldown: minimal time since the last triggered retraining.
        max_per_day: at most this many triggers in any 24 hours.
        min_new_labels: labelled rows required since the last retraining.
        in_flight: a retraining is running (queued or started).
        new_labels: labelled rows that arrived since the last retraining.
    Returns:
        ``(trigger, reason)``; the reason names the guard that held it back.
    """
    doc: Mapping = result.to_dict() if hasattr(result, "to_dict") else result
    now = _utc(now)
    if doc.get("skipped"):
        return False, f"no retraining: window skipped ({doc.get('drift_reason') or doc.get('reason')})"
    perf = doc.get("performance") or {}
    why = []
    if doc.get("dataset_drift"):
        why.append("dataset drift (" + (doc.get("drift_reason") or "") + ")")
    if perf.get("degraded"):
        why.append("performance degraded: " + ", ".join(perf.get("degraded_metrics") or []))
    if not why:
        return False, "no retraining: no dataset drift and no performance degradation"
    cause = "; ".join(why)
    if in_flight:
        return False, f"no retraining: one is already in flight ({cause})"
    past = sorted(_utc(t) for t in history if _utc(t) <= now)
    if past and now - past[-1] < cooldown:
        return False, (f"no retraining: cooldown, last one {now - past[-1]} ago < {cooldown} ({cause})")
    recent = [t for t in past if now - t < timedelta(days=1)]
    if len(recent) >= max_per_day:
        return False, f"no retraining: daily cap, {len(recent)} in the last 24h >= {max_per_day} ({cause})"
    if new_labels < min_new_labels:
        return False, f"no retraining: {new_labels} new labelled rows < {min_new_labels} required ({cause})"
    return True, f"retraining triggered: {cause}"
