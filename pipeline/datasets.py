"""Datasets: the split Parquet files read record batch by record batch, never as one whole frame.

Training, preprocessing and evaluation of a table larger than memory read the split's Parquet file(s) through
these functions: :func:`iter_frames` (pandas frames of one record batch each, only the needed columns),
:func:`sample_frame` (a bounded uniform sample) and :func:`parquet_dataset` (the ``tf.data`` pipeline that
``pipeline.train`` fits on). A *source* is a Parquet file, a directory of Parquet shards or a list of files.
"""
from __future__ import annotations

import collections
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    import keras
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import tensorflow as tf

    from pipeline.preprocess import PreprocessMeta

BATCH_ROWS = 65_536          # rows of one record batch read from a file: a few MB of raw columns
SHUFFLE_BUFFER = 1 << 18     # rows shuffled together when training.shuffle_buffer is not set
PREPROCESS_ROWS = 4096       # rows preprocessed at once when streaming (measured: 1 batch of 1,024 is slower)


def block_rows(batch_size: int) -> int:
    """Rows the preprocessor runs on at once when streaming: whole batches, about ``PREPROCESS_ROWS`` (its ops'
    fixed cost is paid once a block; the processed blocks are then cut into batches by ``Dataset.rebatch``,
    measured 2.4 us of CPU a row less than slicing each block in a ``flat_map``)."""
    return batch_size * max(1, PREPROCESS_ROWS // batch_size)


def parquet_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The Parquet files of ``source``: the file itself, a directory's ``*.parquet`` files in name order, or the
    listed files. Raises FileNotFoundError naming what is missing."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            files = sorted(path.glob("*.parquet"))
            if not files:
                raise FileNotFoundError(f"{path}: a directory without *.parquet files")
            return files
        items = [path]
    else:
        items = [Path(p) for p in source]
    for p in items:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such Parquet file")
    return items


def parquet_rows(source: str | Path | Sequence[str | Path]) -> int:
    """Rows of ``source``, from the files' footers (nothing else is read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in parquet_files(source))


def iter_record_batches(source: str | Path | Sequence[str | Path], columns: Sequence[str] | None = None,
                        batch_rows: int = BATCH_ROWS,
                        row_groups: Sequence[int] | None = None) -> Iterator["pa.RecordBatch"]:
    """The rows of ``source`` in file order as Arrow record batches of at most ``batch_rows`` rows, with only
    ``columns`` (default: all); ``row_groups`` picks and orders the row groups of a single file. Raises KeyError
    naming the file and the column when a column is missing."""
    import pyarrow.parquet as pq

    for path in parquet_files(source):
        pf = pq.ParquetFile(path)
        if columns is not None:
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise KeyError(f"{path}: no column {missing[0]!r} (columns: {', '.join(pf.schema_arrow.names)})")
        groups = list(row_groups) if row_groups is not None else None
        yield from pf.iter_batches(batch_size=batch_rows, columns=list(columns) if columns is not None else None,
                                   row_groups=groups)


def iter_frames(source: str | Path | Sequence[str | Path], columns: Sequence[str] | None = None,
                batch_rows: int = BATCH_ROWS, row_groups: Sequence[int] | None = None) -> Iterator["pd.DataFrame"]:
    """:func:`iter_record_batches` as pandas frames, one per record batch."""
    for batch in iter_record_batches(source, columns, batch_rows, row_groups):
        yield batch.to_pandas()


def sample_frame(source: str | Path | Sequence[str | Path], max_rows: int, seed: int = 0,
                 columns: Sequence[str] | None = None) -> "pd.DataFrame":
    """A uniform random sample of ``max_rows`` rows of ``source`` without replacement, in file order (all rows,
    in order, when there are no more). The row numbers are drawn first (the count is in the footers), so one
    pass holds one record batch and the sample, never the table."""
    import numpy as np
    import pandas as pd

    n = parquet_rows(source)
    dtypes = whole_read_dtypes(source)  # the sample's columns typed as a whole read types them
    if n <= max_rows:
        frames = [as_whole_read(f, dtypes) for f in iter_frames(source, columns)]
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    picked = np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
    parts, start = [], 0
    for frame in iter_frames(source, columns):
        lo, hi = np.searchsorted(picked, [start, start + len(frame)])
        if hi > lo:
            parts.append(as_whole_read(frame.iloc[picked[lo:hi] - start].copy(), dtypes))
        start += len(frame)
    return pd.concat(parts, ignore_index=True)


def parquet_dataset(source: str | Path | Sequence[str | Path], meta: "PreprocessMeta", preprocessor: "keras.Model",
                    batch_size: int, shuffle: bool = False, seed: int = 0, labels: bool = True,
                    class_weight: dict[int, float] | None = None, shuffle_buffer: int | None = None,
                    cache_bytes: int = 256 << 20) -> "tf.data.Dataset":
    """A batched ``tf.data`` pipeline of ``(processed features, label[, weight])`` read from Parquet, the
    counterpart of :func:`pipeline.preprocess.processed_dataset` for data that is not a frame in memory.

    When the processed rows fit in ``cache_bytes`` they are computed once, record batch by record batch, and
    each epoch gathers its batches from them as ``processed_dataset`` does (the raw table is never whole in
    memory, only its processed tensors). Otherwise every epoch streams the files again: one generator per file,
    interleaved over up to four files when shuffling (in file order otherwise), each shuffling blocks of
    ``shuffle_buffer`` rows (split between the files read at once; default 262,144) with its row groups in a
    random order; the rows travel packed (:mod:`pipeline.model_inputs`), the preprocessor runs in parallel
    ``map`` calls on blocks of about ``PREPROCESS_ROWS`` rows that are then cut into batches, and batches are
    prefetched. The shuffle is an Arrow ``take`` on whole columns rather than
    ``tf.data.Dataset.shuffle`` over single rows: a buffer of row tensors costs several times the data and the
    per-row elements cost most of the throughput. Each epoch gets its own order, the same in every run with the
    same ``seed``.

    Args:
        source: the split's Parquet file(s) (raw feature columns plus the label).
        class_weight: per class index, the loss weight of its rows (``pipeline.preprocess.class_weights``).
    """
    import numpy as np
    import tensorflow as tf

    from pipeline.model_inputs import packed_batches, packed_signature, unpacked
    from pipeline.preprocess import gathered_batches, processed_row_bytes

    files = parquet_files(source)
    rows = [parquet_rows(f) for f in files]
    n = sum(rows)
    weighted = labels and class_weight is not None and meta.feature_spec.task == "classification"
    signature = packed_signature(meta, labels, weighted)

    def apply(numbers, text, starts, lengths, *extras):
        processed = preprocessor(unpacked(meta, numbers, text, starts, lengths))
        return (processed, *extras) if extras else processed

    if processed_row_bytes(meta) * n <= cache_bytes:
        def chunks():
            for f in files:
                yield from packed_batches(f, meta, 4096, labels, class_weight)

        raw = tf.data.Dataset.from_generator(chunks, output_signature=signature)
        processed = list(raw.map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
        if not processed:
            raise ValueError(f"{', '.join(map(str, files))}: no rows")
        # the chunks and their concatenation: twice cache_bytes at the peak, for a moment
        parts = [p if isinstance(p, tuple) else (p,) for p in processed]
        del processed
        columns = tuple(tf.nest.map_structure(lambda *xs: tf.concat(xs, axis=0), *[p[i] for p in parts])
                        for i in range(len(parts[0])))
        del parts
        return gathered_batches(columns, n, batch_size, shuffle, seed)

    # unshuffled (validation, prediction): one file after another, so the batches keep the rows' order
    cycle = min(len(files), 4) if shuffle else 1
    per_file = max(batch_size, (shuffle_buffer or SHUFFLE_BUFFER) // cycle) if shuffle else 0
    epochs: collections.Counter = collections.Counter()  # reads of each file so far: each epoch's own order
    block = block_rows(batch_size)

    def one_file(index):
        i = int(index)
        rng = np.random.default_rng([seed, i, epochs[i]])
        epochs[i] += 1
        yield from packed_batches(files[i], meta, block, labels, class_weight, per_file, rng)

    order = tf.data.Dataset.range(len(files))
    if shuffle and len(files) > 1:
        order = order.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = order.interleave(lambda i: tf.data.Dataset.from_generator(one_file, args=(i,), output_signature=signature),
                          cycle_length=cycle, num_parallel_calls=cycle, deterministic=True)
    ds = ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    if block > batch_size:
        ds = ds.rebatch(batch_size)  # rows of consecutive blocks, as unbatch().batch(): a batch may span files
        n_batches = -(-n // batch_size)
    else:
        n_batches = sum(-(-r // batch_size) for r in rows)
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(tf.data.AUTOTUNE)


def whole_read_dtypes(source: str | Path | Sequence[str | Path]) -> dict[str, object]:
    """The pandas dtype that a whole read of ``source`` gives each boolean and integer column with a missing
    value somewhere (object and float64, without pandas metadata), where a record batch without a gap reads
    bools or ints: cast to these, every batch holds its values as a whole read holds them (the row hash and
    the string forms of values depend on it). The gaps are taken from the files' column statistics, and read
    from the column where a file has none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    gaps: dict[str, pa.DataType] = {}
    for path in parquet_files(source):
        pf = pq.ParquetFile(path)
        schema, meta = pf.schema_arrow, pf.metadata
        widened = [f for f in schema if pa.types.is_boolean(f.type) or pa.types.is_integer(f.type)]
        for f in widened:
            if f.name in gaps:
                continue
            j = pf.schema_arrow.get_field_index(f.name)
            stats = [meta.row_group(g).column(j).statistics for g in range(meta.num_row_groups)]
            if all(s is not None and s.has_null_count for s in stats):
                gapped = any(s.null_count for s in stats)
            else:
                gapped = any(b.column(0).null_count for b in pf.iter_batches(columns=[f.name]))
            if gapped:
                gaps[f.name] = f.type
    if not gaps:
        return {}
    first = pq.ParquetFile(parquet_files(source)[0]).schema_arrow
    with_gap = pa.table({c: pa.nulls(1, t) for c, t in gaps.items()}).replace_schema_metadata(first.metadata)
    frame = with_gap.to_pandas()
    return {c: frame[c].dtype for c in gaps}


def as_whole_read(frame: "pd.DataFrame", dtypes: dict[str, object]) -> "pd.DataFrame":
    """``frame`` (one record batch) with its columns in the dtypes of :func:`whole_read_dtypes`."""
    for col, dtype in dtypes.items():
        if col in frame.columns and frame[col].dtype != dtype:
            frame[col] = frame[col].astype(dtype)
    return frame
