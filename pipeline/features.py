"""The feature contract: which columns are features, of which type, and how they are named in the model.

Column names become the input names of the exported serving signature, and TensorFlow only accepts
``[A-Za-z0-9.][A-Za-z0-9_.-]*`` there, so every column is given a *key*: the name with other characters
replaced by ``_``. Keys are what the snapshot, the schema and the endpoint use.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # pandas is imported lazily: DAG files import this package
    import pandas as pd

NUMERIC = "numeric"
CATEGORICAL = "categorical"
# A numeric column with at most this many distinct integer values is still treated as numeric; strings,
# booleans and categoricals are categorical. Integer codes that mean categories must be declared in the config.
MAX_CATEGORIES = 1000


def column_key(name: str) -> str:
    """The model-facing key of a column: ``"Body Mass (g)"`` -> ``"Body_Mass_g_"``."""
    key = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name).strip())
    if not key or not re.match(r"[A-Za-z0-9.]", key[0]):
        key = "f" + key
    return key


def key_columns(columns: Iterable[str]) -> dict[str, str]:
    """Map original column names to keys; two columns that collide on their key are an error."""
    mapping: dict[str, str] = {}
    seen: dict[str, str] = {}
    for col in columns:
        key = column_key(col)
        if key in seen:
            raise ValueError(f"columns {seen[key]!r} and {col!r} both become {key!r} as model input names; rename one")
        seen[key] = col
        mapping[col] = key
    return mapping


@dataclass(frozen=True)
class FeatureSpec:
    """The resolved feature contract of one model: feature keys by type, the label key and the task."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    label: str
    task: str

    @property
    def names(self) -> tuple[str, ...]:
        return self.numeric + self.categorical

    def to_dict(self) -> dict:
        return {"numeric": list(self.numeric), "categorical": list(self.categorical), "label": self.label, "task": self.task}

    @classmethod
    def from_dict(cls, raw: dict) -> "FeatureSpec":
        return cls(tuple(raw["numeric"]), tuple(raw["categorical"]), raw["label"], raw["task"])


def infer_task(label: "pd.Series") -> str:
    """Classification for strings, booleans and integers with few distinct values; regression otherwise."""
    import pandas as pd

    values = label.dropna()
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return "classification"
    if pd.api.types.is_integer_dtype(values) or (values == values.round()).all():
        return "classification" if values.nunique() <= 20 else "regression"
    return "regression"


def infer_feature_type(series: "pd.Series") -> str:
    import pandas as pd

    if pd.api.types.is_bool_dtype(series):
        return CATEGORICAL
    if pd.api.types.is_numeric_dtype(series):
        return NUMERIC
    return CATEGORICAL


def resolve_features(df: "pd.DataFrame", label: str, task: str | None, numeric: Iterable[str] = (),
                     categorical: Iterable[str] = (), exclude: Iterable[str] = ()) -> FeatureSpec:
    """Decide the feature contract from the data and whatever the config pinned.

    Columns named in ``numeric``/``categorical`` keep that type; the others (not the label, not excluded)
    are typed from their dtype. Names may be given as original column names or as keys.
    """
    numeric = [column_key(c) for c in numeric]
    categorical = [column_key(c) for c in categorical]
    exclude = {column_key(c) for c in exclude}
    label = column_key(label)
    missing = [c for c in numeric + categorical if c not in df.columns]
    if missing:
        raise ValueError(f"configured feature column(s) not in the data: {', '.join(missing)}")
    pinned = set(numeric) | set(categorical)
    for col in df.columns:
        if col == label or col in exclude or col in pinned:
            continue
        (numeric if infer_feature_type(df[col]) == NUMERIC else categorical).append(col)
    if not numeric and not categorical:
        raise ValueError(f"no feature columns left besides the label {label!r}")
    return FeatureSpec(tuple(numeric), tuple(categorical), label, task or infer_task(df[label]))
