"""pipeline.airflow_env: the embedded defaults."""
from __future__ import annotations

import sys

from pipeline import airflow_env


def test_airflow_environ_fills_only_what_is_unset(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    env = airflow_env.airflow_environ({"PATH": "/usr/bin", "AIRFLOW__CORE__PARALLELISM": "8"})
    assert env["AIRFLOW__CORE__PARALLELISM"] == "8" and env["AIRFLOW_HOME"] == str(tmp_path / "airflow")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}"
    assert env["PATH"].split(":")[0] == str(__import__("pathlib").Path(sys.executable).parent)
