"""pipeline.encoders: the TfIdf layer gives what Keras' TextVectorization(tf_idf) + UnitNormalization give."""
from __future__ import annotations

import numpy as np
import pytest

TEXTS = ["Good product, good value!", "bad", "", "  ", "awful awful awful product", "Ünïcode café, très bon",
         "good good good good good", "unseen words only", "value: good? BAD... product", "good value " * 40]


def _keras_tfidf(vocabulary, idf, ngrams, texts):
    import keras

    tv = keras.layers.TextVectorization(vocabulary=vocabulary, idf_weights=idf, ngrams=ngrams, output_mode="tf_idf")
    return keras.layers.UnitNormalization()(tv(np.array(texts))).numpy()


def _vocabulary(texts, ngrams):
    """A vocabulary and IDF fitted as pipeline.preprocess fits them."""
    import pandas as pd

    from pipeline.config import FeaturesConfig
    from pipeline.preprocess import _text_vocabulary

    return _text_vocabulary(pd.Series(texts).to_numpy(dtype=object), FeaturesConfig(text_ngrams=ngrams))


@pytest.mark.parametrize("ngrams", [1, 2, 3])
def test_tfidf_equals_keras(ngrams):
    from pipeline.encoders import layers

    fitted = _vocabulary(TEXTS[:6] * 3, ngrams)
    assert fitted["vocabulary"][0] == "[UNK]" and len(fitted["vocabulary"]) > 5
    ours = layers()["TfIdf"](vocabulary=fitted["vocabulary"], idf=fitted["idf"], ngrams=ngrams)(np.array(TEXTS))
    want = _keras_tfidf(fitted["vocabulary"], fitted["idf"], ngrams, TEXTS)
    assert ours.shape == want.shape == (len(TEXTS), len(fitted["vocabulary"]))
    np.testing.assert_allclose(ours, want, atol=1e-6)
    assert np.all(np.asarray(ours)[[2, 3]] == 0)  # empty and blank texts: no terms, a row of zeros
    assert np.asarray(ours)[7, 0] > 0            # only unknown words: the out-of-vocabulary column


def test_tfidf_with_an_empty_vocabulary_counts_everything_as_unknown():
    from pipeline.encoders import layers

    out = np.asarray(layers()["TfIdf"](vocabulary=["[UNK]"], idf=[0.5], ngrams=2)(np.array(["a b", "", "NO TERM"])))
    np.testing.assert_allclose(out, [[1.0], [0.0], [1.0]])


def test_tfidf_config_round_trip_and_bad_vocabulary():
    import keras

    from pipeline.encoders import layers

    TfIdf = layers()["TfIdf"]
    layer = TfIdf(vocabulary=["[UNK]", "good", "bad"], idf=[1.0, 0.5, 2.0], ngrams=None, name="t_tfidf")
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    np.testing.assert_array_equal(np.asarray(again(np.array(["good bad x"]))), np.asarray(layer(np.array(["good bad x"]))))
    with pytest.raises(ValueError, match="t_tfidf: the vocabulary must start with"):
        TfIdf(vocabulary=["good"], idf=[1.0], name="t_tfidf")
    with pytest.raises(ValueError, match="one idf weight per entry"):
        TfIdf(vocabulary=["[UNK]", "good"], idf=[1.0])


def test_quantile_normals_equal_one_layer_per_column():
    """The fused layer gives each column's QuantileNormal values, side by side, on gaps, infinities, values
    outside the training range and a column with a single quantile."""
    from pipeline.encoders import layers
    from pipeline.preprocess import _quantiles

    L = layers()
    rng = np.random.default_rng(0)
    train = [rng.lognormal(2, 1, 500), np.where(rng.random(500) < 0.2, np.nan, rng.poisson(3, 500)),
             np.full(500, 7.0), rng.normal(size=500)]
    params = [_quantiles(t.astype(np.float32)) for t in train]
    assert params[2]["values"] == [7.0] and params[1]["indicator"] and not params[0]["indicator"]
    batch = [np.concatenate([rng.lognormal(2, 1, 60), [np.nan, np.inf, -np.inf, 1e9]]).astype(np.float32)
             for _ in train]
    batch[2][:3] = [6.0, 7.0, 8.0]
    fused = np.asarray(L["QuantileNormals"](columns=params)(batch))
    alone = np.concatenate([np.asarray(L["QuantileNormal"](**p)(b)) for p, b in zip(params, batch)], axis=1)
    assert fused.shape == alone.shape == (64, 2 + 3 + 2 + 2)
    np.testing.assert_array_equal(fused, alone)
    with pytest.raises(ValueError, match="no columns"):
        L["QuantileNormals"](columns=[])
