"""The window summarised batch by batch (``monitoring.window``): the same drift result as the whole frame below
the caps, within the documented tolerance above them, and a bounded sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.monitoring.drift import analyse_drift, ks_wasserstein, ks_wasserstein_sketches, numeric_psi
from pipeline.monitoring.reference import OTHER_CATEGORY, FeatureTypes, build_reference, numeric_values
from pipeline.monitoring.window import (
    CategoricalSummary,
    NumericSummary,
    Reservoir,
    histogram_edges,
    summarise_frame,
    summarise_window,
)

FEATURES = FeatureTypes(("x", "y"), ("c",))


def _batches(frame: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    return [frame.iloc[i : i + size] for i in range(0, len(frame), size)]


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_streamed_equals_the_frame_below_the_caps(frames, shift):
    ref = build_reference(frames(4000, seed=1), FEATURES)
    cur = frames(3000, seed=2, shift=shift)
    cur["y"] = cur["y"].round(1)  # ties, and a missing value or two
    cur.loc[cur.index[::97], "y"] = np.nan
    cur.loc[cur.index[::89], "c"] = ""
    whole = analyse_drift(ref, cur).to_dict()
    for size in (1, 7, 1000):
        streamed = analyse_drift(ref, summarise_window(_batches(cur, size), ref)).to_dict()
        assert streamed == whole  # exactly: same sketches, same floats
    assert whole["features"]["x"]["drift"] is (shift > 0)


def test_a_column_absent_from_some_batches_is_missing_there_and_absent_from_all_is_missing_column(frames):
    ref = build_reference(frames(2000, seed=1), FEATURES)
    cur = frames(1000, seed=2)
    parts = [cur.iloc[:500], cur.iloc[500:].drop(columns=["y"])]
    whole = cur.copy()
    whole.loc[whole.index[500:], "y"] = np.nan
    assert analyse_drift(ref, summarise_window(parts, ref)).to_dict() == analyse_drift(ref, whole).to_dict()
    gone = analyse_drift(ref, summarise_window([cur.drop(columns=["c"])], ref))
    assert gone.features["c"].status == "missing_column"


@pytest.mark.parametrize("shift", [0.0, 0.3, 3.0])
def test_above_the_distinct_cap_ks_and_psi_stay_exact_and_wasserstein_within_a_bin(frames, shift):
    ref = build_reference(frames(20_000, seed=1), FEATURES)
    values = frames(20_000, seed=3, shift=shift, scale=1.3)["x"].to_numpy()
    summary = NumericSummary(ref.numeric["x"], max_distinct=1000, bins=2048)
    for part in np.array_split(values, 9):
        summary.update(part, 0)
    hist = summary.sketch()
    assert not hist.exact and hist.count == values.size
    exact_d, exact_w1 = ks_wasserstein(ref.numeric["x"].values, ref.numeric["x"].cdf, np.sort(values))
    d, w1 = ks_wasserstein_sketches(ref.numeric["x"].values, ref.numeric["x"].cdf, hist.values, hist.cdf)
    assert d == pytest.approx(exact_d, abs=1e-12)
    width = np.diff(histogram_edges(ref.numeric["x"], 2048)).max()
    assert abs(w1 - exact_w1) <= width  # the documented bound: one sub-bin's width at most
    exact_psi = numeric_psi(ref.numeric["x"], np.sort(values))
    assert numeric_psi(ref.numeric["x"], hist) == pytest.approx(exact_psi, abs=1e-12)
    assert hist.mean == pytest.approx(values.mean(), rel=1e-12, abs=1e-12)
    assert hist.std == pytest.approx(values.std(), rel=1e-9)


def test_above_the_cap_the_streamed_and_whole_results_agree_with_the_exact_decision(frames):
    ref = build_reference(frames(20_000, seed=1), FEATURES)
    cur = frames(30_000, seed=4, shift=0.2)
    exact = analyse_drift(ref, summarise_frame(cur, ref, max_distinct=10**9)).to_dict()
    capped = analyse_drift(ref, summarise_window(_batches(cur, 4000), ref, max_distinct=5000)).to_dict()
    fx, cx = exact["features"]["x"], capped["features"]["x"]
    assert cx["drift"] == fx["drift"] and cx["statistic"] == pytest.approx(fx["statistic"], abs=1e-12)
    assert cx["effect_size"] == pytest.approx(fx["effect_size"], rel=1e-3)
    assert cx["current_summary"] == "histogram" and "current_summary" not in fx


def test_categories_beyond_the_cap_are_pooled_and_the_kept_counts_exact():
    acc = CategoricalSummary(max_categories=5)
    counts = {f"k{i}": 100 - i for i in range(20)}
    acc.update(dict(list(counts.items())[:10]), 3)
    acc.update(dict(list(counts.items())[10:]), 2)
    sketch = acc.sketch()
    assert {k: sketch.counts[k] for k in ("k0", "k1", "k2", "k3")} == {"k0": 100, "k1": 99, "k2": 98, "k3": 97}
    assert sketch.counts[OTHER_CATEGORY] == sum(counts.values()) - (100 + 99 + 98 + 97)
    assert sketch.missing == 5 and len(sketch.counts) <= 5 + 1


def test_the_sample_is_bounded_uniform_and_in_window_order():
    frame = pd.DataFrame({"i": np.arange(50_000)})
    res = Reservoir(size=1000, seed=3)
    for part in _batches(frame, 3000):
        res.update(part)
    sample = res.frame()
    assert len(sample) == 1000 and sample["i"].is_monotonic_increasing and sample["i"].is_unique
    assert 20_000 < sample["i"].mean() < 30_000  # uniform over the whole window, not its start
    small = Reservoir(size=1000)
    small.update(frame.iloc[:10])
    assert small.frame()["i"].tolist() == list(range(10))


def test_numeric_values_are_read_the_same_in_every_batch():
    s = pd.Series(["1.5", "x", None, "inf", "2"])
    values, missing = numeric_values(s)
    assert values.tolist() == [1.5, 2.0] and missing == 3


def test_a_histogram_against_an_all_missing_or_constant_reference_column(frames):
    ref = build_reference(pd.DataFrame({"x": [np.nan] * 60, "y": [2.0] * 60, "c": ["a"] * 60}), FEATURES)
    values = np.random.default_rng(0).normal(size=5000)
    for col in ("x", "y"):
        acc = NumericSummary(ref.numeric[col], max_distinct=100)
        acc.update(values, 3)
        sketch = acc.sketch()
        assert not sketch.exact and sketch.count == 5000 and sketch.missing == 3
        assert sketch.mean == pytest.approx(values.mean(), abs=1e-12)
    constant = NumericSummary(ref.numeric["y"], max_distinct=100)
    constant.update(values, 0)
    _, w1 = ks_wasserstein_sketches(ref.numeric["y"].values, ref.numeric["y"].cdf, *_vc(constant.sketch()))
    _, exact_w1 = ks_wasserstein(ref.numeric["y"].values, ref.numeric["y"].cdf, np.sort(values))
    assert w1 == pytest.approx(exact_w1, rel=1e-9)  # no bin between reference points: no crossing, exact


def _vc(sketch):
    return sketch.values, sketch.cdf
