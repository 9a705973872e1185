"""A multilayer perceptron for tabular features: Dense layers with dropout, then the task's head."""
from __future__ import annotations

from typing import Sequence


def head(x, task: str, n_outputs: int):
    import keras

    # float32 output even under a mixed-precision policy: softmax/loss in float16 loses probability mass.
    if task == "classification":
        return keras.layers.Dense(n_outputs, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.layers.Dense(1, dtype="float32", name="value_std")(x)


def build(x, *, task: str, n_outputs: int, hidden_units: Sequence[int] = (64, 32), dropout: float = 0.1,
          activation: str = "relu", l2: float = 0.0):
    import keras

    reg = keras.regularizers.L2(l2) if l2 else None
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(int(units), activation=activation, kernel_regularizer=reg, name=f"dense_{i}")(x)
        if dropout:
            x = keras.layers.Dropout(float(dropout), name=f"dropout_{i}")(x)
    return head(x, task, n_outputs)
