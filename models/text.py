"""Text builders: a convolutional network over word embeddings (``text_cnn``) and a small Transformer encoder
(``text_transformer``), for tables with a text column (or only one).

Both read the ``tokens__<column>`` inputs: the ids of a text column's first ``features.text_sequence_length``
words (0: padding, 1: a word the training split did not have), made by the preprocessor's ``TextVectorization``
inside the served model, so the endpoint still takes the raw string. What each makes of its sequences is
concatenated with the table's other columns (numbers and categorical ids through ``models.layers.encode``) and,
with ``tfidf`` on, the TF-IDF bag of words and bigrams of the same text columns projected (what a sequence model
alone learns slowly on small data), then a Dense layer with dropout and the task's head.

Only built-in Keras layers and ``keras.ops`` are used (no custom layer classes), so a saved body loads in any
process without this module being imported first.
"""
from __future__ import annotations

from typing import Sequence


def _sequences(spec, label: str) -> dict[str, tuple[int, int]]:
    if not spec.tokens:
        raise ValueError(f"builder {label} needs token sequences: set features.text_sequence_length (e.g. 200) "
                         "so that each text column also becomes the ids of its words (tokens__<column>)")
    if spec.images:
        raise ValueError(f"image column(s) {', '.join(k.removeprefix('image__') for k in spec.images)}: builder "
                         f"{label} reads text and tables; use model.builder: cnn or transfer (models.image)")
    return dict(spec.tokens)


def _others(inputs: dict, spec, *, tfidf: bool, text_units: int, dropout: float, tfidf_dropout: float,
            l2: float) -> list:
    """The other inputs as vectors: numbers and categorical ids (``models.layers.encode``), and, when ``tfidf``,
    each TF-IDF vector with dropout on its n-grams (``tfidf_dropout``) projected to ``text_units`` (L2 penalty
    ``l2``)."""
    import dataclasses

    import keras

    from models.layers import encode, regularizer

    parts = []
    rest_spec = dataclasses.replace(spec, text={})
    if rest_spec.numeric_width or rest_spec.categorical:
        rest = {k: v for k, v in inputs.items() if not k.startswith(("tokens__", "text__"))}
        parts.append(encode(rest, rest_spec, dropout=float(dropout) / 2))
    for name in spec.text if tfidf else ():
        x = inputs[name]
        if tfidf_dropout:
            x = keras.layers.Dropout(float(tfidf_dropout), name=f"{name}_dropout")(x)
        parts.append(keras.layers.Dense(int(text_units), activation="relu", kernel_regularizer=regularizer(0.0, l2),
                                        name=f"{name}_projection")(x))
    return parts


def _top(parts: list, spec, *, hidden_units: int, dropout: float, l2: float):
    """Concatenate, Dense(hidden_units) + dropout, the task's head."""
    import keras

    from models.layers import head, regularizer

    reg = regularizer(0.0, l2)
    x = parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="text_and_rest")(parts)
    if dropout:
        x = keras.layers.Dropout(float(dropout), name="features_dropout")(x)
    if hidden_units:
        x = keras.layers.Dense(int(hidden_units), activation="relu", kernel_regularizer=reg, name="hidden")(x)
        if dropout:
            x = keras.layers.Dropout(float(dropout), name="hidden_dropout")(x)
    return head(x, spec, kernel_regularizer=reg)


def build_cnn(inputs, spec, *, embedding_dim: int = 64, filters: int = 64, kernel_sizes: Sequence[int] = (2, 3, 5),
              hidden_units: int = 64, dropout: float = 0.5, tfidf: bool = True, text_units: int = 64,
              tfidf_dropout: float = 0.0, l2: float = 0.0):
    """A text CNN (Kim, 2014) per text column, beside the other columns.

    Args:
        embedding_dim: width of the word embeddings (one table per text column, learned from scratch).
        filters: convolution filters per kernel width.
        kernel_sizes: the widths (in words) of the parallel Conv1D layers, each followed by a global max over
            the positions: each filter finds its phrase of that many words anywhere in the text.
        hidden_units: the Dense layer between the concatenated features and the head (0: none).
        dropout: dropout rate on the concatenated features and after the hidden layer (half of it on the
            categorical embeddings).
        tfidf: also read the TF-IDF vectors (``text__<column>``: the bag of words and bigrams), projected to
            ``text_units``.
        text_units: the width each TF-IDF vector is projected to.
        tfidf_dropout: dropout rate on the TF-IDF vectors' n-grams before their projection (0: none).
        l2: L2 penalty on the TF-IDF projections', the hidden layer's and the head's weights.
    """
    import keras

    if not kernel_sizes:
        raise ValueError("model.params.kernel_sizes: give at least one convolution width, e.g. [2, 3, 5]")
    parts = []
    for name, (ids, length) in _sequences(spec, "text_cnn").items():
        x = keras.layers.Embedding(int(ids), int(embedding_dim), name=f"{name}_embedding")(inputs[name])
        for k in dict.fromkeys(min(int(k), length) for k in kernel_sizes):  # a kernel no wider than the text
            h = keras.layers.Conv1D(int(filters), k, activation="relu", name=f"{name}_conv{k}")(x)
            parts.append(keras.layers.GlobalMaxPooling1D(name=f"{name}_conv{k}_max")(h))
    parts += _others(inputs, spec, tfidf=tfidf, text_units=text_units, dropout=dropout, tfidf_dropout=tfidf_dropout,
                     l2=l2)
    return _top(parts, spec, hidden_units=hidden_units, dropout=dropout, l2=l2)


def build_transformer(inputs, spec, *, embedding_dim: int = 64, heads: int = 4, blocks: int = 1,
                      ff_units: int = 128, hidden_units: int = 64, dropout: float = 0.2, tfidf: bool = True,
                      text_units: int = 64, tfidf_dropout: float = 0.0, l2: float = 0.0):
    """A small Transformer encoder per text column, beside the other columns.

    Each word id is embedded and a learned embedding of its position added; ``blocks`` pre-norm encoder blocks
    follow (LayerNorm -> multi-head self-attention that ignores the padding -> dropout, added back; LayerNorm ->
    Dense(``ff_units``, gelu) -> Dense(``embedding_dim``) -> dropout, added back), then a final LayerNorm and the
    mean over the words (padding left out; an empty text gives zeros).

    Args:
        embedding_dim: width of the word and position embeddings and of the blocks.
        heads: attention heads per block (each ``embedding_dim // heads`` wide).
        blocks: encoder blocks.
        ff_units: width of each block's feed-forward layer.
        hidden_units: the Dense layer between the concatenated features and the head (0: none).
        dropout: dropout rate in the blocks (attention weights and residual branches), on the concatenated
            features and after the hidden layer.
        tfidf: also read the TF-IDF vectors (``text__<column>``), projected to ``text_units``.
        text_units: the width each TF-IDF vector is projected to.
        tfidf_dropout: dropout rate on the TF-IDF vectors' n-grams before their projection (0: none).
        l2: L2 penalty on the TF-IDF projections', the hidden layer's and the head's weights.
    """
    import keras
    from keras import ops

    dim, n_heads = int(embedding_dim), max(1, int(heads))
    parts = []
    for name, (ids, length) in _sequences(spec, "text_transformer").items():
        tokens = inputs[name]
        x = keras.layers.Embedding(int(ids), dim, name=f"{name}_token_embedding")(tokens)
        positions = ops.cumsum(ops.ones_like(tokens), axis=1) - 1  # 0 .. length-1 in each row
        x = keras.layers.Add(name=f"{name}_embedded")(
            [x, keras.layers.Embedding(int(length), dim, name=f"{name}_position_embedding")(positions)])
        present = ops.not_equal(tokens, 0)                          # (batch, length): a word, not padding
        keys = ops.repeat(ops.expand_dims(present, 1), int(length), axis=1)  # every query sees only the words
        for i in range(int(blocks)):
            h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_block{i}_norm1")(x)
            h = keras.layers.MultiHeadAttention(n_heads, max(1, dim // n_heads), dropout=float(dropout),
                                                name=f"{name}_block{i}_attention")(h, h, attention_mask=keys)
            h = keras.layers.Dropout(float(dropout), name=f"{name}_block{i}_dropout1")(h)
            x = keras.layers.Add(name=f"{name}_block{i}_residual1")([x, h])
            h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_block{i}_norm2")(x)
            h = keras.layers.Dense(int(ff_units), activation="gelu", name=f"{name}_block{i}_ff1")(h)
            h = keras.layers.Dense(dim, name=f"{name}_block{i}_ff2")(h)
            h = keras.layers.Dropout(float(dropout), name=f"{name}_block{i}_dropout2")(h)
            x = keras.layers.Add(name=f"{name}_block{i}_residual2")([x, h])
        x = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_final_norm")(x)
        weight = ops.expand_dims(ops.cast(present, x.dtype), -1)
        parts.append(ops.sum(x * weight, axis=1) / ops.maximum(ops.sum(weight, axis=1), 1.0))
    parts += _others(inputs, spec, tfidf=tfidf, text_units=text_units, dropout=dropout, tfidf_dropout=tfidf_dropout,
                     l2=l2)
    return _top(parts, spec, hidden_units=hidden_units, dropout=dropout, l2=l2)
