"""The reference built from record batches (``monitoring.reference_stream``): ``build_reference``'s statistics
exactly below the caps, within the documented CDF error above them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.monitoring.drift import ks_wasserstein
from pipeline.monitoring.reference import FeatureTypes, build_reference, sketch_numeric
from pipeline.monitoring.reference_stream import build_reference_streamed

FEATURES = FeatureTypes(("x", "y"), ("c",))


def _batches(frame: pd.DataFrame, size: int):
    return lambda: (frame.iloc[i : i + size] for i in range(0, len(frame), size))


def test_streamed_reference_equals_the_whole_frame_below_the_caps(frames):
    ref = frames(6000, seed=1)
    ref["y"] = ref["y"].round(2)  # fewer than max_points distinct: an exact sketch
    ref.loc[ref.index[::31], "x"] = np.nan
    whole = build_reference(ref, FEATURES)
    streamed = build_reference_streamed(_batches(ref, 777), FEATURES)
    assert streamed.rows == whole.rows and streamed.categorical == whole.categorical
    for c in ("x", "y"):
        a, b = whole.numeric[c], streamed.numeric[c]
        assert (a.values == b.values).all() and (a.cdf == b.cdf).all()
        assert (a.count, a.missing, a.mean, a.std, a.exact) == (b.count, b.missing, b.mean, b.std, b.exact)
    assert whole.numeric["y"].exact and not whole.numeric["x"].exact


def test_the_quantile_sketch_from_counts_is_the_sketch_of_the_sorted_column():
    values = np.random.default_rng(0).integers(0, 9000, 40_000).astype(float)
    a, b = sketch_numeric(values), sketch_numeric(np.sort(values)[::-1].copy())
    assert (a.values == b.values).all() and (a.cdf == b.cdf).all()
    idx = ((np.arange(4096) + 0.5) * values.size / 4096).astype(np.int64)
    assert set(a.values) == set(np.sort(values)[idx])  # the mid-probability quantiles of the whole column


def test_above_the_distinct_cap_the_sketch_is_within_the_documented_cdf_error(frames):
    ref = frames(60_000, seed=2, scale=3.0)
    whole = build_reference(ref, FEATURES)
    streamed = build_reference_streamed(_batches(ref, 5000), FEATURES, max_distinct=2000, grid_sample=8192)
    s, w = streamed.numeric["x"], whole.numeric["x"]
    assert not s.exact and s.count == w.count and s.mean == pytest.approx(w.mean, rel=1e-9, abs=1e-12)
    assert s.std == pytest.approx(w.std, rel=1e-9)
    d, w1 = ks_wasserstein(s.values, s.cdf, np.sort(ref["x"].to_numpy()))
    # largest gap share of the grid (about 1 / grid_sample, with sampling noise) + 0.5 / max_points
    assert d <= 8 / 8192 + 0.5 / 4096
    assert w1 / w.std < 1e-3


def test_a_column_absent_from_every_batch_is_an_error(frames):
    with pytest.raises(KeyError, match="lacks"):
        build_reference_streamed(_batches(frames(100, seed=1).drop(columns=["c"]), 30), FEATURES)
