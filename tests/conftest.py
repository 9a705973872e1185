"""Shared fixtures: every test gets its own PIPELINE_HOME, and small frames with known content."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def pipeline_home(tmp_path, monkeypatch):
    """An empty PIPELINE_HOME for one test (Airflow and MLflow state included)."""
    home = tmp_path / "pipeline_home"
    monkeypatch.setenv("PIPELINE_HOME", str(home))
    for var in ("AIRFLOW_HOME", "MLFLOW_TRACKING_URI", "PIPELINE_SERVING_BASE"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def penguins():
    """The real penguins data, as it ships in the palmerpenguins package (344 rows)."""
    from palmerpenguins import load_penguins

    return load_penguins()


@pytest.fixture
def tiny_frame():
    """Twelve rows, two classes that a model can separate by `x` alone, one categorical, some missing values."""
    import numpy as np
    import pandas as pd

    return pd.DataFrame({
        "x": [0.1, 0.2, 0.3, 0.4, 0.5, np.nan, 2.1, 2.2, 2.3, 2.4, 2.5, 2.6],
        "color": ["red", "red", "blue", None, "red", "blue", "green", "green", "blue", "green", "green", "red"],
        "label": ["a"] * 6 + ["b"] * 6,
    })
