"""A multilayer perceptron: Dense layers with dropout on the processed features, then the task's head.
Categorical columns of at most ``one_hot_max`` ids are one-hot, larger ones embedded."""
from __future__ import annotations

from typing import Sequence


def build(inputs, spec, *, hidden_units: Sequence[int] = (64, 32), dropout: float = 0.1, activation: str = "relu",
          l2: float = 0.0, one_hot_max: int = 64):
    import keras

    from models.layers import encode, head

    x = encode(inputs, spec, one_hot_max=one_hot_max)
    reg = keras.regularizers.L2(l2) if l2 else None
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(int(units), activation=activation, kernel_regularizer=reg, name=f"dense_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(float(dropout), name=f"dropout_{i}")(x)
    return head(x, spec)
