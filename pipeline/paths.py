"""Where the embedded defaults keep their state.

Everything lives under one directory, ``PIPELINE_HOME`` (default: ``.pipeline/`` in the repository):

    PIPELINE_HOME/
      airflow/                 AIRFLOW_HOME (SQLite metadata database, logs)
      mlflow/mlflow.db         MLflow tracking + registry store (SQLite)
      mlflow/artifacts/        MLflow artifacts
      data/<dag_run>/          immutable data snapshots, keyed by DAG run
      runs/<dag_run>/          per-run work files (split, checkpoints, candidate export)
      serving/<model>/<ver>/   TensorFlow Serving model base path (SavedModels)
      request_logs/<model>/    sampled request log written by the serving server

``AIRFLOW_HOME`` and ``MLFLOW_TRACKING_URI`` override their parts, as users of those tools expect.
Functions only read the environment; nothing is created at import time.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def pipeline_home() -> Path:
    """The root of all embedded state (``$PIPELINE_HOME`` or ``<repo>/.pipeline``), absolute."""
    return Path(os.environ.get("PIPELINE_HOME") or REPO_ROOT / ".pipeline").expanduser().resolve()


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or pipeline_home() / "airflow").expanduser().resolve()


def mlflow_dir() -> Path:
    return pipeline_home() / "mlflow"


def mlflow_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` or the embedded SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlflow_dir() / 'mlflow.db'}"


def mlflow_artifact_root() -> str:
    return (mlflow_dir() / "artifacts").as_uri()


def serving_base() -> Path:
    """Directory holding one TF Serving model base path per model: ``serving/<model_name>/<version>/``."""
    return Path(os.environ.get("PIPELINE_SERVING_BASE") or pipeline_home() / "serving").expanduser().resolve()


def request_log_dir(model_name: str | None = None) -> Path:
    base = pipeline_home() / "request_logs"
    return base / model_name if model_name else base


def safe_key(run_id: str) -> str:
    """A file-system-safe form of an Airflow run id (``manual__2026-01-01T00:00:00+00:00``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)


def data_dir(run_key: str) -> Path:
    return pipeline_home() / "data" / safe_key(run_key)


def run_dir(run_key: str) -> Path:
    return pipeline_home() / "runs" / safe_key(run_key)


def child_environ(**extra: str) -> dict[str, str]:
    """This process's environment for a Python child that imports ``pipeline`` (the repository first on
    ``PYTHONPATH``), plus ``extra``."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, **extra}
