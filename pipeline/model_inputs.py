"""A split's Parquet rows as the model's raw inputs, in batches, read with Arrow and never through pandas.

The raw inputs are what ``pipeline.preprocess.feature_arrays`` and ``label_array`` make of a frame: float32
numbers (NaN for missing), strings ('' for missing, dates and booleans spelt as the endpoint takes them), class
indices (-1 for a class unseen in training) or standardized regression targets, and the rows' class weights.
Here they are made from Arrow record batches (the same values: a test holds the two paths equal), because the
detour through pandas costs several times the rest of the input pipeline per row.

:func:`file_batches` gives them as NumPy arrays; :func:`packed_batches` packs each batch into four tensors
(one float32 matrix of the numbers, one string holding every text's bytes and their start and length per
column) that :func:`unpacked` turns back into the inputs inside ``tf.data``: ``from_generator`` pays a
fixed price per tensor and a Python conversion per string, which the packed form avoids.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import tensorflow as tf

    from pipeline.features import FeatureSpec
    from pipeline.preprocess import PreprocessMeta

LABEL, WEIGHT = "__label__", "__weight__"  # the label and weight columns of a normalized record batch


def columns(meta: "PreprocessMeta", labels: bool) -> list[str]:
    """The Parquet columns the model's inputs are read from."""
    spec = meta.feature_spec
    return [*spec.numeric, *spec.categorical, *([spec.label] if labels else [])]


def _is_text(t: "pa.DataType") -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t)


def numeric_values(col: "pa.Array") -> "np.ndarray":
    """A numeric feature as ``feature_arrays`` gives it (float32, NaN for missing), straight from Arrow for
    integer and float columns (pandas reads them as int64 or float64 and casts likewise)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if pa.types.is_floating(col.type) or (pa.types.is_integer(col.type) and not col.null_count):
        return np.asarray(col.to_numpy(zero_copy_only=False)).astype(np.float32)
    if pa.types.is_integer(col.type):  # pandas reads an integer column with gaps as float64
        return np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False)).astype(np.float32)
    return pd.to_numeric(col.to_pandas(), errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan)


def string_array(col: "pa.Array", image: bool) -> "pa.Array":
    """A string feature as ``feature_arrays`` gives it, as an Arrow string (binary for images) array without
    nulls: strings as they are and booleans as ``true``/``false`` in Arrow, missing as ``MISSING_CATEGORY``;
    other types (dates, numbers read as categories) through ``string_values``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.preprocess import MISSING_CATEGORY, image_bytes, string_values

    if image:
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            return pc.fill_null(col, b"")
        return pa.array(image_bytes(col.to_pandas()), pa.binary())
    if _is_text(col.type):
        return pc.fill_null(col, MISSING_CATEGORY)
    if pa.types.is_boolean(col.type):
        return pc.fill_null(pc.if_else(col, "true", "false"), MISSING_CATEGORY)
    return pa.array(string_values(col.to_pandas()), pa.string())


def _features(batch: "pa.RecordBatch", spec: "FeatureSpec") -> dict[str, "pa.Array"]:
    """The features of a record batch as the model's inputs take them, as Arrow arrays without nulls."""
    import pyarrow as pa

    from pipeline.features import IMAGE

    out = {c: pa.array(numeric_values(batch.column(c))) for c in spec.numeric}
    for c in spec.categorical:
        out[c] = string_array(batch.column(c), spec.kind(c) == IMAGE)
    return out


def feature_columns(batch: "pa.RecordBatch", spec: "FeatureSpec") -> dict[str, "np.ndarray"]:
    """:func:`pipeline.preprocess.feature_arrays` of a record batch."""
    return {c: a.to_numpy(zero_copy_only=False) for c, a in _features(batch, spec).items()}


def label_column(batch: "pa.RecordBatch", meta: "PreprocessMeta") -> "np.ndarray":
    """:func:`pipeline.preprocess.label_array` of a record batch: class indices (-1 for a class unseen in
    training), found by Arrow for a string label, or float32 values."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.preprocess import MISSING_CATEGORY, label_array

    spec = meta.feature_spec
    col = batch.column(spec.label)
    if spec.task == "classification" and _is_text(col.type):
        index = pc.index_in(pc.fill_null(col, MISSING_CATEGORY), value_set=pa.array(meta.class_names, col.type))
        return pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    if spec.task == "regression" and pa.types.is_floating(col.type):
        return np.asarray(col.to_numpy(zero_copy_only=False)).astype(np.float32)
    return label_array(pa.table([col], names=[spec.label]).to_pandas(), meta)


def normalized(batch: "pa.RecordBatch", meta: "PreprocessMeta", labels: bool,
               class_weight: dict[int, float] | None) -> "pa.RecordBatch":
    """A record batch as the model's raw inputs, still in Arrow: the features (float32 and string columns, no
    nulls), then ``LABEL`` (class index, or standardized value for regression) and ``WEIGHT`` (with
    ``class_weight``: the row's class weight, 1 for a class unseen in training, as in ``train``)."""
    import numpy as np
    import pyarrow as pa

    spec = meta.feature_spec
    features = _features(batch, spec)
    arrays, names = list(features.values()), list(features)
    if labels:
        y = label_column(batch, meta)
        if spec.task == "regression":
            y = ((y - meta.label_mean) / meta.label_std).astype(np.float32)
        arrays.append(pa.array(y))
        names.append(LABEL)
        if class_weight is not None and spec.task == "classification":
            lookup = np.array([class_weight.get(i, 1.0) for i in range(len(meta.class_names))] + [1.0],
                              dtype=np.float32)
            arrays.append(pa.array(lookup[y]))
            names.append(WEIGHT)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _arrays(table: "pa.Table", meta: "PreprocessMeta") -> tuple:
    """A normalized table as ``(features,)`` or ``(features, label[, weight])`` NumPy arrays."""
    spec = meta.feature_spec
    feats = {c: table.column(c).to_numpy() for c in (*spec.numeric, *spec.categorical)}
    extras = [table.column(c).to_numpy() for c in (LABEL, WEIGHT) if c in table.column_names]
    return (feats, *extras)


def _tables(path: Path, meta: "PreprocessMeta", batch_size: int, labels: bool,
            class_weight: dict[int, float] | None, shuffle_rows: int,
            rng: "np.random.Generator | None") -> Iterator["pa.Table"]:
    """Normalized batches of one file's rows as Arrow tables (see :func:`file_batches`)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.datasets import iter_record_batches

    groups = None
    if shuffle_rows:
        groups = rng.permutation(pq.ParquetFile(path).metadata.num_row_groups).tolist()
    pending: list = []

    def cut(block: "pa.Table", final: bool) -> Iterator["pa.Table"]:
        full = block.num_rows if final else block.num_rows - block.num_rows % batch_size
        for start in range(0, full, batch_size):  # slices share the block's buffers
            yield block.slice(start, min(batch_size, full - start))

    rows = 0
    for batch in iter_record_batches(path, columns(meta, labels), row_groups=groups):
        pending.append(normalized(batch, meta, labels, class_weight))
        rows += batch.num_rows
        if shuffle_rows and rows < shuffle_rows:
            continue
        block = pa.Table.from_batches(pending)
        # take copies the rows into one block; unshuffled, the rows are taken as read (copied only at a
        # batch boundary that falls across record batches)
        block = block.take(rng.permutation(rows)) if shuffle_rows else block.combine_chunks()
        yield from cut(block, final=False)
        rest = rows - rows % batch_size
        pending = block.slice(rest).take(np.arange(rows - rest)).to_batches()  # a copy: frees the block
        rows -= rest
    if rows:
        block = pa.Table.from_batches(pending).combine_chunks()
        if shuffle_rows:
            block = block.take(rng.permutation(rows))
        yield from cut(block, final=True)


def file_batches(path: Path, meta: "PreprocessMeta", batch_size: int, labels: bool = True,
                 class_weight: dict[int, float] | None = None, shuffle_rows: int = 0,
                 rng: "np.random.Generator | None" = None) -> Iterator[tuple]:
    """Batches of one Parquet file's rows as model inputs, ``(features,)`` or ``(features, label[, weight])``
    as ``processed_dataset`` takes them, ``batch_size`` rows each but the last. With ``shuffle_rows`` the row
    groups are read in a random order and the rows are shuffled in blocks of ``shuffle_rows``: a block is
    filled from the file, permuted and cut into batches (the rows left over, fewer than a batch, go into the
    next block), so memory holds one block, never the file."""
    for table in _tables(path, meta, batch_size, labels, class_weight, shuffle_rows, rng):
        yield _arrays(table, meta)


# -- the packed form ---------------------------------------------------------------------------------------

def packed_signature(meta: "PreprocessMeta", labels: bool, weighted: bool) -> tuple:
    """The ``tf.data`` signature of :func:`packed_batches`."""
    import tensorflow as tf

    spec = meta.feature_spec
    out = [tf.TensorSpec((None, len(spec.numeric)), tf.float32), tf.TensorSpec((), tf.string),
           tf.TensorSpec((len(spec.categorical), None), tf.int64), tf.TensorSpec((len(spec.categorical), None),
                                                                                 tf.int64)]
    if labels:
        out.append(tf.TensorSpec((None,), tf.int64 if spec.task == "classification" else tf.float32))
        if weighted:
            out.append(tf.TensorSpec((None,), tf.float32))
    return tuple(out)


def _string_parts(col: "pa.Array") -> tuple:
    """A string or binary array without nulls -> (its values' bytes, each value's start in them, lengths)."""
    import numpy as np
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    wide = pa.types.is_large_string(col.type) or pa.types.is_large_binary(col.type)
    offsets = np.frombuffer(col.buffers()[1], np.int64 if wide else np.int32)[col.offset:col.offset + len(col) + 1]
    first, last = int(offsets[0]), int(offsets[-1])
    data = col.buffers()[2]
    return (data[first:last].to_pybytes() if data is not None else b""), offsets[:-1] - first, np.diff(offsets)


def packed_batches(path: Path, meta: "PreprocessMeta", batch_size: int, labels: bool = True,
                   class_weight: dict[int, float] | None = None, shuffle_rows: int = 0,
                   rng: "np.random.Generator | None" = None) -> Iterator[tuple]:
    """:func:`file_batches` packed: ``(numbers, text, starts, lengths[, label[, weight]])`` with ``numbers``
    the float32 ``(rows, numeric columns)`` matrix, ``text`` the bytes of every string of the batch, column
    after column, and ``starts``/``lengths`` ``(string columns, rows)`` where each string lies in ``text``."""
    import numpy as np

    spec = meta.feature_spec
    for table in _tables(path, meta, batch_size, labels, class_weight, shuffle_rows, rng):
        n = table.num_rows
        numbers = (np.stack([table.column(c).to_numpy() for c in spec.numeric], axis=1) if spec.numeric
                   else np.zeros((n, 0), np.float32))
        parts, starts, lengths, base = [], [], [], 0
        for c in spec.categorical:
            data, start, length = _string_parts(table.column(c))
            parts.append(data)
            starts.append(start.astype(np.int64) + base)
            lengths.append(length.astype(np.int64))
            base += len(data)
        shape = (len(spec.categorical), n)
        extras = [table.column(c).to_numpy() for c in (LABEL, WEIGHT) if c in table.column_names]
        yield (numbers, np.array(b"".join(parts), dtype=object),
               np.stack(starts) if starts else np.zeros(shape, np.int64),
               np.stack(lengths) if lengths else np.zeros(shape, np.int64), *extras)


def unpacked(meta: "PreprocessMeta", numbers: "tf.Tensor", text: "tf.Tensor", starts: "tf.Tensor",
             lengths: "tf.Tensor") -> dict[str, "tf.Tensor"]:
    """The features of a packed batch (TensorFlow ops, for ``tf.data.Dataset.map``)."""
    import tensorflow as tf

    spec = meta.feature_spec
    feats = {c: numbers[:, i] for i, c in enumerate(spec.numeric)}
    for i, c in enumerate(spec.categorical):
        feats[c] = tf.strings.substr(text, starts[i], lengths[i])
    return feats
