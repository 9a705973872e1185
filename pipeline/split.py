"""Split: deterministic train/val/test partitions (same data and seed, same split).

Strategies: ``stratified`` (per label class, for classification), ``random``, ``hash`` (a stable hash of a key
column, so a row keeps its split when data is appended) and ``time`` (oldest rows train, newest test).
Rows without a label are dropped first: they cannot be trained or scored on.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import SplitConfig

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
        if cfg.key_column not in df.columns:
            raise ValueError(f"split.key_column {cfg.key_column!r} is not a column of the data")
        salt = str(cfg.seed).encode()

        def bucket(value) -> float:
            digest = hashlib.sha256(salt + str(value).encode()).digest()
            return int.from_bytes(digest[:8], "big") / 2**64

        u = df[cfg.key_column].map(bucket)
        result[:] = np.where(u < cfg.train, "train", np.where(u < cfg.train + cfg.val, "val", "test"))
    elif cfg.strategy == "time":
        if cfg.time_column not in df.columns:
            raise ValueError(f"split.time_column {cfg.time_column!r} is not a column of the data")
        order = df.sort_values(cfg.time_column, kind="stable").index
        result.loc[order] = _assign_ordered(len(order), cfg)
    else:
        raise ValueError(f"unknown split strategy {cfg.strategy!r}")
    return result


def split_frame(df: "pd.DataFrame", label: str, cfg: SplitConfig, task: str) -> dict[str, "pd.DataFrame"]:
    """Partition the labelled rows of ``df`` into ``{"train", "val", "test"}`` frames (original row order kept)."""
    labelled = df[df[label].notna()]
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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, part in parts.items():
        path = out_dir / f"{name}.parquet"
        part.to_parquet(path, index=False)
        paths[name] = str(path)
    return paths
