"""The feature contract: which columns are features, of which kind, and how they are named in the model.

Column names become the input names of the exported serving signature, and TensorFlow only accepts
``[A-Za-z0-9.][A-Za-z0-9_.-]*`` there, so every column is given a *key*: the name with other characters
replaced by ``_``. Keys are what the snapshot, the schema and the endpoint use.

Every column of a table is given a *kind* (:data:`KINDS`), inferred from its values unless the config pins it:

==================  ====================================================  ==========================
kind                what the column holds                                 the endpoint takes
==================  ====================================================  ==========================
numeric             numbers (missing values allowed)                      float32
boolean             true/false, yes/no, 1/0 (as bool or strings)          string
categorical         a few distinct values (vocabulary + an OOV slot)      string
high_cardinality    many distinct values (top-K vocabulary + hashing)     string
text                free text (words, spaces, many distinct values)       string
datetime            dates or timestamps (``YYYY-MM-DD[ HH:MM[:SS]]``,     string
                    ``MM/DD/YYYY``; a datetime dtype)
image               encoded image files (PNG, JPEG, GIF, BMP, WebP        string (bytes; REST clients
                    bytes), decoded and resized inside the model          send ``{"b64": ...}``)
identifier          unique per row (ids, uuids, row numbers): excluded    -
constant            a single value: excluded                              -
exclude             excluded by the config                                -
==================  ====================================================  ==========================

The excluded kinds are recorded in the schema with the reason, so the validate stage's report says why a column
is not a feature. The split's key and time columns are never features unless the config names them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from pipeline.config import FeaturesConfig

if TYPE_CHECKING:  # pandas is imported lazily: DAG files import this package
    import pandas as pd

NUMERIC = "numeric"
BOOLEAN = "boolean"
CATEGORICAL = "categorical"
HIGH_CARDINALITY = "high_cardinality"
TEXT = "text"
DATETIME = "datetime"
IMAGE = "image"
IDENTIFIER = "identifier"
CONSTANT = "constant"
EXCLUDE = "exclude"

FEATURE_KINDS = (NUMERIC, BOOLEAN, CATEGORICAL, HIGH_CARDINALITY, TEXT, DATETIME, IMAGE)
EXCLUDED_KINDS = (IDENTIFIER, CONSTANT, EXCLUDE)
KINDS = FEATURE_KINDS + EXCLUDED_KINDS
# Kinds a user may pin in the config (identifier/constant are findings, not choices: pin `exclude`).
PINNABLE_KINDS = FEATURE_KINDS + (EXCLUDE,)

TRUE_STRINGS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_STRINGS = frozenset({"false", "f", "no", "n", "0"})
# Values that mean "missing" in a column of numbers (pandas already reads "", NA, N/A, null, NaN as missing).
MISSING_TOKENS = frozenset({"?", "-", "--", ".", "unknown", "missing", "none", "na", "n.a.", "#n/a", "nil", "null"})

# Dates the exported model parses itself (in TensorFlow ops), so the endpoint takes the raw string. The groups are
# year, month, day, then optional hour, minute, second; fractional seconds and a time zone suffix are accepted and
# ignored (the wall-clock time is what the model sees).
_TIME = r"(?:[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?"
DATE_FORMATS = {
    "ymd": r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})" + _TIME,   # ISO 8601 and 2024/01/31
    "mdy": r"(\d{1,2})/(\d{1,2})/(\d{4})" + _TIME,          # US: 01/31/2024
}
DATE_FORMAT_NAMES = {"ymd": "YYYY-MM-DD[ HH:MM[:SS]]", "mdy": "MM/DD/YYYY[ HH:MM[:SS]]"}


# Share of non-null values that must follow one date format for a string column to be dates.
DATE_SHARE = 0.98


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


class FeatureError(ValueError):
    """A column cannot be used as configured or inferred; ``column`` names it."""

    def __init__(self, column: str, problem: str, message: str, others: list["FeatureError"] | None = None):
        self.column, self.problem = column, problem
        self.errors = [self, *(others or [])]  # every unusable column of one resolve, this one first
        super().__init__(message)


@dataclass(frozen=True)
class FeatureSpec:
    """The resolved feature contract of one model.

    ``numeric`` are the float32 inputs of the endpoint, ``categorical`` every string input (of kinds boolean,
    categorical, high_cardinality, text and datetime); ``kinds`` gives each feature's kind and ``details`` what the
    inference found (a date column's format, a column's cardinality), ``excluded`` the columns left out and why.
    """

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    label: str
    task: str
    kinds: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    excluded: Mapping[str, str] = field(default_factory=dict)   # column -> why (kind: reason)

    @property
    def names(self) -> tuple[str, ...]:
        return self.numeric + self.categorical

    def kind(self, key: str) -> str:
        return self.kinds.get(key) or (NUMERIC if key in self.numeric else CATEGORICAL)

    def to_dict(self) -> dict:
        return {"numeric": list(self.numeric), "categorical": list(self.categorical), "label": self.label,
                "task": self.task, "kinds": {k: self.kind(k) for k in self.names},
                "details": {k: dict(v) for k, v in self.details.items()}, "excluded": dict(self.excluded)}

    @classmethod
    def from_dict(cls, raw: Mapping) -> "FeatureSpec":
        return cls(tuple(raw["numeric"]), tuple(raw["categorical"]), raw["label"], raw["task"],
                   dict(raw.get("kinds") or {}), {k: dict(v) for k, v in (raw.get("details") or {}).items()},
                   dict(raw.get("excluded") or {}))


def infer_task(label: "pd.Series") -> str:
    """Classification for strings, booleans and integers with few distinct values; regression otherwise."""
    import pandas as pd

    values = label.dropna()
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return "classification"
    if pd.api.types.is_integer_dtype(values) or (values == values.round()).all():
        return "classification" if values.nunique() <= 20 else "regression"
    return "regression"


def _is_stringish(s: "pd.Series") -> bool:
    import pandas as pd

    return not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)
                or pd.api.types.is_datetime64_any_dtype(s))


def numeric_share(values: "pd.Series") -> tuple[float, "pd.Series"]:
    """Share of non-null string values that parse as numbers, and the values that do not."""
    import pandas as pd

    parsed = pd.to_numeric(values, errors="coerce")
    bad = values[parsed.isna()]
    return (1 - len(bad) / len(values)) if len(values) else 0.0, bad


def date_format(values: "pd.Series", share: float = DATE_SHARE) -> tuple[str | None, dict]:
    """The one :data:`DATE_FORMATS` entry that ``values`` (non-null strings) follow, or None; with what was found
    (each format's share, whether times occur) so a column of mixed formats can be named as such."""
    sample = values.astype(str).str.strip()
    shares = {name: float(sample.str.fullmatch(rx).mean()) for name, rx in DATE_FORMATS.items()}
    found = {"shares": shares}
    best = max(shares, key=shares.get)
    if shares[best] >= share:
        found["has_time"] = bool(sample.str.contains(r"\d[T ]\d{1,2}:\d{2}", regex=True).any())
        return best, found
    return None, found


def looks_like_dates(values: "pd.Series") -> bool:
    """Most values look like dates in some format (pandas parses them), whichever formats they mix."""
    import warnings

    import pandas as pd

    sample = values.astype(str).head(2000)
    if not sample.str.contains(r"\d", regex=True).all() or not sample.str.contains(r"\d[-/.: ]\w", regex=True).mean() > 0.9:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return bool(parsed.notna().mean() >= 0.9)


# The first bytes of the encodings tf.io.decode_image reads (WebP: "RIFF....WEBP", checked at offset 8).
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def is_encoded_image(value: Any) -> bool:
    """``value`` is the bytes of an image file in one of the formats the model decodes."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        return False
    head = bytes(value[:12])
    return head.startswith(IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def is_bytes_column(s: "pd.Series") -> bool:
    """``s`` holds binary values (an image column: its files' bytes), judged by its first present value."""
    present = s.dropna()
    return bool(len(present)) and isinstance(present.iloc[0], (bytes, bytearray))


def _is_bytes(values: "pd.Series") -> bool:
    return bool(len(values)) and bool(values.head(200).map(lambda v: isinstance(v, (bytes, bytearray))).all())


_ID_NAME = re.compile(r"(^|[_\-. ])(id|uuid|guid|key|index|idx|row|rownum|row_number)s?$|^unnamed", re.IGNORECASE)


def infer_kind(name: str, s: "pd.Series", opts: FeaturesConfig = FeaturesConfig()) -> tuple[str, dict, str]:
    """The kind of one column from its values: ``(kind, details, why)``.

    ``details`` records what downstream stages need (a date format, the cardinality); ``why`` is a short reason
    shown in the schema and the anomaly report.

    Raises:
        FeatureError: the column cannot be used at all (all missing, mixed date formats).
    """
    import pandas as pd

    values = s.dropna()
    if _is_bytes(values):  # binary: images, or bytes the model cannot read
        sample = values.head(2000)
        share = float(sample.map(is_encoded_image).mean())
        if share >= 0.99:
            return IMAGE, {"distinct": None}, "encoded images (PNG/JPEG/GIF/BMP/WebP bytes)"
        raise FeatureError(name, "binary", f"column {name!r}: binary values that are not encoded images "
                                           f"({1 - share:.0%} of {len(sample)} checked are not PNG/JPEG/GIF/BMP/"
                                           f"WebP); exclude it (features: {{{name}: exclude}}) or fix the data")
    if _is_stringish(s):
        values = values.astype(str)
        values = values[values.str.strip() != ""]
    n, distinct = len(values), int(values.nunique())
    details: dict[str, Any] = {"distinct": distinct}
    if n == 0:
        raise FeatureError(name, "all_missing", f"column {name!r}: all values are missing or empty; "
                                                f"exclude it (features: {{{name}: exclude}}) or fix the data")
    if distinct <= 1 and n == len(s):
        return CONSTANT, details, f"a single value ({values.iloc[0]!r}) in every row"
    if pd.api.types.is_bool_dtype(s):
        return BOOLEAN, details, "boolean dtype"
    if pd.api.types.is_datetime64_any_dtype(s):
        return DATETIME, {**details, "format": "ymd", "has_time": True, "dtype": True}, "datetime dtype"
    if pd.api.types.is_numeric_dtype(s):
        if (pd.api.types.is_integer_dtype(s) or (values == values.round()).all()) and distinct == n and n >= 20:
            v = values.sort_values().to_numpy()
            consecutive = bool((v[1:] - v[:-1] == 1).all()) if len(v) > 1 else False
            if consecutive or _ID_NAME.search(str(name)):
                return IDENTIFIER, details, "integers unique per row" + (" (a row number)" if consecutive else "")
        return NUMERIC, details, "numbers"
    lowered = values.str.strip().str.lower()
    if distinct <= 2 and set(lowered.unique()) <= (TRUE_STRINGS | FALSE_STRINGS):
        return BOOLEAN, details, "true/false values"
    fmt, found = date_format(values)
    if fmt is not None:
        return DATETIME, {**details, "format": fmt, "has_time": found["has_time"]}, \
            f"dates ({DATE_FORMAT_NAMES[fmt]})"
    share, bad = numeric_share(values)
    if share >= 0.9:
        bad_lower = set(bad.str.strip().str.lower().unique())
        if bad_lower <= MISSING_TOKENS:
            return NUMERIC, {**details, "missing_tokens": sorted(bad.unique().tolist())[:10]}, \
                "numbers, with missing-value markers"
        if bad.str.fullmatch(r"[0-9][0-9\- /.]*[0-9]").all() or values.str.match(r"0\d").any():
            kind = HIGH_CARDINALITY if distinct > opts.max_vocabulary else CATEGORICAL
            return kind, details, f"a code: digits with separators or leading zeros (e.g. {bad.iloc[0]!r}) " \
                                  f"among numbers, {distinct} distinct values"
        raise FeatureError(name, "text_in_numeric",
                           f"column {name!r}: numeric column has text: {len(bad)} of {n} values are not numbers, "
                           f"e.g. {[str(v) for v in bad.unique()[:3]]}; fix the data or pin the column as "
                           f"categorical in the config")
    if looks_like_dates(values):
        shares = ", ".join(f"{DATE_FORMAT_NAMES[k]} {v:.0%}" for k, v in found["shares"].items())
        examples = [str(v) for v in values.drop_duplicates().head(200).sample(frac=1, random_state=0).head(4)]
        raise FeatureError(name, "mixed_date_formats",
                           f"column {name!r}: dates in mixed or unsupported formats (e.g. {examples}; {shares}); "
                           f"the model parses one of {', '.join(DATE_FORMAT_NAMES.values())}: write the column in "
                           f"one of them, or pin it as categorical/text/exclude in the config")
    words = float(values.head(20000).str.split().str.len().mean())
    ratio = distinct / n
    details["mean_words"] = round(words, 2)
    if words >= opts.text_min_words and distinct >= min(50, max(10, n // 5)):
        return TEXT, details, f"free text ({words:.1f} words per value, {distinct} distinct)"
    if words >= 1.5 and ratio >= 0.3 and distinct >= 20:
        # Names of things ("chevrolet chevelle malibu"): most whole values are too rare to learn from, but their
        # words recur across values, so the words are the features.
        return TEXT, details, f"many-valued names ({words:.1f} words per value, {distinct} distinct of {n}): " \
                              "read as words"
    if ratio >= opts.id_unique_ratio and n >= 20:
        return IDENTIFIER, details, f"unique per row ({distinct} distinct of {n})"
    if distinct > opts.max_vocabulary:
        return HIGH_CARDINALITY, details, f"{distinct} distinct values (more than {opts.max_vocabulary})"
    return CATEGORICAL, details, f"{distinct} distinct values"


def resolve_features(df: "pd.DataFrame", label: str, task: str | None, numeric: Iterable[str] = (),
                     categorical: Iterable[str] = (), exclude: Iterable[str] = (),
                     kinds: Mapping[str, str] | None = None, not_features: Iterable[str] = (),
                     options: FeaturesConfig = FeaturesConfig()) -> FeatureSpec:
    """Decide the feature contract from the data and whatever the config pinned.

    Columns named in ``numeric``/``categorical``/``exclude`` or in ``kinds`` (column -> kind) keep that kind; the
    others (not the label) are inferred by :func:`infer_kind`. ``not_features`` (the split's key and time columns)
    are left out unless pinned. Names may be given as original column names or as keys.

    Raises:
        FeatureError: a pinned column is not in the data, or columns cannot be used (all of them in its
            ``errors``), or no feature is left.
    """
    pinned: dict[str, str] = {}
    for kind, cols in ((NUMERIC, numeric), (CATEGORICAL, categorical), (EXCLUDE, exclude)):
        pinned.update({column_key(c): kind for c in cols})
    pinned.update({column_key(c): k for c, k in (kinds or {}).items()})
    label = column_key(label)
    missing = [c for c in pinned if c not in df.columns]
    if missing:
        raise FeatureError(missing[0], "missing_column",
                           f"configured feature column(s) not in the data: {', '.join(missing)}")
    skipped = {column_key(c) for c in not_features if c} - set(pinned)
    kinds_out: dict[str, str] = {}
    details: dict[str, dict] = {}
    excluded: dict[str, str] = {}
    errors: list[FeatureError] = []
    for col in df.columns:
        if col == label:
            continue
        if col in skipped:
            excluded[col] = f"{EXCLUDE}: the split's key/time column (name it in features to use it)"
            continue
        try:
            if col in pinned:
                kind, info = pinned[col], {"pinned": True}
                if kind == EXCLUDE:
                    excluded[col] = f"{EXCLUDE}: by the config"
                    continue
                if kind == DATETIME:
                    info.update(_pinned_date(col, df[col]))
                s = df[col]
                if s.isna().all() or (_is_stringish(s) and (s.dropna().astype(str).str.strip() == "").all()):
                    raise FeatureError(col, "all_missing", f"column {col!r}: all values are missing or empty")
            else:
                kind, info, why = infer_kind(col, df[col], options)
                info["why"] = why
                if kind in EXCLUDED_KINDS:
                    excluded[col] = f"{kind}: {why}"
                    continue
        except FeatureError as exc:  # go on: every unusable column is reported at once
            errors.append(exc)
            continue
        kinds_out[col] = kind
        details[col] = info
    if errors:
        raise FeatureError(errors[0].column, errors[0].problem, str(errors[0]), errors[1:])
    if not kinds_out:
        why = "; ".join(f"{c} ({r})" for c, r in excluded.items()) or "the table has no other column"
        raise FeatureError("*", "no_features", f"no feature columns left besides the label {label!r}: {why}")
    numeric_keys = tuple(c for c, k in kinds_out.items() if k == NUMERIC)
    string_keys = tuple(c for c, k in kinds_out.items() if k != NUMERIC)
    return FeatureSpec(numeric_keys, string_keys, label, task or infer_task(df[label]), kinds_out, details, excluded)


def _pinned_date(col: str, s: "pd.Series") -> dict:
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(s):
        return {"format": "ymd", "has_time": True, "dtype": True}
    fmt, found = date_format(s.dropna().astype(str))
    if fmt is None:
        raise FeatureError(col, "mixed_date_formats",
                           f"column {col!r} is configured as datetime but its values are not in one supported format "
                           f"({', '.join(f'{DATE_FORMAT_NAMES[k]} {v:.0%}' for k, v in found['shares'].items())})")
    return {"format": fmt, "has_time": found["has_time"]}
