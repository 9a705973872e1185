"""Text columns as word-id sequences (``features.text_sequence_length``) and the builders that read them
(``text_cnn``, ``text_transformer``): ids, padding and out-of-vocabulary words; the preprocessor rebuilt from the
saved meta; each builder trained on a tiny table; the served model taking raw strings, an empty one included."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import FeaturesConfig, ModelConfig, TrainingConfig
from pipeline.features import FeatureSpec
from pipeline.preprocess import PreprocessMeta, build_preprocessor, fit_preprocessing, label_array

SPEC = FeatureSpec((), ("t",), "y", "classification", {"t": "text"})
MIXED = FeatureSpec(("n",), ("t", "c"), "y", "classification", {"t": "text", "c": "categorical"})


def _ids(pre, texts) -> np.ndarray:
    return np.asarray(pre({"t": np.array(texts)})["tokens__t"])


def tiny_table(n: int = 360, seed: int = 0) -> pd.DataFrame:
    """Two classes told apart by which topic words a text has, mostly among shared filler words; in a third
    of the rows a word of the other class follows ``not`` (it counts against that class)."""
    rng = np.random.default_rng(seed)
    topic = {"a": np.array("refund invoice charged card payment".split()),
             "b": np.array("crash error screen install slow".split())}
    filler = np.array("i the my it was please help still again order today".split())
    rows = []
    for i in range(n):
        label = "a" if i % 2 else "b"
        other = "b" if label == "a" else "a"
        words = list(rng.choice(filler, rng.integers(4, 9)))
        for w in rng.choice(topic[label], 2):
            words.insert(int(rng.integers(0, len(words) + 1)), str(w))
        if rng.random() < 0.3:
            words[:0] = ["not", str(rng.choice(topic[other]))]
        rows.append({"t": " ".join(words), "n": float(rng.normal()), "c": str(rng.choice(["x", "y"])), "y": label})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ tokens__
def test_token_ids_padding_truncation_and_oov():
    df = pd.DataFrame({"t": ["good product", "Good, GOOD day!", "bad product", None, "the day", "good day"],
                       "y": list("ababab")})  # good 4 times, day 3, product 2
    meta = fit_preprocessing(df, SPEC, FeaturesConfig(text_sequence_length=4, min_frequency=1))
    vocab = meta.tokens["t"]["vocabulary"]
    assert vocab[:3] == ["good", "day", "product"]          # by frequency; case and punctuation stripped
    assert "" not in vocab and "[UNK]" not in vocab            # padding and OOV are ids 0 and 1, not words
    assert meta.model_spec().tokens == {"tokens__t": (len(vocab) + 2, 4)}
    pre = build_preprocessor(meta)
    ids = _ids(pre, ["Good product zebra", "", "good good good good day", "DAY"])
    assert ids.dtype == np.int64 and ids.shape == (4, 4)
    good, day, product = (vocab.index(w) + 2 for w in ("good", "day", "product"))
    np.testing.assert_array_equal(ids, [[good, product, 1, 0],    # zebra: out of vocabulary
                                        [0, 0, 0, 0],             # an empty text: all padding
                                        [good] * 4,               # the first 4 words only
                                        [day, 0, 0, 0]])


def test_preprocessor_from_saved_meta_gives_the_same_ids(tmp_path):
    df = tiny_table(80)
    meta = fit_preprocessing(df, SPEC, FeaturesConfig(text_sequence_length=12))
    meta.save(tmp_path / "meta.json")
    loaded = PreprocessMeta.load(tmp_path / "meta.json")
    assert loaded.tokens == meta.tokens and loaded.model_spec().tokens == meta.model_spec().tokens
    texts = [*df["t"].head(20), "", "not a word we know", "refund " * 50]
    np.testing.assert_array_equal(_ids(build_preprocessor(meta), texts), _ids(build_preprocessor(loaded), texts))
    assert loaded.summary()["t"]["sequence"] == {"vocabulary": len(meta.tokens["t"]["vocabulary"]), "length": 12}


def test_vocabulary_capped_by_text_max_tokens():
    df = pd.DataFrame({"t": [f"w{i} w{i % 7} common" for i in range(200)], "y": ["a", "b"] * 100})
    meta = fit_preprocessing(df, SPEC, FeaturesConfig(text_sequence_length=3, text_max_tokens=10))
    ids, length = meta.model_spec().tokens["tokens__t"]
    assert ids <= 10 and length == 3
    assert meta.tokens["t"]["vocabulary"][0] == "common"
    assert int(_ids(build_preprocessor(meta), ["w150 common"])[0, 0]) == 1  # a rare word: out of vocabulary


def test_no_sequences_unless_configured_and_builders_say_so():
    df = tiny_table(40)
    meta = fit_preprocessing(df, SPEC)
    assert meta.tokens == {} and meta.model_spec().tokens == {}
    assert "tokens__t" not in build_preprocessor(meta)({"t": np.array(["refund"])})
    from pipeline.train import build_body

    for builder in ("text_cnn", "text_transformer"):
        with pytest.raises(ValueError, match=f"builder {builder} needs token sequences: set "
                                             r"features.text_sequence_length \(e.g. 200\)"):
            build_body(meta, ModelConfig(builder=builder))


def test_params_checked_against_the_builders():
    from models import BUILDERS, check_params

    check_params(BUILDERS["text_cnn"], {"filters": 32, "kernel_sizes": [2, 3], "tfidf": False}, "'text_cnn'")
    check_params(BUILDERS["text_transformer"], {"heads": 2, "blocks": 2, "dropout": 0.2}, "'text_transformer'")
    with pytest.raises(ValueError, match="did you mean 'filters'"):
        check_params(BUILDERS["text_cnn"], {"filter": 32}, "'text_cnn'")
    with pytest.raises(ValueError, match="dropout"):
        check_params(BUILDERS["text_transformer"], {"dropout": 1.5}, "'text_transformer'")


def test_example_config_loads():
    from pathlib import Path

    from pipeline.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "conf" / "examples" / "text.yaml")
    assert cfg.model.builder == "text_cnn" and cfg.features.text_sequence_length


# ------------------------------------------------------------------------------------------------ builders
@pytest.fixture(scope="module")
def splits():
    df = tiny_table(360)
    return df.iloc[:240].reset_index(drop=True), df.iloc[240:300].reset_index(drop=True), \
        df.iloc[300:].reset_index(drop=True)


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory):
    """Each builder fitted for a few epochs by the project's training code; (meta, model config, result)."""
    from pipeline.train import train

    train_df, val_df, _ = splits
    meta = fit_preprocessing(train_df, MIXED, FeaturesConfig(text_sequence_length=16, min_frequency=1))
    out = {}
    params = {"text_cnn": {"embedding_dim": 16, "filters": 16, "kernel_sizes": [1, 2, 3], "hidden_units": 16},
              "text_transformer": {"embedding_dim": 16, "heads": 2, "ff_units": 32, "hidden_units": 16,
                                   "tfidf": False}}
    for builder, p in params.items():
        model_cfg = ModelConfig(builder=builder, params=p)
        cfg = TrainingConfig(epochs=12, batch_size=32, learning_rate=0.01, early_stopping_patience=12)
        out[builder] = (meta, model_cfg, train(train_df, val_df, meta, model_cfg, cfg,
                                               tmp_path_factory.mktemp(builder), seed=0))
    return out


@pytest.mark.parametrize("builder", ["text_cnn", "text_transformer"])
def test_builder_learns_and_served_model_takes_raw_strings(builder, trained, splits, tmp_path):
    import tensorflow as tf

    from pipeline.contracts import SIGNATURE
    from pipeline.export import predict_keras, write_candidate
    from pipeline.train import load_model

    meta, model_cfg, result = trained[builder]
    _, _, test_df = splits
    model = load_model(result.model_path, meta, model_cfg)   # the body saved, loaded back, preprocessor in front
    accuracy = float((predict_keras(model, test_df, meta).argmax(axis=1) == label_array(test_df, meta)).mean())
    assert accuracy >= 0.8, f"{builder}: test accuracy {accuracy:.2f} (chance 0.5)"

    saved, diff = write_candidate(model, meta, test_df, tmp_path / "staging", {})
    assert diff <= 1e-5
    serve = tf.saved_model.load(str(saved)).signatures[SIGNATURE]
    texts = ["refund refund my invoice", "the app shows an error on the screen", "", "zzz qqq", "crash " * 100]
    out = serve(t=tf.constant(texts), c=tf.constant(["x", "y", "", "x", "unseen"]),
                n=tf.constant([0.0, 1.0, np.nan, 0.0, 0.0], tf.float32))
    probs = out["probabilities"].numpy()
    assert probs.shape == (5, 2) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    classes = [c.decode() for c in out["classes"].numpy()[0]]
    assert [classes[i] for i in probs[:2].argmax(axis=1)] == ["a", "b"]


def test_generated_text_table():
    from pipeline.generate_text import LABEL, TEAMS, generate_text_table

    df = generate_text_table(2000, seed=3)
    pd.testing.assert_frame_equal(df, generate_text_table(2000, seed=3))   # a pure function of rows and seed
    assert list(df.columns) == ["message", "channel", LABEL] and set(df[LABEL]) == set(TEAMS)
    words = df["message"].str.split().str.len()
    assert words[words > 0].between(10, 40).all() and 0 < (words == 0).mean() < 0.05
    assert 0.25 < (df[LABEL] == "billing").mean() < 0.35
    with pytest.raises(ValueError, match="rows"):
        generate_text_table(0)
