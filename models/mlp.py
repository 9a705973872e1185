"""A multilayer perceptron: Dense layers with dropout on the processed features, then the task's head.
Categorical columns of at most ``one_hot_max`` ids are one-hot, larger ones embedded. ``l1``/``l2`` penalize the
hidden layers' weights; ``batch_norm`` puts a BatchNormalization between each Dense layer and its activation."""
from __future__ import annotations

from typing import Sequence


def build(inputs, spec, *, hidden_units: Sequence[int] = (64, 32), dropout: float = 0.1, activation: str = "relu",
          l1: float = 0.0, l2: float = 0.0, batch_norm: bool = False, one_hot_max: int = 64):
    import keras

    from models.layers import encode, head, regularizer

    x = encode(inputs, spec, one_hot_max=one_hot_max)
    reg = regularizer(l1, l2)
    for i, units in enumerate(hidden_units):
        if batch_norm:
            x = keras.layers.Dense(int(units), kernel_regularizer=reg, name=f"dense_{i}")(x)
            x = keras.layers.BatchNormalization(name=f"batch_norm_{i}")(x)
            x = keras.layers.Activation(activation, name=f"activation_{i}")(x)
        else:
            x = keras.layers.Dense(int(units), activation=activation, kernel_regularizer=reg, name=f"dense_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(float(dropout), name=f"dropout_{i}")(x)
    return head(x, spec)
