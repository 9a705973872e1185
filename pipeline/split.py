"""Split: deterministic train/val/test partitions (same data and seed, same split).

Strategies: ``hash`` (the default: a stable hash of each row's values, or of ``key_column``, so a row keeps its
split when data is appended, as a retraining on newly labelled rows does), ``stratified`` (per label class, for
classification; a shuffle, so appended rows move others between splits), ``random`` and ``time`` (oldest rows
train, newest test).
``hash`` is also done record batch by record batch (:func:`split_parquet`), for tables larger than memory.
Rows without a label are dropped first: they cannot be trained or scored on; classes too rare to split are
merged or dropped when the config says so (``labels``).
"""
from __future__ import annotations

import hashlib

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import LabelsConfig, SplitConfig
from pipeline.features import is_bytes_column

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("train", "val", "test")


def _cut(n: int, cfg: SplitConfig) -> tuple[int, int]:
    """Boundaries of train and val in ``n`` ordered rows; every non-empty split of ratio > 0 gets a row if it can."""
    n_train = int(round(n * cfg.train))
    n_val = int(round(n * cfg.val))
    if cfg.test > 0 and n_train + n_val >= n and n >= 2:
        n_train = max(1, n - n_val - 1) if n_val else n - 1
    return n_train, min(n, n_train + n_val)


def _assign_ordered(n: int, cfg: SplitConfig):
    import numpy as np

    a, b = _cut(n, cfg)
    out = np.empty(n, dtype=object)
    out[:a], out[a:b], out[b:] = "train", "val", "test"
    return out


def assign_splits(df: "pd.DataFrame", label: str, cfg: SplitConfig, task: str) -> "pd.Series":
    """The split name of every row of ``df`` (a Series aligned with ``df.index``)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(cfg.seed)
    result = pd.Series(index=df.index, dtype=object)
    if cfg.strategy == "stratified" and task == "classification":
        for _, idx in sorted(df.groupby(df[label].astype(str)).groups.items()):
            shuffled = rng.permutation(np.asarray(idx))
            result.loc[shuffled] = _assign_ordered(len(shuffled), cfg)
    elif cfg.strategy in ("stratified", "random"):
        shuffled = rng.permutation(df.index.to_numpy())
        result.loc[shuffled] = _assign_ordered(len(shuffled), cfg)
    elif cfg.strategy == "hash":
        if cfg.key_column and cfg.key_column not in df.columns:
            raise ValueError(f"split.key_column {cfg.key_column!r} is not a column of the data")
        u = row_hash_unit(df[[cfg.key_column]] if cfg.key_column else df, cfg.seed)
        result[:] = np.where(u < cfg.train, "train", np.where(u < cfg.train + cfg.val, "val", "test"))
    elif cfg.strategy == "time":
        if cfg.time_column not in df.columns:
            raise ValueError(f"split.time_column {cfg.time_column!r} is not a column of the data")
        order = df.sort_values(cfg.time_column, kind="stable").index
        result.loc[order] = _assign_ordered(len(order), cfg)
    else:
        raise ValueError(f"unknown split strategy {cfg.strategy!r}")
    return result


def row_hash_unit(df: "pd.DataFrame", seed: int):
    """A number in [0, 1) per row, a stable hash of the row's values salted by ``seed``: the same row gets the
    same number in every run and whatever other rows the table holds, so a row keeps its split when rows are
    appended (a retraining on newly labelled rows scores the champion only on rows it never trained on).

    Columns are taken in name order; numbers (and booleans) are hashed as float64 and everything else as text,
    so a row does not move when its column's dtype widens (int -> float once a value is missing)."""
    import numpy as np
    import pandas as pd

    canonical = {}
    for col in sorted(df.columns, key=str):
        values = df[col]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            canonical[str(col)] = values.astype("float64")
        elif is_bytes_column(values):
            # binary (an image file): its content's digest, so the same image lands in the same split
            # whichever file it came from (no copy of a test image in training)
            canonical[str(col)] = values.map(lambda v: hashlib.sha256(bytes(v)).hexdigest()
                                             if isinstance(v, (bytes, bytearray)) else "None")
        else:
            canonical[str(col)] = values.astype(object).where(values.notna(), None).astype(str)
    hashed = pd.util.hash_pandas_object(pd.DataFrame(canonical, index=df.index), index=False).to_numpy(np.uint64)
    # Salted by the seed, then mixed (splitmix64's finalizer), so that every bit of the seed moves every row:
    # pandas' hash key only salts text columns.
    with np.errstate(over="ignore"):
        h = hashed ^ np.uint64((int(seed) * 0x9E3779B97F4A7C15) % 2**64)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) / np.float64(2.0**53)


def prepare_labels(df: "pd.DataFrame", label: str, task: str, labels: LabelsConfig = LabelsConfig()
                   ) -> tuple["pd.DataFrame", dict[str, int]]:
    """The rows that can be trained and scored on: rows without a label dropped; for classification, classes
    rarer than ``labels.min_class_rows`` merged into ``labels.merged_class`` or dropped as configured (with
    ``error``, validate has already refused them). Returns the rows and what was done, counted."""
    from pipeline.preprocess import label_strings

    labelled = df[df[label].notna()]
    counts = {"rows_without_label": int(len(df) - len(labelled)), "rows_merged": 0, "rows_dropped_rare": 0}
    if task == "classification" and labels.rare_classes in ("merge", "drop"):
        names = label_strings(labelled[label])
        sizes = {}
        for n in names:
            sizes[n] = sizes.get(n, 0) + 1
        rare = {n for n, c in sizes.items() if c < labels.min_class_rows}
        if rare:
            is_rare = [n in rare for n in names]
            if labels.rare_classes == "merge":
                labelled = labelled.copy()
                labelled[label] = [labels.merged_class if r else n for n, r in zip(names, is_rare)]
                counts["rows_merged"] = int(sum(is_rare))
            else:
                labelled = labelled[[not r for r in is_rare]]
                counts["rows_dropped_rare"] = int(sum(is_rare))
    return labelled, counts


def split_frame(df: "pd.DataFrame", label: str, cfg: SplitConfig, task: str,
                labels: LabelsConfig = LabelsConfig()) -> dict[str, "pd.DataFrame"]:
    """Partition the labelled rows of ``df`` into ``{"train", "val", "test"}`` frames (original row order kept)."""
    labelled, _ = prepare_labels(df, label, task, labels)
    which = assign_splits(labelled, label, cfg, task)
    parts = {name: labelled[which == name].reset_index(drop=True) for name in SPLITS}
    if parts["train"].empty or parts["test"].empty:
        raise ValueError(f"split left train ({len(parts['train'])} rows) or test ({len(parts['test'])} rows) empty; "
                         f"{len(labelled)} labelled rows is too few for ratios {cfg.train}/{cfg.val}/{cfg.test}")
    return parts


def class_balance(parts: dict[str, "pd.DataFrame"], label: str) -> dict[str, dict[str, float]]:
    """Share of each class per split, e.g. ``{"train": {"Adelie": 0.44, ...}, ...}``."""
    return {name: {str(k): float(v) for k, v in part[label].astype(str).value_counts(normalize=True).sort_index().items()}
            for name, part in parts.items()}


def write_splits(parts: dict[str, "pd.DataFrame"], out_dir: str | Path) -> dict[str, str]:
    """Write each split to ``out_dir/<name>.parquet``, each atomically (a retry never reads half a file)."""
    from pipeline.atomic import write_parquet_atomic

    out_dir = Path(out_dir)
    paths = {}
    for name, part in parts.items():
        paths[name] = str(write_parquet_atomic(out_dir / f"{name}.parquet", part))
    return paths


# -- streamed ------------------------------------------------------------------------------------------------

STREAMED_STRATEGIES = ("hash",)  # the others order or permute the whole table: split_frame reads it whole


@dataclass(frozen=True)
class SplitSummary:
    """What a streamed split wrote: the files, the rows dropped (as ``prepare_labels`` counts them), the rows of
    each split and, for classification, the share of each class per split (as ``class_balance`` gives it)."""

    paths: dict[str, str]
    dropped: dict[str, int]
    rows: dict[str, int]
    balance: dict[str, dict[str, float]]


def _rare_classes(snapshot: Path, label: str, task: str, labels: LabelsConfig, batch_rows: int) -> set[str]:
    """The classes to merge or drop, counted over the label column of every row (the first pass)."""
    from pipeline.datasets import iter_frames
    from pipeline.preprocess import label_strings

    if task != "classification" or labels.rare_classes not in ("merge", "drop"):
        return set()
    sizes: dict[str, int] = {}
    for frame in iter_frames(snapshot, [label], batch_rows):
        for name in label_strings(frame[label].dropna()):
            sizes[name] = sizes.get(name, 0) + 1
    return {n for n, c in sizes.items() if c < labels.min_class_rows}


def split_parquet(snapshot: str | Path, out_dir: str | Path, label: str, cfg: SplitConfig, task: str,
                  labels: LabelsConfig = LabelsConfig(), batch_rows: int = 65_536) -> SplitSummary:
    """The ``hash`` split of :func:`split_frame` done record batch by record batch: the same rows in the same
    splits, in the same order, written to ``out_dir/<name>.parquet`` (each atomically) with one record batch in
    memory at a time. Two passes over the snapshot: the label column first (rare classes are a property of the
    whole table), then every column.

    Raises:
        ValueError: a strategy other than ``hash`` (see :data:`STREAMED_STRATEGIES`), a missing key column, or a
            train or test split left empty.
    """
    import contextlib

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.atomic import atomic_path
    from pipeline.datasets import as_whole_read, whole_read_dtypes
    from pipeline.preprocess import label_strings

    if cfg.strategy not in STREAMED_STRATEGIES:
        raise ValueError(f"split strategy {cfg.strategy!r} needs the whole table; streamed: {STREAMED_STRATEGIES}")
    snapshot, out_dir = Path(snapshot), Path(out_dir)
    pf = pq.ParquetFile(snapshot)
    if cfg.key_column and cfg.key_column not in pf.schema_arrow.names:
        raise ValueError(f"split.key_column {cfg.key_column!r} is not a column of the data")
    if label not in pf.schema_arrow.names:
        raise ValueError(f"{snapshot}: no label column {label!r}")
    rare = _rare_classes(snapshot, label, task, labels, batch_rows)
    dtypes = whole_read_dtypes(snapshot)
    merge = bool(rare) and labels.rare_classes == "merge"
    dropped = {"rows_without_label": 0, "rows_merged": 0, "rows_dropped_rare": 0}
    rows = {name: 0 for name in SPLITS}
    classes: dict[str, dict[str, int]] = {name: {} for name in SPLITS}
    schema = pf.schema_arrow
    if merge:  # merged labels are names, as split_frame writes them
        schema = schema.set(schema.get_field_index(label), pa.field(label, pa.string()))
    with contextlib.ExitStack() as stack:
        tmps = {name: stack.enter_context(atomic_path(out_dir / f"{name}.parquet", suffix=".parquet"))
                for name in SPLITS}
        writers = {name: stack.enter_context(pq.ParquetWriter(tmps[name], schema)) for name in SPLITS}
        for batch in pf.iter_batches(batch_size=batch_rows):
            dropped["rows_without_label"] += batch.column(label).null_count
            batch = batch.filter(batch.column(label).is_valid())
            if not len(batch):
                continue
            frame = as_whole_read(batch.to_pandas(), dtypes)  # the row hash takes values as a whole read does
            if task == "classification":
                names = np.array(label_strings(frame[label]), dtype=object)
                if rare:
                    is_rare = np.isin(names, list(rare))
                    if merge:
                        dropped["rows_merged"] += int(is_rare.sum())
                        names = np.where(is_rare, labels.merged_class, names)
                        frame[label] = names
                        batch = batch.set_column(batch.schema.get_field_index(label), label,
                                                 pa.array(names.tolist(), pa.string()))
                    else:
                        dropped["rows_dropped_rare"] += int(is_rare.sum())
                        keep = ~is_rare
                        batch, frame, names = batch.filter(pa.array(keep)), frame[keep], names[keep]
            u = row_hash_unit(frame[[cfg.key_column]] if cfg.key_column else frame, cfg.seed)
            which = np.where(u < cfg.train, "train", np.where(u < cfg.train + cfg.val, "val", "test"))
            for name in SPLITS:
                mine = which == name
                if mine.any():
                    writers[name].write_batch(batch.filter(pa.array(mine)))
                    rows[name] += int(mine.sum())
                    if task == "classification":
                        for cls, count in zip(*np.unique(names[mine].astype(str), return_counts=True)):
                            classes[name][str(cls)] = classes[name].get(str(cls), 0) + int(count)
        if not rows["train"] or not rows["test"]:
            raise ValueError(f"split left train ({rows['train']} rows) or test ({rows['test']} rows) empty; "
                             f"{sum(rows.values())} labelled rows is too few for ratios "
                             f"{cfg.train}/{cfg.val}/{cfg.test}")
        for writer in writers.values():
            writer.close()
    balance = {name: {c: n / rows[name] for c, n in sorted(counts.items())} for name, counts in classes.items()}
    return SplitSummary({name: str(out_dir / f"{name}.parquet") for name in SPLITS}, dropped, rows, balance)
