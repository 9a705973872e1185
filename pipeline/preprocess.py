"""Preprocess: fit each feature's encoding on the training split only; the encodings run as Keras layers.

The *preprocessor* is a Keras model from the raw features (one rank-1 input per feature key: float32 for numeric
columns, string for every other kind) to the numeric tensors the trained model sees:

- ``numeric``: one float matrix, concatenating per column (numeric columns first, then booleans, then dates)
  numeric -> quantile in the training split mapped to a normal value, and the value standardized (clipped to
  +-5) (+ a missing indicator if it had gaps);
  boolean -> 1/0/0.5 (+ missing indicator); datetime -> elapsed time, year, and month / day / weekday / hour
  as points on a circle (+ missing indicator) (:mod:`pipeline.encoders`);
- ``cat__<key>``: the integer id of a categorical value: the training split's vocabulary by frequency
  (values seen at least ``min_frequency`` times, at most ``max_vocabulary``), missing as its own value, and
  out-of-vocabulary values hashed into ``hash_buckets`` slots (one slot for low-cardinality columns); also, for
  a numeric column with at most ``value_ids`` distinct values (codes, counts, levels), the id of its value
  (``ValueIds``), so the model can single out each value as a tree does besides reading the number;
- ``text__<key>``: TF-IDF of words and word bigrams (vocabulary and IDF from the training split, terms as
  ``TextVectorization`` makes them), L2-normalised (:class:`pipeline.encoders` ``TfIdf``);
- ``tokens__<key>`` (with ``features.text_sequence_length``: N): the ids of a text column's first N words (0:
  padding, 1: a word out of the training split's vocabulary), for sequence builders;
- ``image__<key>``: an image column decoded and resized to ``(height, width, channels)`` uint8 pixels
  (:class:`pipeline.encoders` ``DecodeImage``); rescaling and augmentation belong to the model, augmentation
  active only in training (``models.image``).

During training the preprocessor runs in the ``tf.data`` pipeline on the host (Keras' advice for TPUs, and faster
on CPUs) and the model being fitted sees only these tensors; the exported SavedModel chains the same
preprocessor in front of the trained model, so the endpoint takes raw values by column name and the two paths
cannot drift apart. Everything the preprocessor needs is in :class:`PreprocessMeta` (``meta.json``): it is
rebuilt from there, never adapted twice.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import FeaturesConfig
from pipeline.features import (BOOLEAN, CATEGORICAL, DATETIME, HIGH_CARDINALITY, IMAGE, NUMERIC, TEXT, FeatureSpec,
                               is_bytes_column)

if TYPE_CHECKING:
    import keras
    import numpy as np
    import pandas as pd
    import tensorflow as tf

MISSING_CATEGORY = ""  # what a missing string value is fed as, in training and at the endpoint
NUMERIC_INPUT = "numeric"
N_QUANTILES = 1000


@dataclass(frozen=True)
class ModelSpec:
    """What a model builder is given besides its input tensors: the processed inputs and the task.

    ``numeric_width`` is the width of the ``numeric`` input (0: absent); ``categorical`` maps each ``cat__<key>``
    input to its number of ids (embedding rows); ``text`` maps each ``text__<key>`` input to its width;
    ``tokens`` each ``tokens__<key>`` input to ``(ids, length)`` (ids counts padding and out-of-vocabulary);
    ``images`` each ``image__<key>`` input to its ``(height, width, channels)``.
    """

    task: str
    n_outputs: int
    numeric_width: int
    categorical: dict[str, int]
    text: dict[str, int]
    kinds: dict[str, str]
    rows: int
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)
    images: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def inputs(self) -> dict[str, "keras.KerasTensor"]:
        """Fresh ``keras.Input`` tensors of the processed features, named as the preprocessor outputs them."""
        import keras

        out = {}
        if self.numeric_width:
            out[NUMERIC_INPUT] = keras.Input(shape=(self.numeric_width,), name=NUMERIC_INPUT, dtype="float32")
        out.update({k: keras.Input(shape=(), name=k, dtype="int64") for k in self.categorical})
        out.update({k: keras.Input(shape=(w,), name=k, dtype="float32") for k, w in self.text.items()})
        out.update({k: keras.Input(shape=(n,), name=k, dtype="int64") for k, (_, n) in self.tokens.items()})
        out.update({k: keras.Input(shape=tuple(s), name=k, dtype="uint8") for k, s in self.images.items()})
        return out


@dataclass(frozen=True)
class PreprocessMeta:
    """What training and export need besides the trained model: the fitted encodings and the label's."""

    spec: dict
    class_names: list[str]          # classification: label values in output order; regression: []
    label_mean: float = 0.0         # regression: the model predicts a standardized value, rescaled by these
    label_std: float = 1.0
    numeric: dict = field(default_factory=dict)      # key -> QuantileNormal params
    boolean: dict = field(default_factory=dict)      # key -> {"indicator"}
    categorical: dict = field(default_factory=dict)  # key -> {"vocabulary", "oov"}
    text: dict = field(default_factory=dict)         # key -> {"vocabulary", "idf", "ngrams"}
    datetime: dict = field(default_factory=dict)     # key -> DateParts params
    value_ids: dict = field(default_factory=dict)    # numeric key -> ValueIds params (columns of few values)
    class_counts: dict = field(default_factory=dict)  # classification: training rows per class
    rows: int = 0                                    # training rows
    tokens: dict = field(default_factory=dict)       # text key -> {"vocabulary", "length"} (sequence builders)
    image: dict = field(default_factory=dict)        # key -> DecodeImage params (height, width, channels)

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.spec)

    def model_spec(self) -> ModelSpec:
        from pipeline.encoders import date_width, numeric_width

        width = sum(numeric_width(p["indicator"]) for p in self.numeric.values())
        width += sum(2 if p["indicator"] else 1 for p in self.boolean.values())
        width += sum(date_width(p["has_time"]) for p in self.datetime.values())
        spec = self.feature_spec
        return ModelSpec(spec.task, len(self.class_names) if spec.task == "classification" else 1, width,
                         {**{f"cat__{k}": len(p["vocabulary"]) + p["oov"] for k, p in self.categorical.items()},
                          **{f"cat__{k}": len(p["boundaries"]) + 2 for k, p in self.value_ids.items()}},
                         {f"text__{k}": len(p["vocabulary"]) for k, p in self.text.items()},
                         {k: spec.kind(k) for k in spec.names}, self.rows,
                         {f"tokens__{k}": (len(p["vocabulary"]) + 2, p["length"]) for k, p in self.tokens.items()},
                         {f"image__{k}": (p["height"], p["width"], p["channels"]) for k, p in self.image.items()})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> "PreprocessMeta":
        return cls(**json.loads(Path(path).read_text()))

    def summary(self) -> dict[str, Any]:
        """Per feature, how it is encoded (for MLflow): kind, width or vocabulary size."""
        out: dict[str, Any] = {}
        spec = self.feature_spec
        for k, p in self.numeric.items():
            out[k] = {"kind": NUMERIC, "median": p["fill"], "missing_indicator": p["indicator"]}
            if k in self.value_ids:
                out[k]["value_ids"] = len(self.value_ids[k]["boundaries"]) + 1
        for k, p in self.boolean.items():
            out[k] = {"kind": BOOLEAN, "missing_indicator": p["indicator"]}
        for k, p in self.categorical.items():
            out[k] = {"kind": spec.kind(k), "vocabulary": len(p["vocabulary"]), "oov_slots": p["oov"],
                      "top": p["vocabulary"][:10]}
        for k, p in self.text.items():
            out[k] = {"kind": TEXT, "vocabulary": len(p["vocabulary"]), "top": p["vocabulary"][1:11]}
        for k, p in self.datetime.items():
            out[k] = {"kind": DATETIME, "format": p["fmt"], "has_time": p["has_time"]}
        for k, p in self.tokens.items():
            out[k]["sequence"] = {"vocabulary": len(p["vocabulary"]), "length": p["length"]}
        for k, p in self.image.items():
            out[k] = {"kind": IMAGE, **p}
        return out


def string_values(s: "pd.Series") -> "np.ndarray":
    """A column as the endpoint's string inputs take it: '' for missing; dates as ``YYYY-MM-DD HH:MM:SS``,
    booleans as ``true``/``false``, integral floats without ``.0`` (a code read as 12345.0 is sent as 12345)."""
    import numpy as np
    import pandas as pd

    missing = s.isna().to_numpy()
    if s.dtype == object and is_bytes_column(s):
        return image_bytes(s)  # an image column: its files' bytes, as they are
    if pd.api.types.is_datetime64_any_dtype(s):
        text = s.dt.strftime("%Y-%m-%d %H:%M:%S")
    elif pd.api.types.is_bool_dtype(s) or (s.dtype == object and s.notna().any()
                                           and s.dropna().map(lambda v: isinstance(v, (bool, np.bool_))).all()):
        text = s.map({True: "true", False: "false"})
    elif pd.api.types.is_float_dtype(s):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        integral = np.isfinite(v) & (v == np.round(v))
        text = pd.Series(np.where(integral, np.nan_to_num(v).astype(np.int64).astype(str), v.astype(str)), index=s.index)
    else:
        text = s.astype(str)
    return np.where(missing, MISSING_CATEGORY, text.to_numpy(dtype=object)).astype(str)


def feature_arrays(df: "pd.DataFrame", spec: FeatureSpec) -> dict[str, "np.ndarray"]:
    """Raw feature columns as the model's inputs take them: float32 (NaN = missing) and str ('' = missing)."""
    import numpy as np
    import pandas as pd

    out = {}
    for col in spec.numeric:
        out[col] = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan)
    for col in spec.categorical:
        out[col] = image_bytes(df[col]) if spec.kind(col) == IMAGE else string_values(df[col])
    return out


def image_bytes(s: "pd.Series") -> "np.ndarray":
    """An image column as the endpoint takes it: the encoded bytes of each file (b'' for a missing one, which the
    model refuses)."""
    import numpy as np

    return np.array([bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else b"" for v in s], dtype=object)


def label_array(df: "pd.DataFrame", meta: PreprocessMeta) -> "np.ndarray":
    """Class indices (classification, -1 for a class unseen in training) or float32 values (regression)."""
    import numpy as np

    spec = meta.feature_spec
    if spec.task == "classification":
        index = {name: i for i, name in enumerate(meta.class_names)}
        return np.array([index.get(v, -1) for v in label_strings(df[spec.label])], dtype=np.int64)
    return df[spec.label].to_numpy(dtype=np.float32)


def label_strings(s: "pd.Series") -> list[str]:
    """Class labels as strings, integral floats without ``.0`` (a label column with gaps is read as floats)."""
    return [str(v) for v in string_values(s)]


# -- fitting -------------------------------------------------------------------------------------------------

def _quantiles(values: "np.ndarray") -> dict:
    import numpy as np

    present = values[~np.isnan(values)]
    if present.size == 0:
        return {"values": [0.0], "probabilities": [0.5], "fill": 0.0, "indicator": True, "mean": 0.0, "std": 1.0}
    probs = np.linspace(0, 1, min(N_QUANTILES, max(2, present.size)))
    qs = np.quantile(present.astype(np.float64), probs)
    # Tied quantiles (a column of few distinct values) become one point at the middle of their probability mass.
    uniq, inverse = np.unique(qs, return_inverse=True)
    mid = np.bincount(inverse, weights=probs) / np.bincount(inverse)
    filled = np.where(np.isnan(values), np.median(present), values).astype(np.float64)
    return {"values": uniq.tolist(), "probabilities": mid.tolist(), "fill": float(np.median(present)),
            "indicator": bool(np.isnan(values).any()), "mean": float(filled.mean()), "std": float(filled.std() or 1.0)}


def _value_ids(values: "np.ndarray", opts: FeaturesConfig) -> dict | None:
    """The boundaries of :class:`ValueIds` for a numeric column of at most ``value_ids`` distinct values (at
    least 3: a 0/1 column says nothing more as ids) seen ``min_frequency`` times; None for other columns."""
    import numpy as np

    present = values[~np.isnan(values)]
    uniq, counts = np.unique(present, return_counts=True)
    if not 3 <= uniq.size <= opts.value_ids:
        return None
    kept = uniq[counts >= opts.min_frequency].astype(np.float64)
    if kept.size < 3:
        return None
    # midpoints in float64, then as the layer compares them: float32, where two may round to the same number
    boundaries = np.unique(((kept[1:] + kept[:-1]) / 2).astype(np.float32))
    return {"boundaries": [float(b) for b in boundaries]}


def _vocabulary(values: "np.ndarray", opts: FeaturesConfig, high: bool) -> dict:
    import numpy as np

    uniq, counts = np.unique(values, return_counts=True)
    order = np.lexsort((uniq, -counts))
    keep = [str(uniq[i]) for i in order if counts[i] >= opts.min_frequency or uniq[i] == MISSING_CATEGORY]
    if not keep:  # every value rare (a tiny table): keep them all rather than learn nothing
        keep = [str(uniq[i]) for i in order]
    return {"vocabulary": keep[: opts.max_vocabulary], "oov": opts.hash_buckets if high else 1}


def _text_vocabulary(values: "np.ndarray", opts: FeaturesConfig) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    docs = tf.data.Dataset.from_tensor_slices(values).batch(4096)
    counter = keras.layers.TextVectorization(max_tokens=opts.text_max_tokens, ngrams=opts.text_ngrams,
                                             output_mode="multi_hot")
    counter.adapt(docs)
    vocab = [str(v) for v in counter.get_vocabulary()]
    if len(vocab) == 1:
        # not one word in the training split (empty or punctuation only): the TF-IDF is the out-of-vocabulary
        # column alone, which no training row has (a lookup on a vocabulary of [UNK] alone fails in Keras)
        return {"vocabulary": vocab, "idf": [float(np.log1p(len(values)))], "ngrams": opts.text_ngrams}
    # IDF as Keras computes it for tf_idf: log(1 + documents / (1 + documents containing the term)).
    df = np.zeros(len(vocab))
    for batch in docs:
        df += counter(batch).numpy().sum(axis=0)
    idf = np.log1p(len(values) / (1.0 + df))
    return {"vocabulary": vocab, "idf": idf.tolist(), "ngrams": opts.text_ngrams}


def _date_stats(values: "np.ndarray", detail: dict) -> dict:
    from pipeline.encoders import layers

    probe = layers()["DateParts"](fmt=detail.get("format", "ymd"), has_time=bool(detail.get("has_time")))
    (y, m, d, hh, mm, ss), ok = probe.parts(values)
    ok = ok.numpy()
    # days since the epoch through the layer's own arithmetic: fit with elapsed_mean 0 and std 1
    elapsed = probe(values).numpy()[:, 0]
    e, years = elapsed[ok], y.numpy()[ok]
    return {"fmt": probe.fmt, "has_time": probe.has_time,
            "elapsed_mean": float(e.mean()) if e.size else 0.0, "elapsed_std": float(e.std()) if e.size else 1.0,
            "year_mean": float(years.mean()) if years.size else 2000.0,
            "year_std": float(years.std()) if years.size else 1.0}


def _image_size(values: "np.ndarray", opts: FeaturesConfig, sample: int = 2000) -> dict:
    """The size images are resized to: the configured one, else the median of the first ``sample`` training
    images' (rounded to a multiple of 8, at least 8 and at most 256), and the channels: configured, else 1 when
    the most common mode is grey, 3 otherwise (read from the files' headers; nothing is decoded)."""
    import io
    from collections import Counter

    import numpy as np
    from PIL import Image

    heights, widths, modes = [], [], Counter()
    for data in values[:sample]:
        with Image.open(io.BytesIO(data)) as img:
            widths.append(img.size[0])
            heights.append(img.size[1])
            modes[img.mode] += 1

    def rounded(v):
        return int(min(256, max(8, 8 * round(float(np.median(v)) / 8))))

    grey = bool(modes) and modes.most_common(1)[0][0] in ("1", "L", "LA", "I", "I;16", "F")
    return {"height": opts.image_height or rounded(heights), "width": opts.image_width or rounded(widths),
            "channels": opts.image_channels or (1 if grey else 3)}


def _token_vocabulary(values: "np.ndarray", opts: FeaturesConfig) -> dict:
    """The word vocabulary of a text column's ``tokens__`` ids: the ``text_max_tokens - 2`` most frequent words
    (ids 0 and 1 are padding and out-of-vocabulary: ``text_max_tokens`` ids in all)."""
    import keras

    counter = keras.layers.TextVectorization(max_tokens=opts.text_max_tokens, output_mode="int")
    counter.adapt(values)
    return {"vocabulary": [str(w) for w in counter.get_vocabulary()[2:]], "length": int(opts.text_sequence_length)}


def fit_preprocessing(train_df: "pd.DataFrame", spec: FeatureSpec,
                      opts: FeaturesConfig = FeaturesConfig()) -> PreprocessMeta:
    """Fit every feature's encoding on ``train_df`` (the training split only) and the label's."""
    import numpy as np

    arrays = feature_arrays(train_df, spec)
    numeric, boolean, categorical, text, dates, value_ids, tokens, image = {}, {}, {}, {}, {}, {}, {}, {}
    for col in spec.names:
        kind, values = spec.kind(col), arrays[col]
        if kind == NUMERIC:
            numeric[col] = _quantiles(values)
            ids = _value_ids(values, opts)  # None with value_ids: 0
            if ids:
                value_ids[col] = ids
        elif kind == BOOLEAN:
            boolean[col] = {"indicator": bool((values == MISSING_CATEGORY).any())}
        elif kind in (CATEGORICAL, HIGH_CARDINALITY):
            categorical[col] = _vocabulary(values, opts, kind == HIGH_CARDINALITY)
        elif kind == TEXT:
            text[col] = _text_vocabulary(values, opts)
            if opts.text_sequence_length:
                tokens[col] = _token_vocabulary(values, opts)
        elif kind == IMAGE:
            image[col] = _image_size(values, opts)
        elif kind == DATETIME:
            dates[col] = _date_stats(values, spec.details.get(col, {}))
        else:
            raise ValueError(f"feature {col!r}: unknown kind {kind!r}")
    if spec.task == "classification":
        labels = np.array(label_strings(train_df[spec.label].dropna()))
        names, counts = np.unique(labels, return_counts=True)
        class_names = [str(n) for n in names]
        class_counts = {str(n): int(c) for n, c in zip(names, counts)}
        label_mean, label_std = 0.0, 1.0
    else:
        y = train_df[spec.label].dropna().to_numpy(dtype=np.float64)
        class_names, class_counts, label_mean, label_std = [], {}, float(np.mean(y)), float(np.std(y) or 1.0)
    return PreprocessMeta(spec.to_dict(), class_names, label_mean, label_std, numeric, boolean, categorical, text,
                          dates, value_ids, class_counts, int(len(train_df)), tokens, image)


def fit_preprocessing_parquet(source: str | Path, spec: FeatureSpec, opts: FeaturesConfig = FeaturesConfig(),
                              seed: int = 0) -> PreprocessMeta:
    """:func:`fit_preprocessing` on a training split in Parquet, in bounded memory: the encodings (quantiles,
    medians, vocabularies, value ids, TF-IDF, date statistics) are fitted on a uniform sample of
    ``opts.fit_sample_rows`` rows (every row when there are no more, and then the result is the whole frame's);
    what must not miss a row is counted over every row, record batch by record batch: the classes and their
    counts (a class the sample missed would be no output of the model; class weights follow the counts), the
    regression label's mean and spread, and the rows. A sample rather than a streamed sketch of each encoding:
    the encodings of a few hundred thousand rows are as good as the whole split's (a quantile's error is
    about 1/sqrt(rows) of probability) and the fitting code stays the one of the frame path. Values rarer than
    ``min_frequency`` in the sample are out of vocabulary."""
    import dataclasses

    import numpy as np

    from pipeline.datasets import iter_frames, parquet_rows, sample_frame

    columns = [*spec.names, spec.label]
    meta = fit_preprocessing(sample_frame(source, opts.fit_sample_rows, seed, columns), spec, opts)
    rows = parquet_rows(source)
    if rows <= opts.fit_sample_rows:
        return meta
    counts: dict[str, int] = {}
    total, total_sq, present = 0.0, 0.0, 0
    for frame in iter_frames(source, [spec.label]):
        labels = frame[spec.label].dropna()
        if spec.task == "classification":
            for name, count in zip(*np.unique(np.array(label_strings(labels)), return_counts=True)):
                counts[str(name)] = counts.get(str(name), 0) + int(count)
        else:
            y = labels.to_numpy(dtype=np.float64)
            total, total_sq, present = total + y.sum(), total_sq + (y * y).sum(), present + y.size
    if spec.task == "classification":
        names = sorted(counts)
        return dataclasses.replace(meta, class_names=names, class_counts={n: counts[n] for n in names}, rows=rows)
    mean = total / max(present, 1)
    std = float(np.sqrt(max(total_sq / max(present, 1) - mean * mean, 0.0)))
    return dataclasses.replace(meta, label_mean=float(mean), label_std=std or 1.0, rows=rows)


# -- the preprocessor ----------------------------------------------------------------------------------------

def raw_inputs(spec: FeatureSpec) -> dict[str, "keras.KerasTensor"]:
    """One rank-1 ``keras.Input`` per raw feature: float32 for numeric columns, string for the others."""
    import keras

    inputs = {c: keras.Input(shape=(), name=c, dtype="float32") for c in spec.numeric}
    inputs.update({c: keras.Input(shape=(), name=c, dtype="string") for c in spec.categorical})
    return inputs


def _namer(taken):
    """Layer names that never collide with a column's input name (a column may be called ``value`` or
    ``x_quantile``): Keras wants every layer name of a model unique."""
    used = set(taken)

    def name(base: str) -> str:
        while base in used:
            base += "_"
        used.add(base)
        return base

    return name


def build_preprocessor(meta: PreprocessMeta) -> "keras.Model":
    """The preprocessor (raw features -> processed tensors, see the module docstring), rebuilt from ``meta``."""
    import keras

    from pipeline.encoders import NO_TERM, layers

    L = layers()
    spec = meta.feature_spec
    inputs = raw_inputs(spec)
    name = _namer(inputs)
    numeric_parts, outputs = [], {}
    # the numeric matrix: every numeric column's QuantileNormal values (one layer for all), then the booleans'
    # and the dates' columns, each in input order
    quantiled = [col for col in spec.names if col in meta.numeric]
    if quantiled:
        numeric_parts.append(L["QuantileNormals"](columns=[meta.numeric[c] for c in quantiled],
                                                  name=name("numeric_quantiles"))([inputs[c] for c in quantiled]))
    for col in spec.names:
        if col in meta.numeric:
            if col in meta.value_ids:
                outputs[f"cat__{col}"] = L["ValueIds"](**meta.value_ids[col], name=name(f"{col}_value_ids"))(inputs[col])
        elif col in meta.boolean:
            numeric_parts.append(L["BooleanValue"](**meta.boolean[col], name=name(f"{col}_bool"))(inputs[col]))
        elif col in meta.datetime:
            numeric_parts.append(L["DateParts"](**meta.datetime[col], name=name(f"{col}_date"))(inputs[col]))
        elif col in meta.categorical:
            p = meta.categorical[col]
            lookup = keras.layers.StringLookup(vocabulary=p["vocabulary"], num_oov_indices=p["oov"],
                                               output_mode="int", name=name(f"{col}_lookup"))
            outputs[f"cat__{col}"] = lookup(inputs[col])
        elif col in meta.text:
            p = meta.text[col]
            outputs[f"text__{col}"] = L["TfIdf"](vocabulary=p["vocabulary"], idf=p["idf"], ngrams=p["ngrams"],
                                                 name=name(f"{col}_tfidf"))(inputs[col])
            if col in meta.tokens:
                t = meta.tokens[col]
                # a column without words keeps ids 0 and 1 only
                ids = keras.layers.TextVectorization(vocabulary=t["vocabulary"] or [NO_TERM], output_mode="int",
                                                     output_sequence_length=t["length"], name=name(f"{col}_tokens"))
                outputs[f"tokens__{col}"] = ids(inputs[col])
        elif col in meta.image:
            outputs[f"image__{col}"] = L["DecodeImage"](**meta.image[col], name=name(f"{col}_decode"))(inputs[col])
    if numeric_parts:
        outputs[NUMERIC_INPUT] = (numeric_parts[0] if len(numeric_parts) == 1
                                  else keras.layers.Concatenate(name=name("numeric_features"))(numeric_parts))
    return keras.Model(inputs, outputs, name=name("preprocessor"))


def processed_dataset(df: "pd.DataFrame", meta: PreprocessMeta, preprocessor: "keras.Model", batch_size: int,
                      shuffle: bool = False, seed: int = 0, labels: bool = True,
                      weights: "np.ndarray | None" = None, cache_bytes: int = 512 << 20) -> "tf.data.Dataset":
    """A batched ``tf.data`` pipeline of ``(processed features, label[, weight])`` for fitting.

    The preprocessor runs on blocks of about ``pipeline.datasets.PREPROCESS_ROWS`` (4,096) raw rows in parallel
    ``map`` calls. When the processed rows fit in ``cache_bytes`` they are computed once into whole arrays, and each
    epoch gathers its batches from them through a fresh permutation of the row numbers (a shuffle buffer of the
    rows themselves would hold every row as its own set of tensors: several times the data); otherwise the raw
    rows are shuffled and preprocessed again each epoch, a block at a time, and the blocks cut into batches.
    Regression labels are standardized (the model predicts in standard units; the exported model rescales).
    """
    import numpy as np
    import tensorflow as tf

    from pipeline.datasets import block_rows

    feats = feature_arrays(df, meta.feature_spec)
    extras: list[Any] = []
    if labels:
        y = label_array(df, meta)
        if meta.feature_spec.task == "regression":
            y = ((y - meta.label_mean) / meta.label_std).astype(np.float32)
        extras.append(y)
        if weights is not None:
            extras.append(weights.astype(np.float32))
    n, n_batches = len(df), -(-len(df) // batch_size)
    if processed_row_bytes(meta) * n <= cache_bytes:
        raw = tf.data.Dataset.from_tensor_slices(feats).batch(4096)
        chunks = list(raw.map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
        del raw, feats
        data = {k: tf.concat([c[k] for c in chunks], axis=0) for k in chunks[0]} if chunks else {}
        del chunks
        return gathered_batches((data, *[tf.constant(e) for e in extras]), n, batch_size, shuffle, seed)
    element = (feats, *extras) if extras else feats
    ds = tf.data.Dataset.from_tensor_slices(element)
    if shuffle:
        ds = ds.shuffle(min(n, 1 << 18), seed=seed, reshuffle_each_iteration=True)

    def apply(*batch):
        return (preprocessor(batch[0]), *batch[1:]) if len(batch) > 1 else preprocessor(batch[0])

    block = block_rows(batch_size)
    ds = ds.batch(block).map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    if block > batch_size:
        ds = ds.rebatch(batch_size)
    # the shuffle and map steps lose the dataset's length; stating it lets Keras size its first epoch
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(tf.data.AUTOTUNE)


def processed_row_bytes(meta: PreprocessMeta) -> int:
    """About how many bytes one processed row (with its label and weight) takes as tensors."""
    mspec = meta.model_spec()
    pixels = sum(h * w * c for h, w, c in mspec.images.values())
    tokens = sum(n for _, n in mspec.tokens.values())
    return 4 * (mspec.numeric_width + len(mspec.categorical) * 2 + sum(mspec.text.values()) + 2) + pixels + 8 * tokens


def gathered_batches(columns: tuple, n: int, batch_size: int, shuffle: bool = False,
                     seed: int = 0) -> "tf.data.Dataset":
    """Batches gathered from ``columns`` (processed features, then label and weight: tensors of ``n`` rows each)
    through a fresh permutation of the row numbers every epoch when ``shuffle``, in order otherwise."""
    import tensorflow as tf

    def gather(idx):
        picked = tuple(tf.nest.map_structure(lambda a: tf.gather(a, idx), c) for c in columns)
        return picked if len(picked) > 1 else picked[0]

    order = tf.data.Dataset.range(n)
    if shuffle:
        order = order.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = order.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.apply(tf.data.experimental.assert_cardinality(-(-n // batch_size))).prefetch(tf.data.AUTOTUNE)


def raw_dataset(df: "pd.DataFrame", spec: FeatureSpec, batch_size: int = 1024) -> "tf.data.Dataset":
    """Batches of raw features (the endpoint's inputs) for predicting with the full model."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(feature_arrays(df, spec)).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def full_model(meta: PreprocessMeta, body: "keras.Model") -> "keras.Model":
    """Raw features -> preprocessor -> trained body -> output in label units: the model that is evaluated
    and exported."""
    import keras

    spec = meta.feature_spec
    inputs = raw_inputs(spec)
    name = _namer([*inputs, body.name])
    preprocessor = build_preprocessor(meta)
    preprocessor.name = name(preprocessor.name)
    out = body(preprocessor(inputs))
    if spec.task == "regression":
        # The body predicts a standardized value; rescaling inside the model keeps the endpoint in label units.
        out = keras.layers.Rescaling(meta.label_std, offset=meta.label_mean, dtype="float32", name=name("value"))(out)
        out = keras.layers.Reshape((), name=name("value_flat"))(out)
    return keras.Model(inputs, out, name=name("served_model"))


def save_preprocessing(meta: PreprocessMeta, out_dir: str | Path) -> dict[str, str]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path = out_dir / "meta.json"
    tmp = out_dir / ".meta.json.tmp"
    meta.save(tmp)
    tmp.replace(meta_path)
    return {"meta": str(meta_path)}


def class_weights(meta: PreprocessMeta, mode: str) -> dict[int, float] | None:
    """Per-class loss weights: ``balanced`` (inverse frequency), ``auto`` (the square root of that, and only when
    the largest class has at least 4x the rows of the smallest), ``none``. Normalized to a mean of 1 per row.
    With ``auto`` the trained model's probabilities are corrected back to the class frequencies
    (``PriorCorrection``); with ``balanced`` they are not: the model then favours rare classes, as a macro gate
    metric wants."""
    if meta.feature_spec.task != "classification" or mode == "none" or not meta.class_counts:
        return None
    counts = [meta.class_counts.get(c, 0) or 1 for c in meta.class_names]
    if mode == "auto" and max(counts) < 4 * min(counts):
        return None
    power = 1.0 if mode == "balanced" else 0.5
    raw = [(sum(counts) / (len(counts) * c)) ** power for c in counts]
    mean = sum(r * c for r, c in zip(raw, counts)) / sum(counts)
    return {i: r / mean for i, r in enumerate(raw)}


def auto_batch_size(rows: int) -> int:
    """A power of two near the square root of the training rows, between 32 and 1024."""
    return int(min(1024, max(32, 2 ** round(math.log2(max(1, rows) ** 0.5)))))
