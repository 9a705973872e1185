"""The default model for tables: embeddings for categorical columns, then residual MLP blocks.

Categorical ids are embedded (width by cardinality), text TF-IDF vectors projected, and concatenated with the
numeric matrix (quantile-normalized numbers, booleans, date parts); a Dense layer maps that to ``width`` units,
followed by ``blocks`` pre-norm residual blocks (LayerNorm -> Dense(2 x width) -> activation -> dropout ->
Dense(width) -> dropout, added back), and the task's head; ``l1``/``l2`` penalize the Dense layers' weights. The
width follows the data when not given: 64 units under 2,000 training rows, 128 under 20,000, 256 beyond, so small
tables do not get a model they overfit.
"""
from __future__ import annotations


def auto_width(rows: int) -> int:
    return 64 if rows < 2_000 else 128 if rows < 20_000 else 256


def build(inputs, spec, *, width: int | None = None, blocks: int = 2, dropout: float = 0.15,
          embedding_dim: int | None = None, activation: str = "gelu", text_units: int = 64, l1: float = 0.0,
          l2: float = 0.0):
    import keras

    from models.layers import encode, head, regularizer

    width = int(width or auto_width(spec.rows))
    reg = regularizer(l1, l2)
    x = encode(inputs, spec, embedding_dim=embedding_dim, text_units=text_units, dropout=dropout / 2)
    x = keras.layers.Dense(width, kernel_regularizer=reg, name="stem")(x)
    for i in range(int(blocks)):
        h = keras.layers.LayerNormalization(name=f"block{i}_norm")(x)
        h = keras.layers.Dense(2 * width, activation=activation, kernel_regularizer=reg, name=f"block{i}_expand")(h)
        h = keras.layers.Dropout(dropout, name=f"block{i}_dropout1")(h)
        h = keras.layers.Dense(width, kernel_regularizer=reg, name=f"block{i}_project")(h)
        h = keras.layers.Dropout(dropout, name=f"block{i}_dropout2")(h)
        x = keras.layers.Add(name=f"block{i}_residual")([x, h])
    x = keras.layers.LayerNormalization(name="final_norm")(x)
    x = keras.layers.Activation(activation, name="final_activation")(x)
    return head(x, spec)
