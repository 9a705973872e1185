"""A linear model (multinomial logistic regression or linear regression) on the processed features,
categorical columns one-hot; ``l1``/``l2`` penalize its weights (lasso, ridge, elastic net)."""
from __future__ import annotations


def build(inputs, spec, *, l1: float = 0.0, l2: float = 0.0):
    from models.layers import encode, head, regularizer

    return head(encode(inputs, spec, one_hot_max=1 << 30), spec, kernel_regularizer=regularizer(l1, l2))
