"""Keras model builders, chosen by name in the config (``model.builder``).

A builder takes the preprocessed feature vector (a KerasTensor) and returns the model's output tensor:
class probabilities (softmax, float32) for classification, one standardized value for regression.
Register a new builder by adding it to ``BUILDERS``.
"""
from __future__ import annotations

from typing import Callable

from models import linear, mlp

BUILDERS: dict[str, Callable] = {"mlp": mlp.build, "linear": linear.build}


def get_builder(name: str) -> Callable:
    try:
        return BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model builder {name!r}; known: {', '.join(sorted(BUILDERS))}") from None
