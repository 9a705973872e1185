"""Column statistics accumulated batch by batch: what the validate stage's schema records of each column, exact
over every row whether the table is one frame or a stream of record batches (``pipeline.datasets``).

Per column: rows, nulls, dtype; for a categorical one its domain (up to ``MAX_DOMAIN`` values) and its number of
distinct values (exact up to ``EXACT_DISTINCT``, beyond that estimated by a K-minimum-values sketch of 4,096
hashes: about 1.5% relative error); for a numeric one min, max, mean and standard deviation (batches merged with
Chan's parallel update, exact to rounding). Quantiles are not accumulated here: the schema takes them from a
bounded uniform sample of the rows (``pipeline.datasets.sample_frame``), not from a sketch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

MAX_DOMAIN = 1000          # domains larger than this are not stored (free-text-like columns)
EXACT_DISTINCT = 100_000   # distinct values counted exactly up to this many, then estimated
KMV_SIZE = 4096
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def _hashes(values: Iterable[Any]) -> "np.ndarray":
    """Stable 64-bit hashes of values by their text."""
    import numpy as np
    import pandas as pd

    return np.unique(pd.util.hash_array(np.array([str(v) for v in values], dtype=object)))


@dataclass
class ColumnProfile:
    """The statistics of one column, fed one batch (a pandas Series) at a time with :meth:`update`."""

    categorical: bool = False
    numeric: bool = False
    rows: int = 0
    nulls: int = 0
    dtype: str = ""
    values: set | None = field(default_factory=set)  # the distinct values while they are few enough
    kmv: "np.ndarray | None" = None                   # then the smallest hashes of the values
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = float("nan")
    max: float = float("nan")

    def update(self, s: "pd.Series") -> None:
        import numpy as np
        import pandas as pd

        self.rows += len(s)
        self.nulls += int(s.isna().sum())
        self.dtype = self.dtype or str(s.dtype)
        if self.categorical:
            present = s.dropna().unique()
            if self.values is not None:
                self.values.update(present)
                if len(self.values) > EXACT_DISTINCT:
                    self.kmv, self.values = _hashes(self.values)[:KMV_SIZE], None
            elif len(present):
                self.kmv = np.union1d(self.kmv, _hashes(present))[:KMV_SIZE]
        if self.numeric:
            v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            v = v[~np.isnan(v)]
            if v.size:
                n, mean = v.size, float(v.mean())
                m2 = float(((v - mean) ** 2).sum())
                total = self.count + n
                delta = mean - self.mean
                self.mean += delta * n / total
                self.m2 += m2 + delta * delta * self.count * n / total
                self.count = total
                self.min = float(v.min()) if np.isnan(self.min) else min(self.min, float(v.min()))
                self.max = float(v.max()) if np.isnan(self.max) else max(self.max, float(v.max()))

    @property
    def distinct(self) -> int:
        if self.values is not None:
            return len(self.values)
        # K minimum values: the k-th smallest of uniform 64-bit hashes sits near k / distinct of the range
        return int(round((KMV_SIZE - 1) / (float(self.kmv[-1]) / 2.0**64)))

    def entry(self) -> dict[str, Any]:
        """What the schema records of the column (``pipeline.validate.infer_schema``)."""
        out: dict[str, Any] = {"dtype": self.dtype, "null_rate": self.nulls / self.rows if self.rows else float("nan")}
        if self.categorical:
            out["domain"] = (sorted(str(v) for v in self.values)
                             if self.values is not None and len(self.values) <= MAX_DOMAIN else None)
            out["distinct"] = self.distinct
            if self.values is None:
                out["distinct_estimated"] = True
        if self.numeric:
            nan = float("nan")
            out["min"], out["max"] = self.min, self.max
            out["mean"] = self.mean if self.count else nan
            out["std"] = (self.m2 / self.count) ** 0.5 if self.count else nan
        return out


@dataclass
class LabelProfile:
    """The label column over every row: rows, missing, and per class (classification: the label as strings, in
    order of first appearance) its rows; for a regression label whether it is numeric, a few values that are
    not, and whether it takes two values or more."""

    classification: bool
    rows: int = 0
    missing: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    numeric: bool = True
    not_numbers: list[str] = field(default_factory=list)
    seen: set = field(default_factory=set)  # regression: up to two distinct values

    def update(self, s: "pd.Series") -> None:
        import pandas as pd

        from pipeline.preprocess import label_strings

        self.rows += len(s)
        present = s.dropna()
        self.missing += len(s) - len(present)
        if self.classification:
            for name in label_strings(present):
                self.counts[name] = self.counts.get(name, 0) + 1
            return
        if not pd.api.types.is_numeric_dtype(present):
            self.numeric = False
            bad = present[pd.to_numeric(present, errors="coerce").isna()]
            for v in bad.unique():
                if len(self.not_numbers) < 3 and str(v) not in self.not_numbers:
                    self.not_numbers.append(str(v))
        elif len(self.seen) < 2:
            self.seen.update(present.unique()[:2].tolist())

    def class_counts(self) -> "pd.Series":
        """Rows per class, most first (ties in order of first appearance, as ``value_counts`` orders them)."""
        import pandas as pd

        return pd.Series(self.counts, dtype="int64").sort_values(ascending=False, kind="stable")


def quantiles(values: "pd.Series") -> list[float]:
    """The :data:`QUANTILES` of a numeric column's present values (of the rows given: all, or a sample)."""
    import numpy as np
    import pandas as pd

    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    v = v[~np.isnan(v)]
    return [float(q) for q in np.quantile(v, QUANTILES)] if v.size else []
