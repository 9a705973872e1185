"""A linear model (multinomial logistic regression or linear regression) on the processed features,
categorical columns one-hot."""
from __future__ import annotations


def build(inputs, spec):
    from models.layers import encode, head

    return head(encode(inputs, spec, one_hot_max=1 << 30), spec)
