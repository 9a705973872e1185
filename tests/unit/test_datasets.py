from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import ModelConfig, TrainingConfig
from pipeline.datasets import iter_frames, parquet_dataset, parquet_rows, sample_frame
from pipeline.features import FeatureSpec
from pipeline.model_inputs import feature_columns, file_batches, label_column
from pipeline.preprocess import (build_preprocessor, class_weights, feature_arrays, fit_preprocessing, label_array,
                                 processed_dataset)

SPEC = FeatureSpec(("x",), ("color",), "label", "classification")


def _shards(tmp_path, frame, n_files=3, row_group_size=None):
    """``frame`` cut into ``n_files`` Parquet shards of a directory, in order."""
    out = tmp_path / "shards"
    out.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(len(frame)), n_files)):
        frame.iloc[part].to_parquet(out / f"part-{i}.parquet", index=False, row_group_size=row_group_size)
    return out


def _flat(ds):
    """A dataset's batches concatenated: the processed features (dict) and the label/weight arrays."""
    feats, extras = [], []
    for element in ds:
        element = element if isinstance(element, tuple) else (element,)
        feats.append({k: v.numpy() for k, v in element[0].items()})
        extras.append([e.numpy() for e in element[1:]])
    return ({k: np.concatenate([f[k] for f in feats]) for k in feats[0]},
            [np.concatenate([e[i] for e in extras]) for i in range(len(extras[0]))])


def test_rows_frames_and_a_missing_column_named(tmp_path, tiny_frame):
    shards = _shards(tmp_path, tiny_frame)
    assert parquet_rows(shards) == 12
    frames = list(iter_frames(shards, ["x", "label"], batch_rows=3))
    assert all(list(f.columns) == ["x", "label"] and len(f) <= 3 for f in frames)
    pd.testing.assert_frame_equal(pd.concat(frames, ignore_index=True), tiny_frame[["x", "label"]])
    with pytest.raises(KeyError, match=r"part-0.parquet: no column 'size'"):
        list(iter_frames(shards, ["size"]))
    with pytest.raises(FileNotFoundError, match="nothing.parquet"):
        parquet_rows(tmp_path / "nothing.parquet")


def test_sample_is_uniform_bounded_and_in_order(tmp_path):
    frame = pd.DataFrame({"i": np.arange(10_000)})
    shards = _shards(tmp_path, frame, 4)
    pd.testing.assert_frame_equal(sample_frame(shards, 20_000), frame)  # fewer rows than the bound: all of them
    sample = sample_frame(shards, 1000, seed=3)
    assert len(sample) == 1000 and sample["i"].is_unique and sample["i"].is_monotonic_increasing
    assert 4000 < sample["i"].mean() < 6000  # drawn over every shard, not the first rows
    pd.testing.assert_frame_equal(sample, sample_frame(shards, 1000, seed=3))


def test_arrow_columns_equal_the_frame_path():
    """The record-batch reader gives the model exactly what ``feature_arrays``/``label_array`` give on the same
    rows read into pandas, for every Arrow type a split can hold (the fast path and the fallback alike)."""
    import datetime
    from types import SimpleNamespace

    import pyarrow as pa

    day = datetime.datetime(2024, 2, 29, 13, 5)
    batch = pa.record_batch({
        "f64": [1.5, None, 3.0, -0.25], "f32": pa.array([1.5, 2.0, None, 1e-3], pa.float32()),
        "i64": pa.array([1, 2, 3, 2**40], pa.int64()), "i_gap": pa.array([1, None, 3, 4], pa.int32()),
        "b_num": [True, False, None, True], "s_num": ["1.5", "x", None, "2"],
        "s": ["red", None, "", "blue"], "ls": pa.array(["a b", None, "c", "ü"], pa.large_string()),
        "ts": pa.array([day, None, day, day], pa.timestamp("us")), "flag": [True, None, False, True],
        "code_f": [12345.0, None, 7.5, 3.0], "code_i": [1, 2, 3, 4],
        "dict": pa.array(["a", "b", None, "a"]).dictionary_encode(),
        "label": ["a", None, "z", "b"], "label_i": [1, 2, None, 1], "margin": [1.0, None, 2.5, 3.0],
        "margin_i": [1, 2, 3, 4],
    })
    numeric = ("f64", "f32", "i64", "i_gap", "b_num", "s_num")
    categorical = ("s", "ls", "ts", "flag", "code_f", "code_i", "dict")
    frame = batch.to_pandas()
    spec = FeatureSpec(numeric, categorical, "label", "classification")
    ours, theirs = feature_columns(batch, spec), feature_arrays(frame, spec)
    assert list(ours) == list(theirs)
    for c in numeric:
        assert ours[c].dtype == np.float32
        np.testing.assert_array_equal(ours[c], theirs[c], err_msg=c)
    for c in categorical:
        assert ours[c].tolist() == theirs[c].tolist(), c
    for label, task, classes in [("label", "classification", ["a", "b"]), ("label_i", "classification", ["1", "2"]),
                                 ("margin", "regression", []), ("margin_i", "regression", [])]:
        meta = SimpleNamespace(feature_spec=FeatureSpec(numeric, categorical, label, task), class_names=classes)
        got, want = label_column(batch, meta), label_array(frame, meta)
        assert got.dtype == want.dtype, label
        np.testing.assert_array_equal(got, want, err_msg=label)
    assert label_column(batch, SimpleNamespace(feature_spec=spec, class_names=["a", "b"])).tolist() == [0, -1, -1, 1]


def test_file_batches_in_order_and_shuffled_in_blocks(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": np.arange(1000, dtype=float), "color": rng.choice(["r", "g"], 1000),
                          "label": rng.choice(["a", "b"], 1000)})
    path = tmp_path / "t.parquet"
    frame.to_parquet(path, index=False, row_group_size=128)
    meta = fit_preprocessing(frame, SPEC)
    plain = list(file_batches(path, meta, 64))
    assert [len(b[1]) for b in plain] == [64] * 15 + [40]
    np.testing.assert_array_equal(np.concatenate([b[0]["x"] for b in plain]), frame["x"].to_numpy(np.float32))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in plain]), label_array(frame, meta))

    shuffled = list(file_batches(path, meta, 64, shuffle_rows=300, rng=np.random.default_rng(1)))
    x = np.concatenate([b[0]["x"] for b in shuffled])
    assert [len(b[1]) for b in shuffled] == [64] * 15 + [40]
    assert sorted(x) == list(frame["x"]) and not np.array_equal(x, frame["x"])
    # labels travel with their rows
    by_x = dict(zip(frame["x"], label_array(frame, meta)))
    assert all(by_x[v] == y for v, y in zip(x, np.concatenate([b[1] for b in shuffled])))


@pytest.mark.parametrize("cache_bytes", [512 << 20, 0])  # processed rows kept in memory, or streamed each epoch
def test_parquet_dataset_gives_what_the_frame_gives(tmp_path, cache_bytes):
    from tests.unit.test_preprocess import mixed_frame, mixed_spec

    df = mixed_frame(300)
    meta = fit_preprocessing(df, mixed_spec(df))
    pre = build_preprocessor(meta)
    by_class = {0: 0.5, 1: 1.0, 2: 2.0}
    weights = np.array([by_class[int(c)] for c in label_array(df, meta)], dtype=np.float32)
    want = _flat(processed_dataset(df, meta, pre, 64, weights=weights))
    ds = parquet_dataset(_shards(tmp_path, df, 3, row_group_size=50), meta, pre, 64, class_weight=by_class,
                         cache_bytes=cache_bytes)
    got = _flat(ds)
    assert set(got[0]) == set(want[0])
    for k in want[0]:
        np.testing.assert_allclose(got[0][k], want[0][k], rtol=1e-6)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_array_equal(g, w)
    if cache_bytes == 0:
        # 100 rows a shard, each preprocessed as one block: the blocks are cut into batches as unbatch().batch()
        # would, so a batch takes the end of one shard and the start of the next, and only the last is short
        assert int(ds.cardinality()) == 5
        assert [len(y) for _, y, _ in ds] == [64] * 4 + [44]
        features_only = list(parquet_dataset(_shards(tmp_path / "f", df, 3), meta, pre, 64, labels=False,
                                             cache_bytes=0))
        assert all(isinstance(b, dict) for b in features_only)
        assert [len(b["numeric"]) for b in features_only] == [64] * 4 + [44]
        np.testing.assert_allclose(np.concatenate([b["numeric"] for b in features_only]), want[0]["numeric"],
                                   rtol=1e-6)
        shuffled = parquet_dataset(_shards(tmp_path / "s", df, 3), meta, pre, 64, shuffle=True, seed=1,
                                   class_weight=by_class, cache_bytes=0)
        epoch1, epoch2 = _flat(shuffled), _flat(shuffled)
        for epoch in (epoch1, epoch2):
            np.testing.assert_allclose(np.sort(epoch[0]["numeric"], axis=0), np.sort(want[0]["numeric"], axis=0),
                                       rtol=1e-6)
        assert not np.array_equal(epoch1[1][0], epoch2[1][0])  # every epoch its own order


@pytest.mark.parametrize("in_memory_mb", [512, 0])
def test_training_from_parquet_matches_training_from_frames(tmp_path, penguins, in_memory_mb):
    """Penguins trained from its split's Parquet files reaches the accuracy of the same fit from frames."""
    from pipeline.export import predict_keras
    from pipeline.features import resolve_features
    from pipeline.train import load_model, train

    df = penguins.dropna(subset=["species"]).reset_index(drop=True)
    spec = resolve_features(df, "species", None)
    train_df, val_df = df.iloc[::2].reset_index(drop=True), df.iloc[1::2].reset_index(drop=True)
    meta = fit_preprocessing(train_df, spec)
    (tmp_path / "split").mkdir()
    train_df.to_parquet(tmp_path / "split" / "train.parquet", index=False, row_group_size=40)
    val_df.to_parquet(tmp_path / "split" / "val.parquet", index=False)
    cfg = TrainingConfig(epochs=15, batch_size=16, early_stopping_patience=15, in_memory_mb=in_memory_mb,
                         shuffle_buffer=64)
    y = label_array(val_df, meta)

    def accuracy(result):
        return float((predict_keras(load_model(result.model_path, meta), val_df, meta).argmax(axis=1) == y).mean())

    from_frames = train(train_df, val_df, meta, ModelConfig("mlp"), cfg, tmp_path / "frames")
    from_files = train(tmp_path / "split" / "train.parquet", str(tmp_path / "split" / "val.parquet"), meta,
                       ModelConfig("mlp"), cfg, tmp_path / "files")
    assert from_files.epochs_run == from_frames.epochs_run and from_files.batch_size == 16
    assert accuracy(from_frames) > 0.9
    assert abs(accuracy(from_files) - accuracy(from_frames)) <= 0.03
    assert class_weights(meta, cfg.class_weight) is None  # penguins is balanced enough: no weights either way
