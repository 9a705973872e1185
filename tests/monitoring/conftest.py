"""Fixtures of the monitoring tests: small in-memory frames with known distributions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

CATEGORIES = np.array(["a", "b", "c", "d"])
SHARES = np.array([0.5, 0.3, 0.15, 0.05])


def make_frame(
    n: int,
    seed: int,
    *,
    shift: float = 0.0,
    scale: float = 1.0,
    shares: np.ndarray = SHARES,
    categories: np.ndarray = CATEGORIES,
) -> pd.DataFrame:
    """``n`` rows: ``x`` ~ N(shift, scale^2), ``y`` ~ N(0, 1), ``c`` categorical with ``shares``."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.normal(shift, scale, n),
            "y": rng.normal(0.0, 1.0, n),
            "c": categories[rng.choice(len(categories), size=n, p=shares / shares.sum())],
        }
    )


@pytest.fixture
def frames():
    return make_frame
