from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.features import FeatureSpec, resolve_features
from pipeline.config import FeaturesConfig
from pipeline.preprocess import (PreprocessMeta, auto_batch_size, build_preprocessor, class_weights,
                                 feature_arrays, fit_preprocessing, label_array, processed_dataset, save_preprocessing)

SPEC = FeatureSpec(("x",), ("color",), "label", "classification")


def _run(pre, rows: dict) -> dict:
    return {k: np.asarray(v) for k, v in pre({k: np.asarray(v) for k, v in rows.items()}).items()}


def mixed_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Every feature kind, with missing values."""
    rng = np.random.default_rng(seed)
    words = np.array("good bad fine great awful ok lovely poor".split())
    return pd.DataFrame({
        "num": np.where(rng.random(n) < 0.1, np.nan, rng.lognormal(2, 1, n)),
        "visits": np.where(rng.random(n) < 0.1, np.nan, rng.poisson(3, n)),  # few values: also embedded by value
        "flag": np.where(rng.random(n) < 0.1, None, rng.choice(["yes", "no"], n)),
        "color": rng.choice(["red", "green", "blue", None], n),
        "code": [f"C{i}" for i in rng.integers(0, 80, n)],
        "review": [" ".join(rng.choice(words, 5)) for _ in range(n)],
        "when": np.where(rng.random(n) < 0.05, None,
                         (pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 10_000, n), unit="h"))
                         .strftime("%Y-%m-%d %H:%M:%S")),
        "label": rng.choice(["a", "b", "c"], n),
    })


def mixed_spec(df):
    return resolve_features(df, "label", None, kinds={"code": "high_cardinality", "review": "text"})


def test_adapted_on_training_rows_only(tiny_frame):
    meta = fit_preprocessing(tiny_frame.head(6), SPEC)  # train = the six "a" rows
    assert meta.numeric["x"]["fill"] == pytest.approx(0.3)  # median of 0.1..0.5, NaN ignored
    assert meta.numeric["x"]["indicator"] is True            # the training rows had a gap
    assert meta.categorical["color"]["vocabulary"] == ["red", "blue", ""]  # by frequency; missing is a value
    assert meta.class_names == ["a"] and meta.class_counts == {"a": 6}


def test_known_outputs(tiny_frame):
    meta = fit_preprocessing(tiny_frame, SPEC, FeaturesConfig(min_frequency=1))
    out = _run(build_preprocessor(meta), {"x": np.array([meta.numeric["x"]["fill"], np.nan, 1e6], dtype=np.float32),
                                          "color": np.array(["green", "", "purple"])})
    # numeric: [quantile-normal, standardized, missing]; the median is the 50% quantile -> 0
    num = out["numeric"]
    assert num.shape == (3, 3)
    np.testing.assert_allclose(num[:2, 0], [0.0, 0.0], atol=0.05)
    np.testing.assert_array_equal(num[:, 2], [0, 1, 0])
    assert num[2, 0] == pytest.approx(3.09, abs=0.01) and num[2, 1] == 5.0  # clipped: beyond the training range
    vocab = meta.categorical["color"]["vocabulary"]
    assert vocab == ["green", "red", "blue", ""]  # green and red tie at 4: alphabetical
    np.testing.assert_array_equal(out["cat__color"], [1, 4, 0])  # OOV slot 0, then the vocabulary


def test_numbers_of_few_values_are_also_ids():
    """A numeric column of few distinct values gets the id of its value besides the number: kept values (seen
    min_frequency times) each their own id, a rare or unseen one the id of the nearest kept one, missing the last."""
    x = [1.0] * 3 + [2.0] * 3 + [4.0] * 3 + [10.0] * 3 + [7.0] + [np.nan] * 2
    df = pd.DataFrame({"x": x, "cont": np.linspace(0, 1, len(x)), "y": [0.0] * len(x)})
    spec = FeatureSpec(("x", "cont"), (), "y", "regression")
    meta = fit_preprocessing(df, spec, FeaturesConfig(value_ids=10))
    assert "cont" not in meta.value_ids  # 15 distinct values, more than value_ids
    assert meta.value_ids["x"]["boundaries"] == [1.5, 3.0, 7.0]  # between 1, 2, 4, 10; the single 7 is rare
    assert meta.model_spec().categorical == {"cat__x": 5}
    ids = _run(build_preprocessor(meta), {"x": np.array([1, 2, 4, 10, 7, 6.9, 2.6, 100, -3, np.nan], np.float32),
                                          "cont": np.zeros(10, np.float32)})["cat__x"]
    np.testing.assert_array_equal(ids, [0, 1, 2, 3, 3, 2, 1, 3, 0, 4])
    assert fit_preprocessing(df, spec, FeaturesConfig(value_ids=0)).value_ids == {}
    # a 0/1 column says nothing more as ids; a column of values each seen once has none to keep
    assert fit_preprocessing(df.assign(x=[0.0, 1.0] * 7 + [0.0]), spec).value_ids == {}


def test_high_cardinality_is_capped_and_hashed():
    values = [f"v{i}" for i in range(50) for _ in range(3)]
    df = pd.DataFrame({"c": values, "y": [0, 1] * 75})
    spec = FeatureSpec((), ("c",), "y", "classification", {"c": "high_cardinality"})
    meta = fit_preprocessing(df, spec, FeaturesConfig(max_vocabulary=10, hash_buckets=8))
    assert len(meta.categorical["c"]["vocabulary"]) == 10 and meta.categorical["c"]["oov"] == 8
    assert meta.model_spec().categorical == {"cat__c": 18}
    ids = _run(build_preprocessor(meta), {"c": np.array(values)})["cat__c"]
    assert ids.min() >= 0 and ids.max() < 18 and len(set(ids[ids < 8])) > 1  # unseen values spread over buckets


def test_dates_become_calendar_parts():
    df = pd.DataFrame({"d": ["2024-01-01 00:00:00", "2024-07-01 12:00:00", "2023-12-31 23:30:00", "garbage"],
                       "y": [1.0, 2.0, 3.0, 4.0]})
    spec = FeatureSpec((), ("d",), "y", "regression", {"d": "datetime"}, {"d": {"format": "ymd", "has_time": True}})
    meta = fit_preprocessing(df, spec)
    out = _run(build_preprocessor(meta), {"d": df["d"].to_numpy()})["numeric"]
    # [elapsed, year, month sin/cos, day sin/cos, weekday sin/cos, hour sin/cos, missing]
    assert out.shape == (4, 11)
    np.testing.assert_array_equal(out[:, -1], [0, 0, 0, 1])
    np.testing.assert_allclose(out[0, 2:4], [0.0, 1.0], atol=1e-6)        # January: angle 0
    np.testing.assert_allclose(out[1, 2:4], [0.0, -1.0], atol=1e-6)       # July: half way round
    monday = 0  # 2024-01-01 was a Monday
    np.testing.assert_allclose(out[0, 6:8], [np.sin(2 * np.pi * monday / 7), 1.0], atol=1e-6)
    np.testing.assert_allclose(out[1, 8:10], [0.0, -1.0], atol=1e-6)      # noon
    assert out[2, 0] < out[0, 0] < out[1, 0]                              # elapsed time is ordered
    assert np.all(out[3, :-1] == 0)                                       # unparseable: missing, parts zeroed


def test_text_is_tfidf_of_words_and_bigrams():
    df = pd.DataFrame({"t": ["good product", "bad product", "good good value", "bad"] * 5, "y": [1, 0, 1, 0] * 5})
    spec = FeatureSpec((), ("t",), "y", "classification", {"t": "text"})
    meta = fit_preprocessing(df, spec)
    vocab = meta.text["t"]["vocabulary"]
    assert "good" in vocab and "good product" in vocab and vocab[0] == "[UNK]"
    out = _run(build_preprocessor(meta), {"t": np.array(["Good, product!", ""])})["text__t"]
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), [1.0, 0.0], atol=1e-5)  # L2-normalised; empty -> 0
    assert out[0, vocab.index("good product")] > 0 and out[0, vocab.index("bad")] == 0


def test_training_pipeline_and_exported_model_see_the_same_features(tmp_path):
    """The preprocessor mapped over tf.data (what fit sees) and the one chained into the exported SavedModel give
    the same tensors, on every kind; and the SavedModel's answers equal the Keras model's."""
    import tensorflow as tf

    from pipeline.config import ModelConfig
    from pipeline.export import predict_keras, predict_saved_model, write_candidate
    from pipeline.preprocess import full_model
    from pipeline.train import build_body

    df = mixed_frame()
    spec = mixed_spec(df)
    assert set(spec.kinds.values()) == {"numeric", "boolean", "categorical", "high_cardinality", "text", "datetime"}
    meta = fit_preprocessing(df, spec)
    assert "cat__visits" in meta.model_spec().categorical and "cat__num" not in meta.model_spec().categorical
    pre = build_preprocessor(meta)
    fed = processed_dataset(df, meta, pre, batch_size=64, labels=False)
    in_pipeline = {k: np.concatenate([b[k].numpy() for b in fed]) for k in meta.model_spec().inputs()}
    body = build_body(meta, ModelConfig("tabular"))
    served = full_model(meta, body)
    # the served model's preprocessor, called on the raw rows as the signature passes them
    inner = next(layer for layer in served.layers if layer.name.startswith("preprocessor"))
    direct = {k: np.asarray(v) for k, v in inner({k: tf.constant(v) for k, v in feature_arrays(df, spec).items()}).items()}
    for k in in_pipeline:
        np.testing.assert_allclose(in_pipeline[k], direct[k], atol=1e-6, err_msg=k)
    tmp, diff = write_candidate(served, meta, df, tmp_path, {}, None)
    assert diff <= 1e-5
    np.testing.assert_allclose(predict_saved_model(tmp, df, spec), predict_keras(served, df, meta), atol=1e-5)


def test_meta_round_trip(tmp_path):
    df = mixed_frame(80)
    meta = fit_preprocessing(df, mixed_spec(df))
    path = save_preprocessing(meta, tmp_path)["meta"]
    assert PreprocessMeta.load(path) == meta


def test_feature_and_label_arrays(tiny_frame):
    meta = fit_preprocessing(tiny_frame, SPEC)
    arrays = feature_arrays(tiny_frame, SPEC)
    assert arrays["x"].dtype == np.float32 and np.isnan(arrays["x"][5])
    assert arrays["color"][3] == ""
    frame = tiny_frame.copy()
    frame.loc[0, "label"] = "zzz"
    np.testing.assert_array_equal(label_array(frame, meta), [-1] + [0] * 5 + [1] * 6)


def test_string_inputs_of_other_dtypes():
    df = pd.DataFrame({"b": [True, False, None], "d": pd.to_datetime(["2024-01-02 03:04:05", None, "2024-01-03 00:00:00"]),
                       "code": [12345.0, np.nan, 7.0]})
    arrays = feature_arrays(df, FeatureSpec((), ("b", "d", "code"), "y", "classification"))
    assert list(arrays["b"]) == ["true", "false", ""]
    assert list(arrays["d"]) == ["2024-01-02 03:04:05", "", "2024-01-03 00:00:00"]
    assert list(arrays["code"]) == ["12345", "", "7"]


def test_class_weights_and_batch_size():
    meta = PreprocessMeta({"numeric": [], "categorical": [], "label": "y", "task": "classification"}, ["a", "b"],
                          class_counts={"a": 900, "b": 100})
    auto = class_weights(meta, "auto")
    assert auto[1] > auto[0] and auto[1] / auto[0] == pytest.approx(3.0)   # sqrt of the 9x imbalance
    assert class_weights(meta, "balanced")[1] / class_weights(meta, "balanced")[0] == pytest.approx(9.0)
    assert 900 * auto[0] + 100 * auto[1] == pytest.approx(1000)              # mean weight 1 per row
    balanced = PreprocessMeta(meta.spec, ["a", "b"], class_counts={"a": 500, "b": 400})
    assert class_weights(balanced, "auto") is None and class_weights(meta, "none") is None
    assert [auto_batch_size(n) for n in (100, 10_000, 300_000, 10_000_000)] == [32, 128, 512, 1024]


def test_columns_named_like_internal_layers(tmp_path):
    """Columns called like the layers the pipeline adds (value, x_quantile, numeric, preprocessor) still export."""
    from pipeline.config import ModelConfig
    from pipeline.export import write_candidate
    from pipeline.preprocess import full_model
    from pipeline.train import build_body

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"value": rng.normal(size=60), "x": rng.normal(size=60), "x_quantile": rng.normal(size=60),
                       "numeric": rng.normal(size=60), "preprocessor": rng.choice(["a", "b"], 60),
                       "y": rng.normal(size=60)})
    meta = fit_preprocessing(df, resolve_features(df, "y", "regression"))
    served = full_model(meta, build_body(meta, ModelConfig("linear")))
    tmp, diff = write_candidate(served, meta, df, tmp_path, {}, None)
    assert diff <= 1e-5


def test_fit_from_parquet_is_the_frame_fit_or_a_sample_with_exact_classes(tmp_path):
    """A split of at most fit_sample_rows rows is fitted as the frame is; a larger one on a sample, with its
    classes (a rare one the sample may miss included), their counts and the rows counted over every row."""
    import dataclasses

    from pipeline.preprocess import fit_preprocessing_parquet

    df = mixed_frame(600)
    df.loc[[5, 300], "label"] = "rare"
    df.to_parquet(tmp_path / "train.parquet", index=False, row_group_size=100)
    spec = mixed_spec(df)
    assert fit_preprocessing_parquet(tmp_path / "train.parquet", spec) == fit_preprocessing(df, spec)

    sampled = fit_preprocessing_parquet(tmp_path / "train.parquet", spec, FeaturesConfig(fit_sample_rows=50), seed=1)
    whole = fit_preprocessing(df, spec)
    assert sampled.class_names == whole.class_names == ["a", "b", "c", "rare"]
    assert sampled.class_counts == whole.class_counts and sampled.rows == 600
    assert sampled.numeric["num"]["fill"] != whole.numeric["num"]["fill"]  # the encodings come from the sample
    assert set(sampled.categorical["color"]["vocabulary"]) <= set(whole.categorical["color"]["vocabulary"])

    rng = np.random.default_rng(0)
    reg = pd.DataFrame({"x": rng.normal(size=400), "y": rng.normal(10, 3, 400)})
    reg.to_parquet(tmp_path / "reg.parquet", index=False)
    rspec = FeatureSpec(("x",), (), "y", "regression")
    fitted = fit_preprocessing_parquet(tmp_path / "reg.parquet", rspec, FeaturesConfig(fit_sample_rows=40))
    exact = fit_preprocessing(reg, rspec)
    assert (fitted.label_mean, fitted.label_std) == pytest.approx((exact.label_mean, exact.label_std), rel=1e-9)
    assert dataclasses.replace(fitted, numeric=exact.numeric, value_ids=exact.value_ids, label_mean=exact.label_mean,
                               label_std=exact.label_std) == exact


def test_a_text_column_without_a_word_in_training_is_fitted_and_served():
    """Punctuation and empty strings only: the TF-IDF is the out-of-vocabulary column alone and the token ids
    are padding and out-of-vocabulary; the served model takes any text."""
    from pipeline.config import ModelConfig
    from pipeline.export import predict_keras
    from pipeline.preprocess import full_model
    from pipeline.train import build_body

    df = mixed_frame()
    df["review"] = ["!!! ... ??"] * (len(df) - 1) + [""]
    meta = fit_preprocessing(df, mixed_spec(df), FeaturesConfig(text_sequence_length=8))
    assert meta.text["review"]["vocabulary"] == ["[UNK]"] and meta.tokens["review"]["vocabulary"] == []
    served_rows = df.head(3).assign(review=["...", "a word never seen", ""])
    out = _run(build_preprocessor(meta), feature_arrays(served_rows, meta.feature_spec))
    np.testing.assert_array_equal(out["text__review"], [[0.0], [1.0], [0.0]])
    np.testing.assert_array_equal(out["tokens__review"][:, :4], [[0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    for builder in ("tabular", "text_cnn"):
        served = full_model(meta, build_body(meta, ModelConfig(builder)))
        assert np.isfinite(predict_keras(served, served_rows, meta)).all()
