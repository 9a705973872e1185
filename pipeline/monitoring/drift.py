"""Drift statistics and decisions: a current window against the reference statistics of the serving model.

Pure functions, no I/O. Per column, in this order:

1. **Missing-value rate**: Fisher's exact test on (missing, present) x (reference, current), effect size the
   absolute change of the rate. Checked first because the distribution tests drop missing values and would not
   see a feature going 20% empty.
2. **Distribution**, on the non-missing values:
   - numeric: two-sample Kolmogorov-Smirnov (``ks``) for significance; effect size the Wasserstein-1 distance
     divided by the reference standard deviation (``wasserstein_norm``: 0.5 for a half-sd mean shift,
     0.4 for a 1.5x spread); PSI on reference deciles is reported too. All come from one merge of the
     reference sketch with the window's summary (``window``: exact below its caps; above, KS and PSI still
     exact against the sketch and Wasserstein within a histogram bin).
   - categorical: chi-square test of homogeneity (``chi2``); effect size the Jensen-Shannon distance
     (``jensen_shannon``, base 2: 0.085 or more for a 10-point change of a major category's share, 0.16 for a
     new category in 5% of rows, 0.01-0.035 for a 1-point change); PSI, unseen and vanished categories reported.

A column drifts when a test is significant after multiple-testing correction across the columns (Benjamini-
Hochberg by default) **and** its effect size reaches the threshold, so a tiny shift at a million rows is not
drift (significant, too small) and eight rows are not evidence (large, not significant; and windows under
``min_rows`` are skipped). The dataset drifts when the share of drifted features reaches ``drift_share`` or a
``key_features`` column drifts. Model outputs (prediction columns) are tested the same way, corrected as their
own family, and reported apart (``prediction_drift``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import special, stats

from pipeline.monitoring.reference import (
    OTHER_CATEGORY,
    CategoricalSketch,
    FeatureTypes,
    NumericSketch,
    ReferenceStats,
    build_reference,
    category_counts,
    numeric_values,
)
from pipeline.monitoring.window import WindowStats, summarise_frame

PSI_FLOOR = 1e-4  # share given to an empty bin in PSI, so that a new category has a finite PSI


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds of the drift decisions.

    Attributes:
        alpha: significance level after correction (false-discovery rate for ``bh``, family-wise for ``holm``).
        correction: ``bh`` (Benjamini-Hochberg), ``holm`` or ``none``.
        numeric_threshold: minimal normalised Wasserstein distance (in reference standard deviations).
        categorical_threshold: minimal Jensen-Shannon distance (base 2).
        missing_threshold: minimal absolute change of a column's missing-value rate.
        min_rows: a window with fewer rows is skipped; a column with fewer non-missing values is not tested
            for its distribution (its missing rate still is).
        drift_share: the dataset drifts when at least this share of the features drift ...
        key_features: ... or when any of these features drifts.
        thresholds: per-column effect-size thresholds overriding the two above.
    """

    alpha: float = 0.05
    correction: str = "bh"
    numeric_threshold: float = 0.1
    categorical_threshold: float = 0.05
    missing_threshold: float = 0.05
    min_rows: int = 50
    drift_share: float = 0.3
    key_features: tuple[str, ...] = ()
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.correction not in {"bh", "holm", "none"}:
            raise ValueError(f"correction must be bh, holm or none, not {self.correction!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), not {self.alpha}")
        object.__setattr__(self, "key_features", tuple(self.key_features))
        object.__setattr__(self, "thresholds", dict(self.thresholds))

    @classmethod
    def from_dict(cls, d: Mapping | None) -> DriftConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d or {}) - known
        if unknown:
            raise ValueError(f"unknown drift settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(d or {}))

    def to_dict(self) -> dict:
        return {**asdict(self), "key_features": list(self.key_features)}


# ---------------------------------------------------------------------------------------------------------
# Statistics with known answers (unit-tested one by one).


def step_cdf(values: np.ndarray, cdf: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The step CDF given by its support ``values`` and ``cdf`` evaluated at ``x`` (0 before the support)."""
    return np.concatenate(([0.0], cdf))[np.searchsorted(values, x, side="right")]


def ks_wasserstein_sketches(
    ref_values: np.ndarray, ref_cdf: np.ndarray, cur_values: np.ndarray, cur_cdf: np.ndarray
) -> tuple[float, float]:
    """Kolmogorov-Smirnov distance and Wasserstein-1 distance between two distributions given by their sorted
    supports and CDFs (both non-empty).

    Both CDFs are step functions, constant between two points of the merged support, so the supremum is taken at
    those points and the integral is a sum over the gaps between them.
    """
    grid = np.union1d(ref_values, cur_values)
    gap = np.abs(step_cdf(ref_values, ref_cdf, grid) - step_cdf(cur_values, cur_cdf, grid))
    w1 = float((gap[:-1] * np.diff(grid)).sum())  # not np.dot: BLAS threads cost more than they save here
    return float(gap.max(initial=0.0)), w1


def ks_wasserstein(
    ref_values: np.ndarray, ref_cdf: np.ndarray, current_sorted: np.ndarray
) -> tuple[float, float]:
    """``ks_wasserstein_sketches`` against the empirical distribution of the values ``current_sorted``."""
    values, counts = np.unique(current_sorted, return_counts=True)
    return ks_wasserstein_sketches(ref_values, ref_cdf, values, np.cumsum(counts) / counts.sum())


def ks_p_value(d: float, n: int, m: int) -> float:
    """P-value of a two-sample KS distance ``d`` between samples of ``n`` and ``m`` values: the asymptotic
    Kolmogorov distribution with Stephens' small-sample correction (accurate for an effective size >= 4)."""
    if d <= 0:
        return 1.0
    en = n * m / (n + m)
    lam = (math.sqrt(en) + 0.12 + 0.11 / math.sqrt(en)) * d
    return float(min(1.0, max(0.0, special.kolmogorov(lam))))


def psi(ref_share: np.ndarray, cur_share: np.ndarray) -> float:
    """Population stability index, sum of (q - p) ln(q / p), with empty bins floored at ``PSI_FLOOR``."""
    p = np.maximum(np.asarray(ref_share, dtype=float), PSI_FLOOR)
    q = np.maximum(np.asarray(cur_share, dtype=float), PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def numeric_psi(ref: NumericSketch, current: NumericSketch | np.ndarray, bins: int = 10) -> float:
    """PSI over the reference's ``bins`` quantile bins (deciles by default); ``current`` a sketch or the sorted
    current values."""
    if isinstance(current, np.ndarray):
        values, counts = np.unique(current, return_counts=True)
        cur_values, cur_cdf = values, np.cumsum(counts) / counts.sum()
    else:
        cur_values, cur_cdf = current.values, current.cdf
    levels = np.arange(1, bins) / bins
    edges = np.unique(ref.values[np.minimum(np.searchsorted(ref.cdf, levels), ref.values.size - 1)])
    f_ref = np.append(step_cdf(ref.values, ref.cdf, edges), 1.0)
    f_cur = np.append(step_cdf(cur_values, cur_cdf, edges), 1.0)
    return psi(np.diff(f_ref, prepend=0.0), np.diff(f_cur, prepend=0.0))


def jensen_shannon_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (square root of the divergence, base 2, in [0, 1]) of two count vectors."""
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    p, q = p / p.sum(), q / q.sum()
    mid = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / mid[nz])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def chi_square(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity of two count vectors over the same categories: ``(statistic, p_value)``."""
    table = np.vstack([ref_counts, cur_counts]).astype(float)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    stat = float(np.sum((table - expected) ** 2 / expected))
    return stat, float(stats.chi2.sf(stat, table.shape[1] - 1))


def missing_rate_test(
    ref_missing: int, ref_rows: int, cur_missing: int, cur_rows: int
) -> tuple[float, float]:
    """Fisher's exact test of a change of the missing-value rate: ``(rate change, p_value)``.

    Exact rather than a z-test, which is wrong when one side has no missing value at all (the usual case).
    """
    if ref_rows == 0 or cur_rows == 0:
        return 0.0, 1.0
    change = cur_missing / cur_rows - ref_missing / ref_rows
    if ref_missing + cur_missing in (0, ref_rows + cur_rows):
        return change, 1.0
    table = [[ref_missing, ref_rows - ref_missing], [cur_missing, cur_rows - cur_missing]]
    return change, float(stats.fisher_exact(table).pvalue)


def adjust_p_values(p_values: Sequence[float], method: str = "bh") -> np.ndarray:
    """Multiple-testing adjusted p-values: ``bh`` (Benjamini-Hochberg), ``holm`` or ``none``."""
    p = np.asarray(p_values, dtype=float)
    if method == "none" or p.size == 0:
        return p.copy()
    m = p.size
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "bh":
        adj = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    elif method == "holm":
        adj = np.maximum.accumulate(ranked * (m - np.arange(m)))
    else:
        raise ValueError(f"unknown correction {method!r}")
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


def normalising_scale(ref: NumericSketch, current_std: float) -> float:
    """What a Wasserstein distance is divided by: the reference standard deviation; for a constant reference
    the current one; for two constants the magnitude of the reference value (at least 1). Never zero."""
    if ref.std > 0:
        return ref.std
    if current_std > 0:
        return current_std
    return max(abs(ref.mean), 1.0)


# ---------------------------------------------------------------------------------------------------------
# Per-column results.


@dataclass
class TestResult:
    """One test on one column. ``drift`` is decided after the correction across columns."""

    test: str
    statistic: float
    p_value: float | None
    effect_size: float | None
    threshold: float
    p_value_adjusted: float | None = None
    drift: bool = False

    def decide(self, p_adjusted: float | None, alpha: float) -> None:
        self.p_value_adjusted = p_adjusted
        self.drift = (
            p_adjusted is not None
            and p_adjusted < alpha
            and self.effect_size is not None
            and self.effect_size >= self.threshold
        )


@dataclass
class ColumnDrift:
    """The result of one column: its missing-rate test, its distribution test (``None`` when it could not run,
    ``status`` says why), and details for the report (counts, PSI, unseen categories, means)."""

    name: str
    kind: str
    status: str
    missing: TestResult
    distribution: TestResult | None
    details: dict = field(default_factory=dict)

    @property
    def drift(self) -> bool:
        return (
            self.status == "missing_column"
            or self.missing.drift
            or (self.distribution is not None and self.distribution.drift)
        )

    @property
    def headline(self) -> TestResult:
        """The test that decided: missingness if it drifted or no distribution test ran, else the distribution."""
        if self.status == "missing_column" or self.missing.drift or self.distribution is None:
            return self.missing
        return self.distribution

    def to_dict(self) -> dict:
        h = self.headline
        out = {
            "drift": self.drift,
            "test": h.test,
            "statistic": _num(h.statistic, 0.0),
            "p_value": _num(h.p_value),
            "effect_size": _num(h.effect_size),
            "threshold": float(h.threshold),
            "p_value_adjusted": _num(h.p_value_adjusted),
            "kind": self.kind,
            "status": self.status,
            "missing_rate": _test_dict(self.missing),
            "distribution": _test_dict(self.distribution) if self.distribution else None,
        }
        out.update({k: _clean(v) for k, v in self.details.items()})
        return out


def _num(x: float | None, default: float | None = None) -> float | None:
    if x is None:
        return default
    x = float(x)
    return x if math.isfinite(x) else default


def _clean(v):
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return _num(v)
    return v


def _test_dict(t: TestResult) -> dict:
    return {
        "test": t.test,
        "statistic": _num(t.statistic, 0.0),
        "p_value": _num(t.p_value),
        "p_value_adjusted": _num(t.p_value_adjusted),
        "effect_size": _num(t.effect_size),
        "threshold": float(t.threshold),
        "drift": bool(t.drift),
    }


def _missing_result(
    ref_missing: int, ref_rows: int, cur_missing: int, cur_rows: int, config: DriftConfig
) -> TestResult:
    change, p = missing_rate_test(ref_missing, ref_rows, cur_missing, cur_rows)
    return TestResult("missing_rate", change, p, abs(change), config.missing_threshold)


def _rates(ref_missing: int, ref_rows: int, cur_missing: int, cur_rows: int) -> dict:
    return {
        "reference_missing_rate": ref_missing / ref_rows if ref_rows else 0.0,
        "current_missing_rate": cur_missing / cur_rows if cur_rows else 0.0,
    }


def compare_numeric(
    name: str,
    ref: NumericSketch,
    column: NumericSketch | pd.Series | None,
    rows: int,
    config: DriftConfig,
) -> ColumnDrift:
    """Missing rate, KS and normalised Wasserstein of one numeric column.

    ``column``: the window's summary of it (``window.NumericSummary``), or its values (summarised here the same
    way), or ``None`` when the window lacks it.
    """
    if isinstance(column, pd.Series):
        from pipeline.monitoring.window import NumericSummary

        summary = NumericSummary(ref)
        summary.update(*numeric_values(column, rows))
        column = summary.sketch()
    cur = column
    cur_count, cur_missing = (cur.count, cur.missing) if cur is not None else (0, rows)
    missing = _missing_result(ref.missing, ref.rows, cur_missing, rows, config)
    details = {
        "n_reference": ref.count,
        "n_current": int(cur_count),
        **_rates(ref.missing, ref.rows, cur_missing, rows),
        "reference_mean": ref.mean,
        "reference_std": ref.std,
    }
    threshold = config.thresholds.get(name, config.numeric_threshold)
    if cur is None:
        return ColumnDrift(
            name, "numeric", "missing_column", _absent(ref.missing, ref.rows, config), None, details
        )
    if cur_count < config.min_rows or ref.count < config.min_rows:
        status = "all_missing" if cur_count == 0 else "insufficient_data"
        return ColumnDrift(name, "numeric", status, missing, None, details)
    d, w1 = ks_wasserstein_sketches(ref.values, ref.cdf, cur.values, cur.cdf)
    effect = w1 / normalising_scale(ref, cur.std)
    dist = TestResult("ks", d, ks_p_value(d, ref.count, cur_count), effect, threshold)
    details.update(
        {
            "effect_measure": "wasserstein_norm",
            "wasserstein": w1,
            "psi": numeric_psi(ref, cur),
            "current_mean": cur.mean,
            "current_std": cur.std,
        }
    )
    if not cur.exact:
        details["current_summary"] = "histogram"
    return ColumnDrift(name, "numeric", "ok", missing, dist, details)


def compare_categorical(
    name: str,
    ref: CategoricalSketch,
    column: CategoricalSketch | pd.Series | None,
    rows: int,
    config: DriftConfig,
    max_listed: int = 20,
) -> ColumnDrift:
    """Missing rate, chi-square and Jensen-Shannon distance of one categorical column; names unseen categories.

    ``column``: the window's counts (``window.CategoricalSummary``), or its values, or ``None`` when absent.
    """
    if isinstance(column, CategoricalSketch):
        counts, cur_missing = column.counts, column.missing
    else:
        counts, cur_missing = category_counts(column, rows)
    missing = _missing_result(ref.missing, ref.rows, cur_missing, rows, config)
    cur_n = sum(counts.values())
    pooled = OTHER_CATEGORY in ref.counts
    unseen = sorted((c for c in counts if c not in ref.counts), key=lambda c: (-counts[c], c))
    vanished = sorted(
        (c for c in ref.counts if c not in counts and c != OTHER_CATEGORY), key=lambda c: (-ref.counts[c], c)
    )
    details = {
        "n_reference": ref.count,
        "n_current": cur_n,
        **_rates(ref.missing, ref.rows, cur_missing, rows),
        "unseen_categories": {c: counts[c] / cur_n for c in unseen[:max_listed]},
        "unseen_share": sum(counts[c] for c in unseen) / cur_n if cur_n else 0.0,
        "vanished_categories": vanished[:max_listed],
        "reference_pooled_rare_categories": pooled,
    }
    threshold = config.thresholds.get(name, config.categorical_threshold)
    if column is None:
        return ColumnDrift(
            name, "categorical", "missing_column", _absent(ref.missing, ref.rows, config), None, details
        )
    if cur_n < config.min_rows or ref.count < config.min_rows:
        status = "all_missing" if cur_n == 0 else "insufficient_data"
        return ColumnDrift(name, "categorical", status, missing, None, details)
    cats = list(ref.counts) + unseen
    r = np.array([ref.counts.get(c, 0) for c in cats], dtype=float)
    c = np.array([counts.get(k, 0) for k in cats], dtype=float)
    if pooled:  # current categories the reference pooled as "other" are compared with that pool
        other = cats.index(OTHER_CATEGORY)
        c[other] += c[len(ref.counts) :].sum()
        cats, r, c = cats[: len(ref.counts)], r[: len(ref.counts)], c[: len(ref.counts)]
    stat, p = chi_square(r, c)
    dist = TestResult("chi2", stat, p, jensen_shannon_distance(r, c), threshold)
    share_change = c / c.sum() - r / r.sum()
    top = int(np.argmax(np.abs(share_change)))
    details.update(
        {
            "effect_measure": "jensen_shannon",
            "psi": psi(r / r.sum(), c / c.sum()),
            "max_share_change": {"category": cats[top], "change": float(share_change[top])},
        }
    )
    return ColumnDrift(name, "categorical", "ok", missing, dist, details)


def _absent(ref_missing: int, ref_rows: int, config: DriftConfig) -> TestResult:
    """A column absent from the window: flagged, as if every row were missing."""
    ref_rate = ref_missing / ref_rows if ref_rows else 0.0
    return TestResult("missing_column", 1.0, None, 1.0 - ref_rate, config.missing_threshold, drift=True)


def _correct(columns: Sequence[ColumnDrift], config: DriftConfig) -> None:
    """Adjust all p-values of one family (missing-rate and distribution tests together) and decide each test."""
    tests = [
        t
        for col in columns
        for t in (col.missing, col.distribution)
        if t is not None and t.p_value is not None
    ]
    adjusted = adjust_p_values([t.p_value for t in tests], config.correction)
    for t, p in zip(tests, adjusted):
        t.decide(float(p), config.alpha)


# ---------------------------------------------------------------------------------------------------------
# The dataset result.


@dataclass
class DriftResult:
    """The outcome of one monitor run. ``to_dict()`` is the JSON contract of ``pipeline monitor --json``:
    ``dataset_drift``, ``features`` (per column: ``drift``, ``test``, ``statistic``, ``p_value``,
    ``effect_size``, ``threshold`` and details), ``retraining_triggered``, ``reason`` and more keys.

    ``reason`` explains the last decision taken: the drift decision, or the retraining decision once the caller
    has set it with ``with_retraining``; ``drift_reason`` keeps the drift decision's own explanation.
    """

    dataset_drift: bool
    features: dict[str, ColumnDrift]
    predictions: dict[str, ColumnDrift]
    n_reference: int
    n_current: int
    drift_reason: str
    skipped: bool = False
    new_columns: list[str] = field(default_factory=list)
    config: DriftConfig = field(default_factory=DriftConfig)
    retraining_triggered: bool = False
    reason: str = ""
    performance: dict | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.reason:
            self.reason = self.drift_reason

    @property
    def drifted_features(self) -> list[str]:
        return [c for c, f in self.features.items() if f.drift]

    @property
    def drift_share(self) -> float:
        return len(self.drifted_features) / len(self.features) if self.features else 0.0

    @property
    def prediction_drift(self) -> bool:
        return any(p.drift for p in self.predictions.values())

    @property
    def missing_columns(self) -> list[str]:
        return [c for c, f in {**self.features, **self.predictions}.items() if f.status == "missing_column"]

    def with_retraining(self, triggered: bool, reason: str) -> DriftResult:
        """A copy carrying the caller's retraining decision."""
        return replace(self, retraining_triggered=bool(triggered), reason=reason)

    def to_dict(self) -> dict:
        return {
            "dataset_drift": bool(self.dataset_drift),
            "features": {c: f.to_dict() for c, f in self.features.items()},
            "retraining_triggered": bool(self.retraining_triggered),
            "reason": self.reason,
            "drift_reason": self.drift_reason,
            "skipped": bool(self.skipped),
            "drift_share": self.drift_share,
            "drifted_features": self.drifted_features,
            "n_features": len(self.features),
            "prediction_drift": self.prediction_drift,
            "predictions": {c: f.to_dict() for c, f in self.predictions.items()},
            "new_columns": list(self.new_columns),
            "missing_columns": self.missing_columns,
            "n_reference": int(self.n_reference),
            "n_current": int(self.n_current),
            "performance": _clean(self.performance) if self.performance is not None else None,
            "config": self.config.to_dict(),
            "meta": _clean(self.meta),
        }

    def to_json(self, **kwargs) -> str:
        """Strict JSON (no NaN / Infinity)."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)


def analyse_drift(
    reference: ReferenceStats,
    current: pd.DataFrame | WindowStats,
    config: DriftConfig | None = None,
    *,
    ignore_columns: Sequence[str] = (),
    meta: Mapping | None = None,
) -> DriftResult:
    """Compare a current window with the reference statistics of the model that served it.

    Args:
        reference: statistics of the training data (``reference.build_reference`` / the cache).
        current: the window, one row per served instance, feature columns named as in the reference: a
            DataFrame, or its summary (``window.summarise_window``, the streamed path). A DataFrame is
            summarised first (one batch), so both compare the same summaries.
        config: thresholds and the dataset rule.
        ignore_columns: columns of ``current`` that are not features (request id, timestamp, label, outputs);
            any other column unknown to the reference is reported in ``new_columns``.
        meta: copied into the result (model name/version, window bounds).
    Returns:
        The per-column and dataset decisions; an empty or too small window is ``skipped`` with the reason,
        never an alarm.
    """
    config = config or DriftConfig()
    if isinstance(current, pd.DataFrame):
        current = summarise_frame(current, reference, sample_rows=0)
    rows = current.rows
    known = set(reference.columns) | set(ignore_columns)
    new_columns = [str(c) for c in current.columns if c not in known]
    base = {
        "n_reference": reference.rows,
        "n_current": rows,
        "new_columns": new_columns,
        "config": config,
        "meta": dict(meta or {}),
    }
    if rows == 0:
        return DriftResult(False, {}, {}, drift_reason="skipped: empty window (0 rows)", skipped=True, **base)
    if rows < config.min_rows:
        return DriftResult(
            False,
            {},
            {},
            skipped=True,
            **base,
            drift_reason=f"skipped: {rows} rows in the window, fewer than min_rows={config.min_rows}",
        )

    def compare(name: str) -> ColumnDrift:
        if name in reference.numeric:
            return compare_numeric(name, reference.numeric[name], current.numeric.get(name), rows, config)
        return compare_categorical(
            name, reference.categorical[name], current.categorical.get(name), rows, config
        )

    features = {c: compare(c) for c in reference.features.features}
    predictions = {c: compare(c) for c in reference.features.predictions}
    _correct(list(features.values()), config)
    _correct(list(predictions.values()), config)
    drifted = [c for c, f in features.items() if f.drift]
    share = len(drifted) / len(features) if features else 0.0
    keys = [c for c in config.key_features if c in drifted]
    dataset_drift = bool(features) and (share >= config.drift_share or bool(keys))
    reason = (
        f"{len(drifted)} of {len(features)} features drifted ({share:.0%}, rule >= {config.drift_share:.0%})"
        + (f"; key features drifted: {', '.join(keys)}" if keys else "")
        + (f": {', '.join(drifted)}" if drifted and not keys else "")
        + ("; dataset drift" if dataset_drift else "; no dataset drift")
    )
    return DriftResult(dataset_drift, features, predictions, drift_reason=reason, **base)


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: Sequence[str] = (),
    categorical: Sequence[str] = (),
    config: DriftConfig | None = None,
    *,
    prediction_numeric: Sequence[str] = (),
    prediction_categorical: Sequence[str] = (),
    ignore_columns: Sequence[str] = (),
) -> DriftResult:
    """``analyse_drift`` straight from two DataFrames (builds the reference statistics first; the monitor
    caches them instead)."""
    features = FeatureTypes(
        tuple(numeric), tuple(categorical), tuple(prediction_numeric), tuple(prediction_categorical)
    )
    return analyse_drift(build_reference(reference, features), current, config, ignore_columns=ignore_columns)
