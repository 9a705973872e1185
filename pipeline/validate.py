"""Validate: infer a schema from the data, check the data against it and against the champion's schema.

The schema records, per column, its kind (``pipeline.features.KINDS``, or label), why it was given that kind,
dtype, categorical domain, numeric range and null rate, and the columns left out with the reason. The first run
of a model has no reference schema: the data is only checked for sanity (a usable label, no class too rare to
split, no empty features, no text in numeric columns, one date format per date column). Later runs are also compared with the schema
stored with the current champion. Blocking anomalies stop the run with a message naming column and problem.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from pipeline.config import FeaturesConfig, LabelsConfig
from pipeline.features import BOOLEAN, CATEGORICAL, EXCLUDED_KINDS, HIGH_CARDINALITY, NUMERIC, FeatureSpec
from pipeline.profile import ColumnProfile, LabelProfile, quantiles

if TYPE_CHECKING:
    import pandas as pd

# Null-rate increase (absolute) against the reference that warns, and that blocks.
NULL_RATE_WARN, NULL_RATE_BLOCK = 0.05, 0.3


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


def profile_columns(frames: Iterable["pd.DataFrame"], spec: FeatureSpec
                    ) -> tuple[dict[str, ColumnProfile], LabelProfile]:
    """One pass over ``frames`` (a whole frame, or the record batches of a snapshot): the statistics of every
    feature, excluded column and the label (:mod:`pipeline.profile`)."""
    profiles = {}
    for col in spec.names + (spec.label,):
        kind = "label" if col == spec.label else spec.kind(col)
        category = kind in (CATEGORICAL, HIGH_CARDINALITY, BOOLEAN) or (kind == "label" and spec.task == "classification")
        profiles[col] = ColumnProfile(categorical=category, numeric=not category and kind in (NUMERIC, "label"))
    profiles.update({col: ColumnProfile() for col in spec.excluded})
    label = LabelProfile(spec.task == "classification")
    for frame in frames:
        for col, p in profiles.items():
            p.update(frame[col])
        label.update(frame[spec.label])
    return profiles, label


def schema_from_profiles(profiles: dict[str, ColumnProfile], spec: FeatureSpec,
                         sample: "pd.DataFrame") -> dict[str, Any]:
    """The schema (see the module docstring) from the columns' statistics; the numeric columns' quantiles from
    ``sample`` (every row, or a bounded uniform sample of them)."""
    columns: dict[str, Any] = {}
    for col in spec.names + (spec.label,):
        kind = "label" if col == spec.label else spec.kind(col)
        stats = profiles[col].entry()
        entry: dict[str, Any] = {"kind": kind, "dtype": stats.pop("dtype"), "null_rate": stats.pop("null_rate")}
        if col in spec.details:
            entry.update({k: v for k, v in spec.details[col].items() if k not in ("pinned",)})
            entry["pinned"] = bool(spec.details[col].get("pinned"))
        entry.update(stats)
        if profiles[col].numeric:
            entry["quantiles"] = quantiles(sample[col])
        columns[col] = entry
    for col, why in spec.excluded.items():
        stats = profiles[col].entry()
        columns[col] = {"kind": why.split(":")[0], "dtype": stats["dtype"], "null_rate": stats["null_rate"],
                        "excluded": why}
    return {"version": 2, "features": spec.to_dict(), "rows": int(profiles[spec.label].rows), "columns": columns}


def infer_schema(df: "pd.DataFrame", spec: FeatureSpec) -> dict[str, Any]:
    """Describe each feature and the label of ``df`` (already checked to be usable), and the excluded columns."""
    return schema_from_profiles(profile_columns([df], spec)[0], spec, df)


def check_label(df: "pd.DataFrame", spec: FeatureSpec, labels: LabelsConfig) -> list[Anomaly]:
    """A usable label: not empty, numbers for a regression, two classes or more, none too rare to split."""
    profile = LabelProfile(spec.task == "classification")
    profile.update(df[spec.label])
    return label_anomalies(profile, spec, labels)


def label_anomalies(profile: LabelProfile, spec: FeatureSpec, labels: LabelsConfig) -> list[Anomaly]:
    """:func:`check_label` from the label's statistics over every row."""
    out: list[Anomaly] = []
    if profile.missing == profile.rows:
        return [Anomaly(spec.label, "missing_label", "label column has no values (every row is missing)", True)]
    n_missing = profile.missing
    if n_missing:
        out.append(Anomaly(spec.label, "missing_label", f"{n_missing} of {profile.rows} rows have no label and are "
                                                         "dropped", False))
    if spec.task == "regression":
        if not profile.numeric:
            out.append(Anomaly(spec.label, "text_in_numeric",
                               f"regression label has non-numeric values, e.g. {profile.not_numbers}", True))
        elif len(profile.seen) < 2:
            out.append(Anomaly(spec.label, "constant_label", "regression label is constant", True))
        return out
    counts = profile.class_counts()
    if len(counts) < 2:
        out.append(Anomaly(spec.label, "constant_label",
                           f"label has a single class ({counts.index[0]!r}); a classifier needs at least two", True))
        return out
    rare = counts[counts < labels.min_class_rows]
    if len(rare):
        listed = ", ".join(f"{k!r} ({v} rows)" for k, v in rare.items())
        if labels.rare_classes == "error":
            out.append(Anomaly(spec.label, "rare_class",
                               f"class(es) with fewer than {labels.min_class_rows} rows: {listed}; too few to split, "
                               f"train and evaluate; set labels.rare_classes: merge (into {labels.merged_class!r}) or "
                               "drop, or fix the data", True))
        else:
            verb = f"merged into {labels.merged_class!r}" if labels.rare_classes == "merge" else "dropped"
            out.append(Anomaly(spec.label, "rare_class", f"rare class(es) {verb}: {listed}", False))
            left = len(counts) - len(rare) + (1 if labels.rare_classes == "merge" else 0)
            if left < 2:
                out.append(Anomaly(spec.label, "constant_label", f"after the rare classes are {verb}, fewer than "
                                                                  "two classes are left", True))
    ratio = counts.iloc[0] / counts.iloc[-1]
    if ratio >= 4:
        out.append(Anomaly(spec.label, "imbalanced", f"classes are imbalanced: {counts.index[0]!r} has "
                                                      f"{ratio:.1f}x the rows of {counts.index[-1]!r}", False))
    return out


def compare_with_reference(schema: dict[str, Any], reference: dict[str, Any]) -> list[Anomaly]:
    """Differences between this data's schema and the champion's that a model trained on one meets on the other."""
    out: list[Anomaly] = []
    cur, ref = schema["columns"], reference["columns"]

    def endpoint_type(kind: str) -> str:  # what a client sends: a float, a string, or nothing (not a feature)
        return kind if kind in ("label", NUMERIC) else "excluded" if kind in EXCLUDED_KINDS else "string"

    for col, r in ref.items():
        if r.get("excluded"):
            continue  # the champion did not use it: nothing to compare
        c = cur.get(col)
        if c is None:
            out.append(Anomaly(col, "missing_column", "column of the reference schema is missing", True))
            continue
        if c["kind"] != r["kind"]:
            was, now = endpoint_type(r["kind"]), endpoint_type(c["kind"])
            if now == "excluded":
                out.append(Anomaly(col, "no_longer_a_feature", f"was {r['kind']}, now {c.get('excluded')}", False))
            else:
                # numbers <-> strings change what the model takes; a string column changing kind does not
                out.append(Anomaly(col, "dtype_change", f"was {r['kind']} ({r['dtype']}), now {c['kind']} "
                                                        f"({c['dtype']})", was != now))
            continue
        if r.get("domain") is not None and c.get("domain") is not None:
            unseen = sorted(set(c["domain"]) - set(r["domain"]))
            if unseen:
                out.append(Anomaly(col, "unseen_categories", f"values not in the reference domain: {unseen[:10]}", False))
        jump = c["null_rate"] - r["null_rate"]
        if jump > NULL_RATE_WARN:
            out.append(Anomaly(col, "null_rate_jump", f"null rate rose from {r['null_rate']:.1%} to {c['null_rate']:.1%}",
                               jump > NULL_RATE_BLOCK))
    for col in sorted(c for c in set(cur) - set(ref) if not cur[c].get("excluded")):
        out.append(Anomaly(col, "extra_column", "column is not in the reference schema", False))
    return out


def _resolved(df: "pd.DataFrame", label: str, task: str | None, features: FeaturesConfig,
              not_features: tuple[str, ...], source: str) -> FeatureSpec:
    from pipeline.features import FeatureError, column_key, resolve_features

    if column_key(label) not in df.columns:
        raise ValidationError([Anomaly(label, "missing_column", "label column not found", True)], source)
    try:
        return resolve_features(df, label, task, kinds=features.kinds, not_features=not_features, options=features)
    except FeatureError as exc:
        raise ValidationError([Anomaly(e.column, e.problem, str(e).removeprefix(f"column {e.column!r}: "), True)
                               for e in exc.errors], source) from exc


def _checked(spec: FeatureSpec, profiles: dict[str, ColumnProfile], label: LabelProfile, sample: "pd.DataFrame",
             labels: LabelsConfig, reference: dict[str, Any] | None, source: str) -> ValidationResult:
    """The anomalies and the schema of profiled data; raises ValidationError on a blocking anomaly."""
    anomalies: list[Anomaly] = []
    for col, why in spec.excluded.items():
        if not why.startswith("exclude"):
            anomalies.append(Anomaly(col, why.split(":")[0], f"not used as a feature: {why}", False))
    anomalies += label_anomalies(label, spec, labels)
    if any(a.blocking for a in anomalies):
        raise ValidationError(anomalies, source)
    schema = schema_from_profiles(profiles, spec, sample)
    if reference is not None:
        anomalies += compare_with_reference(schema, reference)
    result = ValidationResult(schema, anomalies)
    if result.blocking:
        raise ValidationError(anomalies, source)
    return result


def validate(df: "pd.DataFrame", label: str, task: str | None, features: FeaturesConfig = FeaturesConfig(),
             labels: LabelsConfig = LabelsConfig(), not_features: tuple[str, ...] = (),
             reference: dict[str, Any] | None = None, source: str = "") -> ValidationResult:
    """Resolve the feature contract (kinds inferred or pinned), check the data and the label, and compare with a
    reference schema if there is one. Excluded columns (identifiers, constants) are reported as warnings.

    Raises:
        ValidationError: with every blocking anomaly, each naming its column.
    """
    spec = _resolved(df, label, task, features, not_features, source)
    profiles, label_profile = profile_columns([df], spec)
    return _checked(spec, profiles, label_profile, df, labels, reference, source)


def validate_parquet(snapshot: str | Path, label: str, task: str | None, features: FeaturesConfig = FeaturesConfig(),
                     labels: LabelsConfig = LabelsConfig(), not_features: tuple[str, ...] = (),
                     reference: dict[str, Any] | None = None, source: str = "",
                     batch_rows: int = 65_536) -> ValidationResult:
    """:func:`validate` of a Parquet snapshot in bounded memory. The feature kinds are inferred on a uniform
    sample of ``features.fit_sample_rows`` rows (a column's kind shows in a few hundred thousand of its values:
    its share of numbers, of distinct values, its date format) and the numeric quantiles come from that sample;
    every count and statistic of the schema and of the label's checks (nulls, domains, distinct values, min,
    max, mean, spread, classes) is computed over every row in one streamed pass of record batches. A snapshot
    of at most ``fit_sample_rows`` rows gives what :func:`validate` gives on its frame."""
    from pipeline.datasets import as_whole_read, iter_frames, sample_frame, whole_read_dtypes

    sample = sample_frame(snapshot, features.fit_sample_rows, seed=0)
    spec = _resolved(sample, label, task, features, not_features, source or str(snapshot))
    dtypes = whole_read_dtypes(snapshot)
    columns = [*spec.names, spec.label, *spec.excluded]
    frames = (as_whole_read(frame, dtypes) for frame in iter_frames(snapshot, columns, batch_rows))
    profiles, label_profile = profile_columns(frames, spec)
    return _checked(spec, profiles, label_profile, sample, labels, reference, source)


def feature_table(schema: dict[str, Any]) -> str:
    """The schema's columns as a markdown table (for the validate stage's MLflow run)."""
    lines = ["| column | kind | dtype | missing | distinct | why |", "|---|---|---|---:|---:|---|"]
    for col, c in schema["columns"].items():
        why = c.get("excluded") or c.get("why") or ("pinned in the config" if c.get("pinned") else "")
        distinct = c.get("distinct", "")
        lines.append(f"| {col} | {c['kind']} | {c['dtype']} | {c['null_rate']:.1%} | {distinct} | {why} |")
    return "\n".join(lines) + "\n"


def load_schema(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
