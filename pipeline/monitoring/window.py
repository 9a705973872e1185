"""The current window summarised batch by batch: what the drift tests need of it, in memory bounded by the caps
below whatever the number of rows.

A window (a DataFrame, or the record batches of ``monitoring.batches``) is reduced, per reference column, to the
same kind of summary the reference keeps (``reference.NumericSketch`` / ``reference.CategoricalSketch``), and
``drift.analyse_drift`` compares the two summaries; a DataFrame is one batch, so the small and the streamed
paths share every line of the comparison.

- numeric column: the exact distribution (distinct values with their counts) while the column has at most
  ``max_distinct`` distinct values (``MAX_DISTINCT``, 100,000: 1.6 MB per column). Beyond, it becomes a
  histogram whose edges are the reference sketch's support points, each reference point an atom of its own,
  each gap between two reference points cut into equal-width sub-bins (``HISTOGRAM_BINS`` in all) and one bin
  below / above the reference range; a bin keeps its count and the sum of its values, and stands for a point mass
  at its mean. Because the reference CDF is constant inside a bin, the Kolmogorov-Smirnov distance and the PSI on
  reference deciles stay exact against the reference sketch, and so does the Wasserstein-1 distance except in
  a bin where the two CDFs cross: its error is at most the sum over those bins of (bin width x bin share), a
  fraction of a sub-bin width. Counts, missing counts and the mean are exact; the standard deviation is merged
  per batch (Chan), exact to rounding.
- categorical column: the exact count of every category while there are at most ``max_categories``
  (``MAX_CATEGORIES``, 100,000) distinct; when a batch takes it over, the most frequent ``max_categories - 1``
  are kept and the rest pooled into ``__other__`` (so a very rare category seen before a pooling is counted in
  ``__other__``). Missing counts are always exact.
- ``sample``: a uniform sample of at most ``sample_rows`` rows (``SAMPLE_ROWS``, 100,000; bottom-k on random
  keys, so it is uniform over the whole window), for the report's plots.
- ``labelled``: the rows that carry a label (after ``request_log.join_labels``), only their label and
  prediction columns, for the performance metrics: all of them up to ``MAX_LABELLED`` (1,000,000) labelled rows,
  so the metrics are exact (labels are usually few); beyond, a uniform sample of that many.

A column that is absent from a batch (a JSONL chunk in which no row has it) counts as missing in that batch's
rows; a column absent from every batch is reported ``missing_column``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.monitoring.reference import (
    OTHER_CATEGORY,
    CategoricalSketch,
    NumericSketch,
    ReferenceStats,
    category_counts,
    numeric_values,
    sketch_counts,
)

MAX_DISTINCT = 100_000
MAX_CATEGORIES = 100_000
HISTOGRAM_BINS = 65_536
SAMPLE_ROWS = 100_000
MAX_LABELLED = 1_000_000
_ORDER = "__window_row__"  # the row number kept with the sample, to give it back in window order


@dataclass(frozen=True)
class WindowStats:
    """What the monitor keeps of a current window.

    Attributes:
        rows: rows in the window.
        columns: every column seen in some batch, in first-seen order (for ``new_columns`` / ``missing_column``).
        numeric, categorical: the summary of each reference column present in the window (see the module doc).
        sample: a uniform sample of the window's rows (all of them when few), for plots.
        labelled: the rows with a non-missing label, their label and prediction columns (``None`` when none).
    """

    rows: int
    columns: tuple[str, ...]
    numeric: dict[str, NumericSketch]
    categorical: dict[str, CategoricalSketch]
    sample: pd.DataFrame | None = None
    labelled: pd.DataFrame | None = None
    meta: dict = field(default_factory=dict)


def histogram_edges(reference: NumericSketch, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Interior edges of the histogram of a column: the reference support points and ``bins`` / (points - 1)
    equal-width cuts in each gap between two of them (sorted, distinct)."""
    r = reference.values
    if r.size < 2:
        return r.astype(np.float64).copy()
    cuts = max(1, bins // (r.size - 1))
    t = np.arange(cuts, dtype=np.float64) / cuts
    grid = (r[:-1, None] + (r[1:] - r[:-1])[:, None] * t[None, :]).ravel()
    return np.unique(np.append(grid, r[-1]))


class NumericSummary:
    """Accumulates one numeric column: exact (value, count) pairs, then a histogram (module docstring)."""

    def __init__(self, reference: NumericSketch, max_distinct: int = MAX_DISTINCT, bins: int = HISTOGRAM_BINS):
        self.reference, self.max_distinct, self.bins = reference, max_distinct, bins
        self.values = np.empty(0)
        self.counts = np.empty(0, dtype=np.int64)
        self.missing = 0
        self.edges: np.ndarray | None = None  # set when the column turns into a histogram

    def update(self, values: np.ndarray, missing: int) -> None:
        self.missing += int(missing)
        if values.size == 0:
            return
        if self.edges is None:
            v, c = np.unique(values, return_counts=True)
            if self.values.size:
                v, inverse = np.unique(np.concatenate([self.values, v]), return_inverse=True)
                c = np.bincount(inverse, weights=np.concatenate([self.counts, c])).astype(np.int64)
            self.values, self.counts = v, c
            if v.size > self.max_distinct:
                self._to_histogram()
        else:
            self.add(values, np.ones(values.size))

    def _to_histogram(self) -> None:
        # Bins over the reference support: the reference CDF is flat inside each, which keeps KS and PSI exact.
        values, counts = self.values, self.counts.astype(np.float64)
        self.use_edges(histogram_edges(self.reference, self.bins))
        self.add(values, counts)

    def use_edges(self, edges: np.ndarray) -> None:
        """Count into a histogram on ``edges`` (sorted, distinct) from now on, forgetting the exact pairs."""
        self.edges = np.asarray(edges, dtype=np.float64)
        size = 2 * self.edges.size + 1  # even slots: the gaps around the edges; odd slots: atoms at the edges
        self.h_count = np.zeros(size)
        self.h_sum = np.zeros(size)
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.lo, self.hi = np.inf, -np.inf
        self.values, self.counts = np.empty(0), np.empty(0, dtype=np.int64)

    def add(self, values: np.ndarray, weights: np.ndarray) -> None:
        pos = np.searchsorted(self.edges, values, side="left")
        if self.edges.size:
            atom = (pos < self.edges.size) & (self.edges[np.minimum(pos, self.edges.size - 1)] == values)
        else:  # an all-missing reference column: one bin holds everything
            atom = np.zeros(values.size, dtype=bool)
        slot = 2 * pos + atom.astype(np.int64)
        self.h_count += np.bincount(slot, weights=weights, minlength=self.h_count.size)
        self.h_sum += np.bincount(slot, weights=values * weights, minlength=self.h_sum.size)
        self.lo, self.hi = min(self.lo, float(values.min())), max(self.hi, float(values.max()))
        # Chan's parallel update of the moments, batch by batch
        n = float(weights.sum())
        mean = float((values * weights).sum() / n)
        m2 = float((weights * (values - mean) ** 2).sum())
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    def sketch(self) -> NumericSketch:
        if self.edges is None:
            return sketch_counts(self.values, self.counts, self.missing, max_points=max(1, self.values.size))
        keep = self.h_count > 0
        count = self.h_count[keep]
        points = self.h_sum[keep] / count
        # a bin's mean lies inside the bin; rounding must not move it past a neighbour
        points = np.maximum.accumulate(points)
        support, inverse = np.unique(points, return_inverse=True)
        counts = np.bincount(inverse, weights=count)
        n = int(round(count.sum()))
        cdf = np.cumsum(counts) / counts.sum()
        cdf[-1] = 1.0
        std = float(np.sqrt(max(self.m2, 0.0) / self.n))
        return NumericSketch(support, cdf, n, self.missing, float(self.mean), std, False)


class CategoricalSummary:
    """Accumulates one categorical column: exact counts up to ``max_categories``, then the rarest pooled."""

    def __init__(self, max_categories: int = MAX_CATEGORIES):
        self.max_categories = max_categories
        self.counts: dict[str, int] = {}
        self.missing = 0

    def update(self, counts: dict[str, int], missing: int) -> None:
        self.missing += int(missing)
        for k, n in counts.items():
            self.counts[k] = self.counts.get(k, 0) + n
        if len(self.counts) > self.max_categories:
            other = self.counts.pop(OTHER_CATEGORY, 0)
            ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
            kept = dict(ranked[: self.max_categories - 1])
            kept[OTHER_CATEGORY] = other + sum(n for _, n in ranked[self.max_categories - 1 :])
            self.counts = kept

    def sketch(self) -> CategoricalSketch:
        # sorted: the order of first sight depends on the batching, and the sums of the tests on the order
        return CategoricalSketch(dict(sorted(self.counts.items())), self.missing)


class Reservoir:
    """A uniform sample without replacement of at most ``size`` rows: the rows with the smallest random keys."""

    def __init__(self, size: int = SAMPLE_ROWS, seed: int = 0):
        self.size, self.rng = size, np.random.default_rng(seed)
        self.parts: list[pd.DataFrame] = []
        self.keys = np.empty(0)
        self.seen = 0

    def update(self, frame: pd.DataFrame) -> None:
        keys = self.rng.random(len(frame))
        order = np.arange(self.seen, self.seen + len(frame))
        self.seen += len(frame)
        if self.size <= 0:
            return
        if self.keys.size >= self.size:  # only rows that beat the current k-th smallest key can enter
            cut = np.partition(self.keys, self.size - 1)[self.size - 1]
            take = keys < cut
            frame, keys, order = frame[take], keys[take], order[take]
        if not len(frame):
            return
        self.parts.append(frame.assign(**{_ORDER: order}))
        self.keys = np.concatenate([self.keys, keys])
        if self.keys.size > 2 * self.size:  # compact now and then, not at every batch
            self._compact()

    def _compact(self) -> None:
        whole = pd.concat(self.parts, ignore_index=True) if len(self.parts) > 1 else self.parts[0]
        if self.keys.size > self.size:
            keep = np.sort(np.argpartition(self.keys, self.size - 1)[: self.size])
            whole, self.keys = whole.iloc[keep].reset_index(drop=True), self.keys[keep]
        self.parts = [whole]

    def frame(self) -> pd.DataFrame | None:
        if not self.parts:
            return None
        self._compact()
        out = self.parts[0].sort_values(_ORDER, kind="stable").drop(columns=[_ORDER])
        return out.reset_index(drop=True)


def summarise_window(
    batches: Iterable[pd.DataFrame],
    reference: ReferenceStats,
    *,
    label: str | None = None,
    label_columns: Sequence[str] = (),
    sample_rows: int = SAMPLE_ROWS,
    max_labelled: int = MAX_LABELLED,
    max_distinct: int = MAX_DISTINCT,
    max_categories: int = MAX_CATEGORIES,
    bins: int = HISTOGRAM_BINS,
    seed: int = 0,
) -> WindowStats:
    """Summarise a window given as frames (one or many batches) against the columns of ``reference``.

    Args:
        batches: the window's rows, in any number of frames; feature columns named as in the reference, the
            prediction columns already derived (``request_log.prediction_columns``).
        reference: names the columns summarised and their kinds; numeric histograms use its support.
        label: the label column; rows where it is present are kept in ``labelled`` ...
        label_columns: ... with these columns besides the label (the predictions the metrics need).
        sample_rows: size of the uniform sample kept for plots (0: none).
        max_distinct, max_categories, bins, max_labelled: the caps of the module docstring.
        seed: of the sample.
    Returns:
        The window's summary; memory bounded by the caps, not by the rows.
    """
    numeric = {c: NumericSummary(s, max_distinct, bins) for c, s in reference.numeric.items()}
    categorical = {c: CategoricalSummary(max_categories) for c in reference.categorical}
    reservoir = Reservoir(sample_rows, seed)
    columns: dict[str, None] = {}
    labelled = Reservoir(max_labelled, seed + 1)
    rows = 0
    for frame in batches:
        n = len(frame)
        columns.update(dict.fromkeys(str(c) for c in frame.columns))
        rows += n
        for c, acc in numeric.items():
            acc.update(*numeric_values(frame[c] if c in frame.columns else None, n))
        for c, acc in categorical.items():
            acc.update(*category_counts(frame[c] if c in frame.columns else None, n))
        reservoir.update(frame)
        if label is not None and label in frame.columns:
            keep = [label, *(c for c in label_columns if c in frame.columns and c != label)]
            labelled.update(frame.loc[frame[label].notna(), keep])
    present = set(columns)
    return WindowStats(
        rows,
        tuple(columns),
        {c: a.sketch() for c, a in numeric.items() if c in present},
        {c: a.sketch() for c, a in categorical.items() if c in present},
        reservoir.frame(),
        labelled.frame(),
    )


def summarise_frame(frame: pd.DataFrame, reference: ReferenceStats, **kwargs) -> WindowStats:
    """``summarise_window`` of one DataFrame (the small path: the same summary, one batch)."""
    return summarise_window([frame], reference, **kwargs)

