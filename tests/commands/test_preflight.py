"""The checks ``pipeline train`` and ``pipeline monitor`` run before Airflow starts (``pipeline/preflight.py``):
each bad source, header or config is one line naming the file, the column or the key; a usable one passes.

The checks themselves run in this process on small files; one ``pipeline train`` runs as a subprocess, on the
missing file of issue 15 (which took 22 s and 147 lines of logs, and tried the ingest task twice): exit status
2, one line on stderr, and Airflow never started.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.preflight import monitor_problem, train_problem

BIN = Path(sys.executable).parent


def _csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _table(tmp_path: Path) -> pd.DataFrame:
    return pd.DataFrame({"x": [1.0, 2.0, 3.0], "Body Mass (g)": [3000, 4000, 5000], "y": ["a", "b", "a"]})


# case -> (params built from tmp_path, phrases the one line must contain besides the file's path)
def _case(case: str, tmp_path: Path) -> tuple[dict, list[str]]:
    if case == "missing":
        return {"source": str(tmp_path / "missing.csv"), "label": "y"}, ["file does not exist"]
    if case == "directory":
        (tmp_path / "dir.csv").mkdir()
        return {"source": str(tmp_path / "dir.csv"), "label": "y"}, ["directory has no .csv or .parquet file"]
    if case == "unsupported":
        return {"source": _csv(tmp_path / "data.txt", "x,y\n1,a\n"), "label": "y"}, ["unsupported file type '.txt'"]
    if case == "empty":
        return {"source": _csv(tmp_path / "empty.csv", ""), "label": "y"}, ["file is empty"]
    if case == "csv_without_label":
        return {"source": _csv(tmp_path / "nolabel.csv", "a,b\n1,2\n"), "label": "y"}, [
            "label column 'y' not found", "columns are a, b"]
    if case == "parquet_without_label":
        path = tmp_path / "nolabel.parquet"
        _table(tmp_path).drop(columns="y").to_parquet(path)
        return {"source": str(path), "label": "y"}, ["label column 'y' not found", "Body Mass (g)"]
    if case == "colliding_columns":
        return {"source": _csv(tmp_path / "twins.csv", "a b,a_b,y\n1,2,3\n"), "label": "y"}, [
            "'a b' and 'a_b' both become 'a_b'"]
    raise ValueError(case)


CASES = ["missing", "directory", "unsupported", "empty", "csv_without_label", "parquet_without_label",
         "colliding_columns"]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_source_is_one_line_naming_the_file(case, tmp_path):
    params, phrases = _case(case, tmp_path)
    problem = train_problem(params)
    assert problem is not None and "\n" not in problem
    assert params["source"] in problem and all(p in problem for p in phrases), problem


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_source_is_named(tmp_path):
    path = Path(_csv(tmp_path / "secret.csv", "x,y\n1,a\n"))
    path.chmod(0)
    problem = train_problem({"source": str(path), "label": "y"})
    assert problem is not None and str(path) in problem and "cannot be read" in problem


def test_usable_sources_pass(tmp_path):
    csv_path, parquet_path = tmp_path / "ok.csv", tmp_path / "ok.parquet"
    _table(tmp_path).to_csv(csv_path, index=False)
    _table(tmp_path).to_parquet(parquet_path)
    assert train_problem({"source": str(csv_path), "label": "y"}) is None
    assert train_problem({"source": str(parquet_path), "label": "Body Mass (g)"}) is None  # compared as ingest does
    assert train_problem({"config": ""}) is None, "the default config and the penguins data it names"


def test_a_bad_config_is_one_line_naming_the_file_and_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("source: pkg://palmerpenguins/data/penguins.csv\nlabel: species\ntraining:\n  epoch: 3\n")
    problem = train_problem({"config": str(config)})
    assert problem is not None and "\n" not in problem
    assert str(config) in problem and "unknown key 'epoch' in training" in problem and "'epochs'" in problem
    assert "not found" in train_problem({"config": str(tmp_path / "none.yaml")})
    assert "training.epochs" in train_problem({"config": "", "epochs": 0}), "an override is checked as a key too"


def test_monitor_checks_its_files_and_its_config(tmp_path):
    assert monitor_problem({"config": ""}) is None
    missing = tmp_path / "window.csv"
    assert monitor_problem({"config": "", "current": str(missing)}) == \
        f"{missing} does not exist (window file, --current)"
    assert "--labels" in monitor_problem({"config": "", "labels": str(tmp_path)})
    config = tmp_path / "monitor.yaml"
    config.write_text("serving:\n  model_name: penguins\nmonitoring:\n  drift:\n    nonsense: 1\n")
    problem = monitor_problem({"config": str(config)})
    assert problem is not None and str(config) in problem and "monitoring" in problem and "nonsense" in problem


@pytest.mark.e2e
def test_pipeline_train_refuses_a_missing_file_before_airflow_starts(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "PIPELINE_HOME": str(home)}
    for var in ("AIRFLOW_HOME", "MLFLOW_TRACKING_URI", "PIPELINE_SERVING_BASE"):
        env.pop(var, None)
    result = subprocess.run([str(BIN / "pipeline"), "train", "--source", str(tmp_path / "missing.csv"), "--label", "y"],
                            env=env, capture_output=True, text=True, timeout=60)  # a deadline, not a benchmark
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stderr.splitlines() == [f"pipeline train: {tmp_path / 'missing.csv'}: file does not exist"]
    assert result.stdout == ""
    assert not (home / "airflow").exists() and not (home / "logs").exists(), "Airflow never started"
