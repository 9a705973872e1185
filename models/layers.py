"""Building blocks shared by the builders (and usable by a user's own module): turning the processed inputs
into one vector, and the task's output head.

The processed inputs (see :class:`pipeline.preprocess.ModelSpec`) are ``numeric`` (a float matrix: numbers,
booleans and date parts, already scaled), ``cat__<column>`` (integer ids: categorical values, and the values of
numeric columns with few of them) and ``text__<column>`` (TF-IDF vectors).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

    from pipeline.preprocess import ModelSpec


def embedding_size(cardinality: int, cap: int = 32) -> int:
    """fast.ai's rule of thumb for an embedding's width, 1.6 * n^0.56, capped."""
    return int(max(2, min(cap, round(1.6 * cardinality ** 0.56))))


def encode(inputs: dict, spec: "ModelSpec", *, one_hot_max: int = 0, embedding_dim: int | None = None,
           text_units: int = 64, dropout: float = 0.0, images_ok: bool = False) -> "keras.KerasTensor":
    """One float vector per row: the numeric matrix, each categorical column one-hot (at most ``one_hot_max``
    ids) or embedded (``embedding_dim``, default by cardinality), each text vector projected to ``text_units``.
    Images are not read here: a builder that does not handle them (``images_ok``) refuses data that has them
    rather than train without them."""
    import keras

    if spec.images and not images_ok:
        raise ValueError(f"image column(s) {', '.join(k.removeprefix('image__') for k in spec.images)}: this "
                         f"builder reads tables; use model.builder: cnn or transfer (models.image)")

    parts = []
    if "numeric" in inputs:
        parts.append(inputs["numeric"])
    for name, n in spec.categorical.items():
        if n <= one_hot_max:
            parts.append(keras.layers.CategoryEncoding(n, output_mode="one_hot", name=f"{name}_onehot")(inputs[name]))
        else:
            dim = embedding_dim or embedding_size(n)
            emb = keras.layers.Embedding(n, dim, name=f"{name}_embedding")(inputs[name])
            if dropout:
                emb = keras.layers.Dropout(dropout, name=f"{name}_embedding_dropout")(emb)
            parts.append(emb)
    for name in spec.text:
        parts.append(keras.layers.Dense(text_units, activation="relu", name=f"{name}_projection")(inputs[name]))
    return parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="encoded")(parts)


def regularizer(l1: float = 0.0, l2: float = 0.0):
    """A kernel regularizer with these L1 and L2 penalties (None when both are 0)."""
    import keras

    if not l1 and not l2:
        return None
    return keras.regularizers.L1L2(l1=float(l1), l2=float(l2))


def head(x, spec: "ModelSpec", kernel_regularizer=None):
    """Class probabilities (softmax) for classification, one standardized value for regression; float32 even
    under a mixed-precision policy: softmax and loss in float16 lose probability mass."""
    import keras

    if spec.task == "classification":
        return keras.layers.Dense(spec.n_outputs, activation="softmax", dtype="float32", name="probabilities",
                                  kernel_regularizer=kernel_regularizer)(x)
    return keras.layers.Dense(1, dtype="float32", name="value_std", kernel_regularizer=kernel_regularizer)(x)
