from __future__ import annotations

import os

from pipeline import paths, tracking


def test_configure_follows_pipeline_home_and_leaves_the_environment_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "a"))
    first = tracking.configure()
    assert "MLFLOW_TRACKING_URI" not in os.environ  # mlflow.set_tracking_uri would have left it set
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "b"))
    second = tracking.configure()
    assert first != second and second == f"sqlite:///{tmp_path / 'b' / 'mlflow' / 'mlflow.db'}"
    assert tracking.client().tracking_uri == second


def test_an_explicit_tracking_uri_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.configure() == "http://127.0.0.1:5999" == paths.mlflow_tracking_uri()
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999"
