"""Validate: infer a schema from the data, check the data against it and against the champion's schema.

The schema records, per column, its kind (numeric, categorical or label), dtype, categorical domain, numeric
range and null rate. The first run of a model has no reference schema: the data is only checked for sanity
(usable label, no empty features, no text in numeric columns). Later runs are also compared with the schema
stored with the current champion. Blocking anomalies stop the run with a message naming column and problem.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.features import CATEGORICAL, NUMERIC, FeatureSpec, resolve_features

if TYPE_CHECKING:
    import pandas as pd

# A categorical column whose non-null values mostly parse as numbers is a numeric column with text in it.
NUMERIC_PARSE_SHARE = 0.9
# Null-rate increase (absolute) against the reference that warns, and that blocks.
NULL_RATE_WARN, NULL_RATE_BLOCK = 0.05, 0.3
MAX_DOMAIN = 1000  # domains larger than this are not stored (free-text-like columns)


class ValidationError(ValueError):
    """Blocking anomalies were found; ``anomalies`` holds all of them."""

    def __init__(self, anomalies: list["Anomaly"], source: str = ""):
        self.anomalies = anomalies
        lines = [f"  - {a.column}: {a.message}" for a in anomalies if a.blocking]
        where = f" in {source}" if source else ""
        super().__init__(f"data validation failed{where}:\n" + "\n".join(lines))


@dataclass(frozen=True)
class Anomaly:
    column: str
    kind: str       # missing_column, extra_column, dtype_change, text_in_numeric, all_missing, ...
    message: str
    blocking: bool


@dataclass
class ValidationResult:
    schema: dict[str, Any]
    anomalies: list[Anomaly] = field(default_factory=list)

    @property
    def blocking(self) -> list[Anomaly]:
        return [a for a in self.anomalies if a.blocking]

    def report(self) -> dict[str, Any]:
        return {"anomalies": [asdict(a) for a in self.anomalies], "blocking": len(self.blocking),
                "warnings": len(self.anomalies) - len(self.blocking)}


def _text_examples(series: "pd.Series") -> tuple[float, list[str]]:
    """Share of non-null values that parse as numbers, and up to three that do not."""
    import pandas as pd

    values = series.dropna()
    if values.empty:
        return 0.0, []
    parsed = pd.to_numeric(values, errors="coerce")
    bad = values[parsed.isna()]
    return 1 - len(bad) / len(values), [str(v) for v in bad.unique()[:3]]


def infer_schema(df: "pd.DataFrame", spec: FeatureSpec) -> dict[str, Any]:
    """Describe each feature and the label of ``df`` (already checked to be usable)."""
    columns: dict[str, Any] = {}
    for col in spec.names + (spec.label,):
        s = df[col]
        kind = "label" if col == spec.label else (NUMERIC if col in spec.numeric else CATEGORICAL)
        entry: dict[str, Any] = {"kind": kind, "dtype": str(s.dtype), "null_rate": float(s.isna().mean())}
        treat_as_category = kind == CATEGORICAL or (kind == "label" and spec.task == "classification")
        if treat_as_category:
            domain = sorted(str(v) for v in s.dropna().unique())
            entry["domain"] = domain if len(domain) <= MAX_DOMAIN else None
        else:
            entry["min"], entry["max"] = float(s.min()), float(s.max())
            entry["mean"], entry["std"] = float(s.mean()), float(s.std(ddof=0))
        columns[col] = entry
    return {"version": 1, "features": spec.to_dict(), "rows": int(len(df)), "columns": columns}


def check_data(df: "pd.DataFrame", spec: FeatureSpec, pinned_numeric: set[str]) -> list[Anomaly]:
    """Checks that need no reference: a usable label, features that carry values, numbers in numeric columns."""
    import pandas as pd

    out: list[Anomaly] = []
    label = df[spec.label]
    if label.isna().all():
        out.append(Anomaly(spec.label, "missing_label", "label column has no values", True))
    elif spec.task == "classification" and label.nunique() < 2:
        out.append(Anomaly(spec.label, "constant_label",
                           f"label has a single class ({label.dropna().iloc[0]!r}); a classifier needs at least two", True))
    elif spec.task == "regression":
        if not pd.api.types.is_numeric_dtype(label):
            share, bad = _text_examples(label)
            out.append(Anomaly(spec.label, "text_in_numeric", f"regression label has non-numeric values, e.g. {bad}", True))
        elif label.nunique() < 2:
            out.append(Anomaly(spec.label, "constant_label", "regression label is constant", True))
    elif label.isna().any():
        out.append(Anomaly(spec.label, "missing_label", f"{int(label.isna().sum())} rows have no label and are dropped", False))
    for col in spec.names:
        s = df[col]
        if s.isna().all():
            out.append(Anomaly(col, "all_missing", "all values are missing (NaN/empty)", True))
            continue
        if col in spec.numeric and not pd.api.types.is_numeric_dtype(s):
            share, bad = _text_examples(s)
            out.append(Anomaly(col, "text_in_numeric", f"numeric column contains text values, e.g. {bad}", True))
        elif col in spec.categorical and col not in pinned_numeric and not pd.api.types.is_numeric_dtype(s):
            share, bad = _text_examples(s)
            if share >= NUMERIC_PARSE_SHARE and bad:
                n = int(s.notna().sum())
                n_text = n - int(round(share * n))
                out.append(Anomaly(col, "text_in_numeric",
                                   f"numeric column has text: {n_text} of {n} values are not numbers, e.g. {bad}; "
                                   "fix the data or declare the column categorical in the config", True))
    return out


def compare_with_reference(schema: dict[str, Any], reference: dict[str, Any]) -> list[Anomaly]:
    """Differences between this data's schema and the champion's that a model trained on one meets on the other."""
    out: list[Anomaly] = []
    cur, ref = schema["columns"], reference["columns"]
    for col, r in ref.items():
        c = cur.get(col)
        if c is None:
            out.append(Anomaly(col, "missing_column", "column of the reference schema is missing", True))
            continue
        if c["kind"] != r["kind"]:
            out.append(Anomaly(col, "dtype_change", f"was {r['kind']} ({r['dtype']}), now {c['kind']} ({c['dtype']})", True))
            continue
        if r.get("domain") is not None and c.get("domain") is not None:
            unseen = sorted(set(c["domain"]) - set(r["domain"]))
            if unseen:
                out.append(Anomaly(col, "unseen_categories", f"values not in the reference domain: {unseen[:10]}", False))
        jump = c["null_rate"] - r["null_rate"]
        if jump > NULL_RATE_WARN:
            out.append(Anomaly(col, "null_rate_jump", f"null rate rose from {r['null_rate']:.1%} to {c['null_rate']:.1%}",
                               jump > NULL_RATE_BLOCK))
    for col in sorted(set(cur) - set(ref)):
        out.append(Anomaly(col, "extra_column", "column is not in the reference schema", False))
    return out


def validate(df: "pd.DataFrame", label: str, task: str | None, numeric=(), categorical=(), exclude=(),
             reference: dict[str, Any] | None = None, source: str = "") -> ValidationResult:
    """Resolve the feature contract, check the data, and compare it with a reference schema if there is one.

    Raises:
        ValidationError: with every blocking anomaly, each naming its column.
    """
    from pipeline.features import column_key

    if column_key(label) not in df.columns:
        raise ValidationError([Anomaly(label, "missing_column", "label column not found", True)], source)
    try:
        spec = resolve_features(df, label, task, numeric, categorical, exclude)
    except ValueError as exc:
        raise ValidationError([Anomaly("*", "features", str(exc), True)], source) from exc
    anomalies = check_data(df, spec, {column_key(c) for c in numeric})
    if any(a.blocking for a in anomalies):
        raise ValidationError(anomalies, source)
    schema = infer_schema(df, spec)
    if reference is not None:
        anomalies += compare_with_reference(schema, reference)
    result = ValidationResult(schema, anomalies)
    if result.blocking:
        raise ValidationError(anomalies, source)
    return result


def load_schema(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
