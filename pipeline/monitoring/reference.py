"""Reference statistics: what the monitor keeps of the training data, computed once per model version.

A current window is compared with these summaries, never with the full reference table, so a monitor run costs
one pass over the window whatever the size of the training data:

- numeric column: a *sketch* of its distribution, the sorted support ``values`` with the cumulative share
  ``cdf`` at each value. Up to ``max_points`` distinct values it is the exact empirical distribution; above,
  it is the distribution of ``max_points`` equally weighted quantiles (mid-probabilities), whose CDF is within
  ``0.5 / max_points`` of the exact one everywhere. Plus the row counts and moments.
- categorical column: the count of every category, and the number of missing rows (NaN, None or ``""``,
  the serving contract's "missing" for strings).

``build_reference`` is pure; ``save_reference`` / ``load_reference`` / ``load_or_build_reference`` are the I/O
edge (``PIPELINE_HOME/monitoring/reference/<model>/<version>/``: ``reference.json`` + ``numeric.parquet``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import paths

SKETCH_FORMAT = 1
DEFAULT_MAX_POINTS = 4096
DEFAULT_MAX_CATEGORIES = 10_000
OTHER_CATEGORY = "__other__"


@dataclass(frozen=True)
class FeatureTypes:
    """Which columns are compared, and how. Prediction columns are the model's outputs (see
    ``request_log.prediction_columns``); they are tested like features but reported apart."""

    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    prediction_numeric: tuple[str, ...] = ()
    prediction_categorical: tuple[str, ...] = ()

    @property
    def features(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)

    @property
    def predictions(self) -> tuple[str, ...]:
        return (*self.prediction_numeric, *self.prediction_categorical)

    @property
    def all_numeric(self) -> tuple[str, ...]:
        return (*self.numeric, *self.prediction_numeric)

    @property
    def all_categorical(self) -> tuple[str, ...]:
        return (*self.categorical, *self.prediction_categorical)

    def to_dict(self) -> dict[str, list[str]]:
        return {
            k: list(getattr(self, k))
            for k in ("numeric", "categorical", "prediction_numeric", "prediction_categorical")
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureTypes:
        return cls(
            **{
                k: tuple(d.get(k) or ())
                for k in ("numeric", "categorical", "prediction_numeric", "prediction_categorical")
            }
        )


@dataclass(frozen=True)
class NumericSketch:
    """The distribution of one numeric column: support ``values`` (sorted, distinct) and ``cdf[i]`` = share of
    non-missing rows <= ``values[i]`` (the last is 1). ``count`` non-missing rows, ``missing`` missing ones."""

    values: np.ndarray
    cdf: np.ndarray
    count: int
    missing: int
    mean: float = 0.0
    std: float = 0.0
    exact: bool = True

    @property
    def rows(self) -> int:
        return self.count + self.missing

    @property
    def weights(self) -> np.ndarray:
        return np.diff(self.cdf, prepend=0.0)


@dataclass(frozen=True)
class CategoricalSketch:
    """Category -> rows, for the non-missing rows of one categorical column."""

    counts: dict[str, int]
    missing: int

    @property
    def count(self) -> int:
        return int(sum(self.counts.values()))

    @property
    def rows(self) -> int:
        return self.count + self.missing


@dataclass(frozen=True)
class ReferenceStats:
    """Everything the monitor keeps of a reference table. ``meta`` carries the lineage it was built from
    (model name/version, dataset digest) and decides whether a cached copy is still valid."""

    features: FeatureTypes
    numeric: dict[str, NumericSketch]
    categorical: dict[str, CategoricalSketch]
    rows: int
    meta: dict = field(default_factory=dict)

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.features.features, *self.features.predictions)


# ---------------------------------------------------------------------------------------------------------
# Column extraction, shared by the reference and the current window so that both read values the same way.


def numeric_values(column: pd.Series | None, rows: int = 0) -> tuple[np.ndarray, int]:
    """The finite values of a column as float64 (not sorted) and the number of missing rows.

    Non-numeric strings, NaN and +/-inf count as missing. ``None`` (the column is absent) is all-missing.
    """
    if column is None:
        return np.empty(0, dtype=np.float64), rows
    if not (pd.api.types.is_numeric_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype)):
        column = pd.to_numeric(column, errors="coerce")
    arr = column.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(arr)
    if finite.all():
        return arr, 0
    return arr[finite], int(arr.size - finite.sum())


def category_counts(column: pd.Series | None, rows: int = 0) -> tuple[dict[str, int], int]:
    """Category -> rows for the non-missing values of a column, and the number of missing rows.

    Missing is NaN/None or the empty string. Whole-number floats print as integers, so that a category column
    read as float because of a NaN (``1.0``) matches its integer form (``1``) in the other table.
    """
    if column is None:
        return {}, rows
    if pd.api.types.is_float_dtype(column.dtype):
        finite = column.dropna()
        if len(finite) and bool((finite == np.floor(finite)).all()):
            column = column.astype("Int64")
    counts = column.value_counts(dropna=False, sort=False)
    out: dict[str, int] = {}
    missing = 0
    for key, n in zip(counts.index.tolist(), counts.to_numpy().tolist()):
        if key is None or key is pd.NA or (isinstance(key, float) and np.isnan(key)) or key == "":
            missing += int(n)
        else:
            k = str(key)
            out[k] = out.get(k, 0) + int(n)
    return out, missing


def sketch_numeric(
    values: np.ndarray, missing: int = 0, max_points: int = DEFAULT_MAX_POINTS
) -> NumericSketch:
    """Sketch the finite ``values`` of a column (see the module docstring for the accuracy)."""
    if values.size == 0:
        return NumericSketch(np.empty(0), np.empty(0), 0, int(missing), 0.0, 0.0, True)
    support, counts = np.unique(values, return_counts=True)
    return sketch_counts(support, counts, missing, max_points)


def sketch_counts(
    values: np.ndarray, counts: np.ndarray, missing: int = 0, max_points: int = DEFAULT_MAX_POINTS
) -> NumericSketch:
    """``sketch_numeric`` of the column whose distinct sorted ``values`` occur ``counts`` times: the same sketch
    whether the column was whole in memory or counted batch by batch (mean and std come from these pairs)."""
    n = int(counts.sum())
    if n == 0:
        return NumericSketch(np.empty(0), np.empty(0), 0, int(missing), 0.0, 0.0, True)
    w = counts.astype(np.float64)
    mean = float((values * w).sum() / n)
    std = float(np.sqrt((w * (values - mean) ** 2).sum() / n))
    ends = np.cumsum(counts) - 1  # index of the last copy of each value in the sorted column
    if values.size <= max_points:
        support, cdf, exact = values, (ends + 1) / n, True
    else:
        idx = ((np.arange(max_points) + 0.5) * n / max_points).astype(np.int64)
        q = values[np.searchsorted(ends, np.minimum(idx, n - 1), side="left")]
        last = np.append(np.flatnonzero(q[1:] != q[:-1]), max_points - 1)
        support, cdf, exact = q[last], (last + 1) / max_points, False
    cdf = cdf.astype(np.float64)
    cdf[-1] = 1.0
    return NumericSketch(support.astype(np.float64), cdf, n, int(missing), mean, std, exact)


def sketch_categorical(
    counts: dict[str, int], missing: int = 0, max_categories: int = DEFAULT_MAX_CATEGORIES
) -> CategoricalSketch:
    """Keep the ``max_categories`` most frequent categories; the rest are pooled as ``__other__``."""
    if len(counts) > max_categories:
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        kept = dict(ranked[: max_categories - 1])
        kept[OTHER_CATEGORY] = sum(n for _, n in ranked[max_categories - 1 :])
        counts = kept
    # sorted by name, as the cache's JSON stores them: the tests' sums then add in one order everywhere
    return CategoricalSketch(dict(sorted(counts.items())), int(missing))


def build_reference(
    frame: pd.DataFrame,
    features: FeatureTypes,
    *,
    max_points: int = DEFAULT_MAX_POINTS,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    meta: dict | None = None,
) -> ReferenceStats:
    """Summarise a reference table (the training split) for every column named in ``features``.

    Args:
        frame: the reference rows; a column named in ``features`` but absent from it is an error.
        features: which columns are numeric / categorical (and which of them are model outputs).
        max_points: size of a numeric sketch (accuracy of the CDF: ``0.5 / max_points``).
        max_categories: categories kept per column before pooling the rarest as ``__other__``.
        meta: lineage stored with the statistics (model name, version, dataset digest).
    Returns:
        The reference statistics; pure, nothing is written.
    """
    absent = [c for c in (*features.features, *features.predictions) if c not in frame.columns]
    if absent:
        raise KeyError(f"reference data lacks columns {absent}")
    rows = len(frame)
    numeric = {
        c: sketch_numeric(*numeric_values(frame[c]), max_points=max_points) for c in features.all_numeric
    }
    categorical = {
        c: sketch_categorical(*category_counts(frame[c]), max_categories=max_categories)
        for c in features.all_categorical
    }
    return ReferenceStats(features, numeric, categorical, rows, dict(meta or {}))


# ---------------------------------------------------------------------------------------------------------
# Persistence: the I/O edge.


def reference_cache_dir(model_name: str, version: int | str) -> Path:
    """``PIPELINE_HOME/monitoring/reference/<model_name>/<version>/``."""
    return paths.pipeline_home() / "monitoring" / "reference" / paths.safe_key(model_name) / str(version)


def save_reference(stats: ReferenceStats, directory: Path) -> Path:
    """Write ``reference.json`` and ``numeric.parquet`` into ``directory``, replacing it atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    doc = {
        "format": SKETCH_FORMAT,
        "rows": stats.rows,
        "meta": stats.meta,
        "features": stats.features.to_dict(),
        "numeric": {
            c: {"count": s.count, "missing": s.missing, "mean": s.mean, "std": s.std, "exact": s.exact}
            for c, s in stats.numeric.items()
        },
        "categorical": {c: {"counts": s.counts, "missing": s.missing} for c, s in stats.categorical.items()},
    }
    (tmp / "reference.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
    names = list(stats.numeric)
    table = pa.table(
        {
            "feature": pa.array(
                np.repeat(
                    np.arange(len(names), dtype=np.int32), [stats.numeric[c].values.size for c in names]
                )
            ).dictionary_encode()
            if names
            else pa.array([], pa.int32()),
            "value": np.concatenate([stats.numeric[c].values for c in names]) if names else np.empty(0),
            "cdf": np.concatenate([stats.numeric[c].cdf for c in names]) if names else np.empty(0),
        }
    )
    pq.write_table(table.replace_schema_metadata({"features": json.dumps(names)}), tmp / "numeric.parquet")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def load_reference(directory: Path) -> ReferenceStats:
    """Read statistics written by ``save_reference``."""
    import pyarrow.parquet as pq

    directory = Path(directory)
    doc = json.loads((directory / "reference.json").read_text())
    if doc.get("format") != SKETCH_FORMAT:
        raise ValueError(f"{directory}: reference format {doc.get('format')} != {SKETCH_FORMAT}")
    table = pq.read_table(directory / "numeric.parquet")
    names = json.loads(table.schema.metadata[b"features"])
    feature = table.column("feature").combine_chunks()
    feature = feature.dictionary_decode() if hasattr(feature, "dictionary_decode") else feature
    codes = feature.to_numpy(zero_copy_only=False)
    values = table.column("value").to_numpy()
    cdf = table.column("cdf").to_numpy()
    bounds = np.searchsorted(codes, np.arange(len(names) + 1))
    numeric = {}
    for i, c in enumerate(names):
        lo, hi = bounds[i], bounds[i + 1]
        s = doc["numeric"][c]
        numeric[c] = NumericSketch(
            values[lo:hi].copy(),
            cdf[lo:hi].copy(),
            int(s["count"]),
            int(s["missing"]),
            float(s["mean"]),
            float(s["std"]),
            bool(s["exact"]),
        )
    categorical = {
        c: CategoricalSketch({k: int(v) for k, v in s["counts"].items()}, int(s["missing"]))
        for c, s in doc["categorical"].items()
    }
    return ReferenceStats(
        FeatureTypes.from_dict(doc["features"]), numeric, categorical, int(doc["rows"]), doc.get("meta") or {}
    )


def load_or_build_reference(
    directory: Path, build: Callable[[], ReferenceStats], expect: dict | None = None
) -> tuple[ReferenceStats, bool]:
    """The cached statistics in ``directory`` if their ``meta`` matches ``expect``; else ``build()`` and cache.

    Args:
        directory: the cache, usually ``reference_cache_dir(model_name, version)``.
        build: computes the statistics (reads the reference table); called only on a miss.
        expect: meta entries that must match (e.g. ``{"dataset_digest": ...}``) for the cache to be used.
    Returns:
        ``(stats, from_cache)``.
    """
    expect = expect or {}
    if (Path(directory) / "reference.json").exists():
        try:
            stats = load_reference(directory)
        except (ValueError, KeyError, OSError):
            stats = None
        if stats is not None and all(stats.meta.get(k) == v for k, v in expect.items()):
            return stats, True
    stats = build()
    save_reference(stats, directory)
    return stats, False
