"""Drift statistics with known answers, the decisions at every sample size, and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from pipeline.monitoring.drift import (
    DriftConfig,
    adjust_p_values,
    analyse_drift,
    chi_square,
    detect_drift,
    jensen_shannon_distance,
    ks_p_value,
    ks_wasserstein,
    missing_rate_test,
    psi,
)
from pipeline.monitoring.reference import FeatureTypes, build_reference, sketch_numeric

# ---------------------------------------------------------------------------------------------------------
# Statistics against scipy / closed forms.


def _exact(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u, c = np.unique(values, return_counts=True)
    return u, np.cumsum(c) / c.sum()


@pytest.mark.parametrize("kind", ["continuous", "ties", "disjoint", "identical"])
def test_ks_and_wasserstein_match_scipy(kind):
    rng = np.random.default_rng(1)
    if kind == "continuous":
        a, b = rng.normal(size=300), rng.normal(0.4, 2.0, size=517)
    elif kind == "ties":
        a, b = rng.integers(0, 5, 400).astype(float), rng.integers(1, 7, 250).astype(float)
    elif kind == "disjoint":
        a, b = rng.uniform(0, 1, 100), rng.uniform(5, 6, 80)
    else:
        a = rng.normal(size=200)
        b = a.copy()
    d, w1 = ks_wasserstein(*_exact(a), np.sort(b))
    assert d == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    assert w1 == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-9, abs=1e-12)


def test_ks_p_value_close_to_scipy_asymptotic():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=2000), rng.normal(0.08, 1, size=3000)
    res = stats.ks_2samp(a, b, method="asymp")
    assert ks_p_value(res.statistic, a.size, b.size) == pytest.approx(res.pvalue, rel=0.1)
    assert ks_p_value(0.0, 10, 10) == 1.0
    assert ks_p_value(1.0, 1_000_000, 1_000_000) == 0.0


def test_sketch_cdf_within_its_bound_of_the_exact_cdf():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.exponential(size=200_000), np.zeros(50_000)])  # an atom at 0 and a tail
    sketch = sketch_numeric(values, max_points=1024)
    assert not sketch.exact and sketch.values.size <= 1024
    d, _ = ks_wasserstein(sketch.values, sketch.cdf, np.sort(values))
    assert d <= 0.5 / 1024 + 1e-12
    assert sketch.cdf[0] == pytest.approx(0.2, abs=1e-3)  # the atom keeps its weight


def test_jensen_shannon_distance_known_values():
    assert jensen_shannon_distance([5, 5], [5, 5]) == 0.0
    assert jensen_shannon_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    p, q = np.array([50, 30, 20]), np.array([60, 20, 20])
    assert jensen_shannon_distance(p, q) == pytest.approx(jensenshannon(p / 100, q / 100, base=2))


def test_chi_square_matches_scipy_and_degenerate_tables():
    r, c = np.array([500, 300, 200]), np.array([55, 25, 20])
    stat, p = chi_square(r, c)
    expected = stats.chi2_contingency(np.vstack([r, c]), correction=False)
    assert stat == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)
    assert chi_square(np.array([10]), np.array([3])) == (0.0, 1.0)
    assert chi_square(np.array([10, 0]), np.array([0, 0])) == (0.0, 1.0)


def test_psi_known_value_and_floor():
    assert psi([0.5, 0.5], [0.6, 0.4]) == pytest.approx(0.1 * math.log(1.2) + 0.1 * math.log(1.25))
    assert math.isfinite(psi([1.0, 0.0], [0.95, 0.05]))


def test_missing_rate_test_is_fisher_exact():
    change, p = missing_rate_test(10, 1000, 30, 1000)
    assert change == pytest.approx(0.02)
    assert p == pytest.approx(stats.fisher_exact([[10, 990], [30, 970]]).pvalue)
    assert missing_rate_test(0, 100, 0, 100) == (0.0, 1.0)
    assert missing_rate_test(0, 100, 0, 0) == (0.0, 1.0)


def test_adjust_p_values_bh_and_holm():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    assert np.allclose(adjust_p_values(p, "bh"), stats.false_discovery_control(p, method="bh"))
    # Holm: sorted 0.005*5, 0.01*4, 0.03*3, 0.04*2, 0.5*1, made monotone
    assert np.allclose(adjust_p_values(p, "holm"), [0.04, 0.09, 0.09, 0.025, 0.5])
    assert np.array_equal(adjust_p_values(p, "none"), p)
    assert adjust_p_values([], "bh").size == 0


# ---------------------------------------------------------------------------------------------------------
# Decisions at every sample size (the scale cases of the issue).

NUMERIC, CATEGORICAL = ("x", "y"), ("c",)


def _run(ref: pd.DataFrame, cur: pd.DataFrame, config: DriftConfig | None = None):
    return detect_drift(ref, cur, NUMERIC, CATEGORICAL, config)


@pytest.mark.parametrize("n", [1_000, 100_000, 1_000_000])
@pytest.mark.parametrize("change", ["mean_0.5sd", "spread_1.5x", "major_share_10pt", "new_category_5pct"])
def test_material_change_is_drift_at_any_size(frames, n, change):
    ref = frames(n, seed=10)
    if change == "mean_0.5sd":
        cur, col = frames(n, seed=11, shift=0.5), "x"
    elif change == "spread_1.5x":
        cur, col = frames(n, seed=11, scale=1.5), "x"
    elif change == "major_share_10pt":
        cur, col = frames(n, seed=11, shares=np.array([0.6, 0.2, 0.15, 0.05])), "c"
    else:
        cur, col = (
            frames(
                n,
                seed=11,
                shares=np.array([0.475, 0.285, 0.1425, 0.0475, 0.05]),
                categories=np.array(["a", "b", "c", "d", "new"]),
            ),
            "c",
        )
    result = _run(ref, cur)
    assert result.features[col].drift, result.to_dict()["features"][col]
    assert result.drifted_features == [col]
    if change == "new_category_5pct":
        assert result.to_dict()["features"]["c"]["unseen_categories"] == {
            "new": pytest.approx(0.05, abs=0.01)
        }


@pytest.mark.parametrize("change", ["mean_0.02sd", "share_1pt"])
def test_trivial_change_at_a_million_rows_is_significant_but_not_drift(frames, change):
    n = 1_000_000
    ref = frames(n, seed=20)
    if change == "mean_0.02sd":
        cur, col = frames(n, seed=21, shift=0.02), "x"
    else:
        cur, col = frames(n, seed=21, shares=np.array([0.51, 0.29, 0.15, 0.05])), "c"
    f = _run(ref, cur).features[col]
    assert f.distribution.p_value_adjusted < 0.05  # the test sees it ...
    assert not f.drift  # ... and the effect size says it does not matter


@pytest.mark.parametrize("n", [200, 10_000, 1_000_000])
def test_same_distribution_is_not_drift(frames, n):
    result = _run(frames(n, seed=30), frames(n, seed=31))
    assert not result.dataset_drift and result.drifted_features == []


def test_eight_rows_are_not_evidence(frames):
    ref, cur = frames(100_000, seed=40), frames(8, seed=41, shift=0.5)
    skipped = _run(ref, cur)
    assert skipped.skipped and not skipped.dataset_drift and "8 rows" in skipped.reason
    # even without the minimum window size, the test itself is not significant at 8 rows
    unguarded = _run(ref, cur, DriftConfig(min_rows=0))
    x = unguarded.features["x"].distribution
    assert x.effect_size > 0.1 and x.p_value_adjusted >= 0.05 and not unguarded.features["x"].drift


# ---------------------------------------------------------------------------------------------------------
# Bad input.


def test_empty_window_is_skipped_not_an_alarm(frames):
    result = _run(frames(1000, seed=50), frames(0, seed=51))
    assert result.skipped and not result.dataset_drift and result.features == {}
    assert "empty window" in result.reason


def test_feature_going_20_percent_empty_is_missingness_drift(frames):
    cur = frames(5000, seed=61)
    cur.loc[cur.index[:1000], "x"] = np.nan  # the rest of x is unchanged: only missingness can see it
    f = _run(frames(5000, seed=60), cur).features["x"]
    assert f.drift and f.headline.test == "missing_rate"
    assert f.missing.effect_size == pytest.approx(0.2)
    assert not f.distribution.drift


@pytest.mark.parametrize("col", ["x", "c"])
def test_all_nan_feature_is_missingness_drift(frames, col):
    cur = frames(1000, seed=71)
    cur[col] = np.nan if col == "x" else ""
    f = _run(frames(1000, seed=70), cur).features[col]
    assert f.drift and f.status == "all_missing" and f.to_dict()["test"] == "missing_rate"


def test_feature_missing_from_window_is_flagged(frames):
    cur = frames(1000, seed=81).drop(columns=["y"])
    result = _run(frames(1000, seed=80), cur)
    y = result.to_dict()["features"]["y"]
    assert y["drift"] and y["test"] == "missing_column" and y["status"] == "missing_column"
    assert result.missing_columns == ["y"]


def test_constant_feature_raises_no_division_by_zero(frames):
    ref, cur = frames(1000, seed=90), frames(1000, seed=91)
    ref["x"], cur["x"] = 3.0, 3.0
    with np.errstate(all="raise"):
        same = _run(ref, cur)
        cur["x"] = 4.0
        moved = _run(ref, cur)
    assert not same.features["x"].drift and same.features["x"].distribution.effect_size == 0.0
    assert moved.features["x"].drift and math.isfinite(moved.features["x"].distribution.effect_size)


def test_new_columns_are_reported(frames):
    cur = frames(1000, seed=101).assign(extra=1.0, request_id="r")
    result = detect_drift(frames(1000, seed=100), cur, NUMERIC, CATEGORICAL, ignore_columns=["request_id"])
    assert result.new_columns == ["extra"]
    assert result.to_dict()["new_columns"] == ["extra"]


# ---------------------------------------------------------------------------------------------------------
# The dataset decision, predictions, the JSON contract.


def test_dataset_rule_share_and_key_features(frames):
    ref, cur = frames(2000, seed=110), frames(2000, seed=111, shift=1.0)  # x drifts: 1 of 3 features
    assert not _run(ref, cur, DriftConfig(drift_share=0.5)).dataset_drift
    assert _run(ref, cur, DriftConfig(drift_share=0.3)).dataset_drift
    keyed = _run(ref, cur, DriftConfig(drift_share=0.9, key_features=("x",)))
    assert keyed.dataset_drift and "key features drifted: x" in keyed.reason


def test_prediction_drift_is_tested_and_reported_apart(frames):
    ref, cur = frames(2000, seed=120), frames(2000, seed=121)
    ref["prediction.class"] = np.where(ref["y"] > 0, "A", "B")
    cur["prediction.class"] = np.where(cur["y"] > -1, "A", "B")
    result = detect_drift(ref, cur, NUMERIC, CATEGORICAL, prediction_categorical=["prediction.class"])
    assert result.prediction_drift and not result.dataset_drift
    assert "prediction.class" not in result.features
    assert result.to_dict()["predictions"]["prediction.class"]["drift"]


def test_result_serialises_to_the_issue_json_shape(frames):
    cur = frames(1000, seed=131, shift=0.5)
    cur["y"] = np.nan
    result = _run(frames(1000, seed=130), cur).with_retraining(True, "drift in x, guards passed")
    doc = json.loads(result.to_json())
    assert isinstance(doc["dataset_drift"], bool) and doc["retraining_triggered"] is True
    assert doc["reason"] == "drift in x, guards passed" and "features drifted" in doc["drift_reason"]
    for f in doc["features"].values():
        assert isinstance(f["drift"], bool) and isinstance(f["test"], str)
        assert isinstance(f["statistic"], float) and isinstance(f["threshold"], float)
        assert f["p_value"] is None or isinstance(f["p_value"], float)
        assert f["effect_size"] is None or isinstance(f["effect_size"], float)


def test_config_rejects_unknown_settings():
    with pytest.raises(ValueError, match="unknown drift settings"):
        DriftConfig.from_dict({"alpha": 0.01, "treshold": 0.2})
    assert DriftConfig.from_dict({"key_features": ["x"]}).key_features == ("x",)


def test_reference_lacking_a_feature_is_an_error(frames):
    with pytest.raises(KeyError, match="lacks columns"):
        build_reference(frames(10, seed=1), FeatureTypes(numeric=("x", "nope")))


def test_analyse_uses_cached_statistics_only(frames):
    """The comparison reads the sketch, not the reference table: same answer from a tiny sketch."""
    ref, cur = frames(200_000, seed=140), frames(50_000, seed=141, shift=0.5)
    features = FeatureTypes(NUMERIC, CATEGORICAL)
    small = analyse_drift(build_reference(ref, features, max_points=256), cur)
    exact = analyse_drift(build_reference(ref, features, max_points=1_000_000), cur)
    assert small.drifted_features == exact.drifted_features == ["x"]
    assert small.features["x"].distribution.effect_size == pytest.approx(
        exact.features["x"].distribution.effect_size, abs=0.01
    )
