"""Reference statistics of a training split too big for memory: the same ``ReferenceStats`` as
``reference.build_reference``, from the split's record batches.

Below the caps it is exactly ``build_reference``'s result: a numeric column with at most ``MAX_DISTINCT``
(100,000) distinct values is counted exactly, value by value, and sketched by ``reference.sketch_counts``, which
gives the same sketch as the whole sorted column; categories are counted exactly (up to 100,000 distinct before
the rarest are pooled, then ``max_categories`` kept as in ``build_reference``).

A numeric column with more distinct values takes a second pass over the batches: the first pass keeps a uniform
sample of ``GRID_SAMPLE`` (65,536) of its values, whose distinct values become the edges of a histogram (atoms at
the edges, count and sum per gap) filled exactly by the second pass. The ``max_points`` quantiles of the sketch
are read off that histogram, interpolated linearly inside a gap (between the column's min and max outside the
edges): the sketch's CDF is then within the largest gap's share of rows (about 1 / 65,536, sampling noise
aside) plus ``0.5 / max_points`` of the exact CDF. Mean and std are merged per batch (exact to rounding).
Two passes cost two reads of the split (and two runs of the model when predictions are included); memory stays
one batch plus the caps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from pipeline.monitoring.reference import (
    DEFAULT_MAX_CATEGORIES,
    DEFAULT_MAX_POINTS,
    OTHER_CATEGORY,
    CategoricalSketch,
    FeatureTypes,
    NumericSketch,
    ReferenceStats,
    category_counts,
    numeric_values,
    sketch_categorical,
    sketch_counts,
)
from pipeline.monitoring.window import MAX_CATEGORIES, MAX_DISTINCT, CategoricalSummary, NumericSummary

GRID_SAMPLE = 65_536

_EMPTY = NumericSketch(np.empty(0), np.empty(0), 0, 0)


class _ValueSample:
    """A uniform sample of at most ``size`` values of a column (the smallest random keys)."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng = size, rng
        self.keys, self.values = np.empty(0), np.empty(0)

    def update(self, values: np.ndarray) -> None:
        self.keys = np.concatenate([self.keys, self.rng.random(values.size)])
        self.values = np.concatenate([self.values, values])
        if self.keys.size > 2 * self.size:
            keep = np.argpartition(self.keys, self.size - 1)[: self.size]
            self.keys, self.values = self.keys[keep], self.values[keep]


def histogram_quantiles(summary: NumericSummary, max_points: int) -> np.ndarray:
    """The ``max_points`` mid-probability quantiles of a histogram ``NumericSummary`` (see the module doc)."""
    edges, counts = summary.edges, summary.h_count
    m = edges.size
    # bounds of each slot: gap i is (edges[i-1], edges[i]) with the column's min / max outside; atom i is edges[i]
    lower = np.empty(2 * m + 1)
    upper = np.empty(2 * m + 1)
    lower[0::2] = np.concatenate(([summary.lo], edges))
    upper[0::2] = np.concatenate((edges, [summary.hi]))
    lower[1::2] = upper[1::2] = edges
    n = counts.sum()
    cum = np.cumsum(counts)
    rank = (np.arange(max_points) + 0.5) * n / max_points
    slot = np.minimum(np.searchsorted(cum, rank, side="right"), counts.size - 1)
    before = cum[slot] - counts[slot]
    frac = np.clip((rank - before) / np.maximum(counts[slot], 1.0), 0.0, 1.0)
    q = lower[slot] + frac * (upper[slot] - lower[slot])
    return np.maximum.accumulate(q)


def _histogram_sketch(summary: NumericSummary, missing: int, max_points: int) -> NumericSketch:
    q = histogram_quantiles(summary, max_points)
    last = np.append(np.flatnonzero(q[1:] != q[:-1]), max_points - 1)
    cdf = ((last + 1) / max_points).astype(np.float64)
    cdf[-1] = 1.0
    std = float(np.sqrt(max(summary.m2, 0.0) / summary.n))
    return NumericSketch(q[last], cdf, int(round(summary.n)), int(missing), float(summary.mean), std, False)


def _categorical(summary: CategoricalSummary, max_categories: int) -> CategoricalSketch:
    # a pool made while streaming stays a pool: it is added to the final one rather than ranked as a category
    counts = dict(summary.counts)
    pooled = counts.pop(OTHER_CATEGORY, 0)
    sketch = sketch_categorical(counts, summary.missing, max_categories=max_categories)
    if not pooled:
        return sketch
    merged = {**sketch.counts, OTHER_CATEGORY: sketch.counts.get(OTHER_CATEGORY, 0) + pooled}
    return CategoricalSketch(dict(sorted(merged.items())), sketch.missing)


def build_reference_streamed(
    batches: Callable[[], Iterable[pd.DataFrame]],
    features: FeatureTypes,
    *,
    max_points: int = DEFAULT_MAX_POINTS,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    max_distinct: int = MAX_DISTINCT,
    grid_sample: int = GRID_SAMPLE,
    meta: dict | None = None,
    seed: int = 0,
) -> ReferenceStats:
    """``build_reference`` over the frames of ``batches()`` (called once, or twice when a numeric column has
    more than ``max_distinct`` distinct values).

    Args:
        batches: returns a fresh iterator over the reference rows (with the prediction columns, if any).
        features: the compared columns; one absent from every batch is an error, as in ``build_reference``.
        max_points, max_categories: as in ``build_reference``.
        max_distinct, grid_sample: the caps of the module docstring.
        meta: lineage stored with the statistics.
    """
    rng = np.random.default_rng(seed)
    exact = {c: NumericSummary(_EMPTY, max_distinct=np.iinfo(np.int64).max) for c in features.all_numeric}
    samples = {c: _ValueSample(grid_sample, rng) for c in features.all_numeric}
    missing = dict.fromkeys(features.all_numeric, 0)
    categorical = {c: CategoricalSummary(MAX_CATEGORIES) for c in features.all_categorical}
    seen: set[str] = set()
    rows = 0
    for frame in batches():
        n = len(frame)
        rows += n
        seen.update(frame.columns)
        for c in features.all_numeric:
            values, miss = numeric_values(frame[c] if c in frame.columns else None, n)
            missing[c] += miss
            samples[c].update(values)
            acc = exact.get(c)
            if acc is not None:
                acc.update(values, 0)
                if acc.values.size > max_distinct:  # too many values to count one by one: histogram pass
                    exact[c] = None
        for c, acc in categorical.items():
            acc.update(*category_counts(frame[c] if c in frame.columns else None, n))
    absent = [c for c in (*features.features, *features.predictions) if c not in seen]
    if absent:
        raise KeyError(f"reference data lacks columns {absent}")
    numeric: dict[str, NumericSketch] = {}
    wide = [c for c, acc in exact.items() if acc is None]
    for c, acc in exact.items():
        if acc is not None:
            numeric[c] = sketch_counts(acc.values, acc.counts, missing[c], max_points)
    if wide:
        hist = {}
        for c in wide:
            h = NumericSummary(_EMPTY)
            h.use_edges(np.unique(samples[c].values))
            hist[c] = h
        for frame in batches():
            for c, h in hist.items():
                values, _ = numeric_values(frame[c] if c in frame.columns else None, len(frame))
                if values.size:
                    h.add(values, np.ones(values.size))
        for c, h in hist.items():
            numeric[c] = _histogram_sketch(h, missing[c], max_points)
    numeric = {c: numeric[c] for c in features.all_numeric}
    cats = {c: _categorical(acc, max_categories) for c, acc in categorical.items()}
    return ReferenceStats(features, numeric, cats, rows, dict(meta or {}))
