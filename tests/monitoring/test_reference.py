"""Reference statistics: column extraction, persistence and the per-version cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.monitoring.reference import (
    OTHER_CATEGORY,
    FeatureTypes,
    build_reference,
    category_counts,
    load_or_build_reference,
    load_reference,
    numeric_values,
    reference_cache_dir,
    save_reference,
    sketch_categorical,
    sketch_numeric,
)

FEATURES = FeatureTypes(numeric=("x", "y"), categorical=("c",), prediction_categorical=("prediction.class",))


def _reference(frames) -> pd.DataFrame:
    ref = frames(20_000, seed=1)
    ref["prediction.class"] = np.where(ref["y"] > 0, "A", "B")
    ref.loc[ref.index[:100], "y"] = np.nan
    return ref


def test_numeric_values_drop_nan_inf_and_text():
    values, missing = numeric_values(pd.Series([1.0, np.nan, np.inf, 2.0]))
    assert values.tolist() == [1.0, 2.0] and missing == 2
    values, missing = numeric_values(pd.Series(["1.5", "x", None]))
    assert values.tolist() == [1.5] and missing == 2
    values, missing = numeric_values(None, rows=7)
    assert values.size == 0 and missing == 7


def test_category_counts_treat_empty_string_as_missing_and_floats_as_integers():
    counts, missing = category_counts(pd.Series(["a", "", None, "a", "b"]))
    assert counts == {"a": 2, "b": 1} and missing == 2
    counts, missing = category_counts(pd.Series([1.0, 2.0, np.nan, 1.0]))
    assert counts == {"1": 2, "2": 1} and missing == 1


def test_sketch_is_exact_for_few_distinct_values():
    s = sketch_numeric(np.array([3.0, 1.0, 1.0, 2.0]))
    assert s.exact and s.values.tolist() == [1.0, 2.0, 3.0] and s.cdf.tolist() == [0.5, 0.75, 1.0]
    assert s.weights.tolist() == [0.5, 0.25, 0.25]
    empty = sketch_numeric(np.empty(0), missing=5)
    assert empty.count == 0 and empty.rows == 5


def test_rare_categories_are_pooled_beyond_the_cap():
    s = sketch_categorical({"a": 10, "b": 5, "c": 2, "d": 1}, max_categories=3)
    assert s.counts == {"a": 10, "b": 5, OTHER_CATEGORY: 3} and s.count == 18


def test_save_and_load_round_trip(tmp_path, frames):
    stats = build_reference(_reference(frames), FEATURES, max_points=512, meta={"dataset_digest": "abc"})
    loaded = load_reference(save_reference(stats, tmp_path / "ref"))
    assert (
        loaded.features == FEATURES and loaded.rows == stats.rows and loaded.meta == {"dataset_digest": "abc"}
    )
    for c in ("x", "y"):
        a, b = stats.numeric[c], loaded.numeric[c]
        assert np.array_equal(a.values, b.values) and np.array_equal(a.cdf, b.cdf)
        assert (a.count, a.missing, a.mean, a.std, a.exact) == (b.count, b.missing, b.mean, b.std, b.exact)
    assert loaded.numeric["y"].missing == 100
    assert loaded.categorical == stats.categorical


def test_cache_is_used_while_the_digest_matches(tmp_path, frames):
    ref = _reference(frames)
    calls = []

    def build(digest):
        def _build():
            calls.append(digest)
            return build_reference(ref, FEATURES, meta={"dataset_digest": digest})

        return _build

    directory = tmp_path / "cache"
    _, hit = load_or_build_reference(directory, build("d1"), {"dataset_digest": "d1"})
    assert not hit and calls == ["d1"]
    stats, hit = load_or_build_reference(directory, build("d1"), {"dataset_digest": "d1"})
    assert hit and calls == ["d1"] and stats.meta["dataset_digest"] == "d1"
    stats, hit = load_or_build_reference(directory, build("d2"), {"dataset_digest": "d2"})
    assert not hit and calls == ["d1", "d2"] and stats.meta["dataset_digest"] == "d2"


def test_cache_dir_is_under_pipeline_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    assert reference_cache_dir("penguins", 3) == tmp_path / "monitoring" / "reference" / "penguins" / "3"


def test_corrupt_cache_is_rebuilt(tmp_path, frames):
    directory = tmp_path / "cache"
    directory.mkdir()
    (directory / "reference.json").write_text('{"format": 999}')
    stats, hit = load_or_build_reference(directory, lambda: build_reference(_reference(frames), FEATURES))
    assert not hit and load_reference(directory).rows == stats.rows


@pytest.mark.parametrize("col", ["x", "c"])
def test_categorical_and_numeric_missing_counts(frames, col):
    ref = frames(100, seed=3)
    ref.loc[ref.index[:10], col] = np.nan
    stats = build_reference(ref, FeatureTypes(("x",), ("c",)))
    sketch = stats.numeric.get(col) or stats.categorical.get(col)
    assert sketch.missing == 10 and sketch.count == 90
