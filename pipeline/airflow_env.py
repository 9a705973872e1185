"""Airflow on the embedded defaults: its home, SQLite database and dags folder under ``PIPELINE_HOME``.

Production deployments set ``AIRFLOW_HOME`` / ``AIRFLOW__*`` themselves (docker/); these defaults only fill
what is not set.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline import paths


def airflow_environ(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for Airflow processes: embedded defaults for whatever the caller has not set."""
    env = dict(os.environ if base is None else base)
    home = paths.airflow_home()
    defaults = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(paths.REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # A laptop, not a cluster: the default 32 LocalExecutor workers would each hold a Python interpreter.
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        # Stage tasks import TensorFlow; the default 30 s would kill a cold start.
        "AIRFLOW__CORE__KILLED_TASK_CLEANUP_TIME": "60",
        "PIPELINE_HOME": str(paths.pipeline_home()),
        # MLflow's telemetry thread removes an environment variable while task threads read the environment
        # (a task failed with KeyError: '_MLFLOW_TELEMETRY_SESSION_ID'); and no data leaves the machine.
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    # Airflow starts `airflow` subprocesses by name: this interpreter's bin/ must be on PATH.
    bindir = str(Path(sys.executable).parent)
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONPATH", str(paths.REPO_ROOT))
    return env


def apply() -> dict[str, str]:
    """Put the embedded defaults into this process's environment (before Airflow is imported)."""
    env = airflow_environ()
    os.environ.update(env)
    return env


def ensure_db(env: dict[str, str] | None = None) -> None:
    """Create or upgrade the metadata database (``airflow db migrate``) when it is not current."""
    finish_db(start_db(env), env)


def start_db(env: dict[str, str] | None = None) -> subprocess.Popen | None:
    """Start ``airflow db migrate`` in the background when the metadata database is not current (None when
    it is, or when an empty embedded database was copied from its template: ``pipeline.db_templates``);
    :func:`finish_db` waits for it. Meanwhile this process can import Airflow."""
    from pipeline import db_templates

    env = env or airflow_environ()
    conn = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    marker = _marker()
    if marker.exists() and marker.read_text() == conn:
        return None
    paths.airflow_home().mkdir(parents=True, exist_ok=True)
    fresh = _embedded_db(conn)
    if fresh is not None and db_templates.restore("airflow", fresh):
        marker.write_text(conn)
        return None
    proc = subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc.fresh_db = fresh  # an empty embedded database this migration creates: kept as the template
    return proc


def _embedded_db(conn: str) -> Path | None:
    """The embedded SQLite file of ``conn`` when it does not exist yet, else None."""
    path = paths.airflow_home() / "airflow.db"
    return path if conn == f"sqlite:///{path}" and not path.exists() else None


def finish_db(proc: subprocess.Popen | None, env: dict[str, str] | None = None) -> None:
    """Wait for :func:`start_db`'s migration and record that the database is current.

    Raises:
        RuntimeError: the migration failed (with the end of its error output).
    """
    from pipeline import db_templates

    if proc is None:
        return
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed with status {proc.returncode}:\n{err[-3000:]}")
    if getattr(proc, "fresh_db", None) is not None:
        db_templates.save("airflow", proc.fresh_db)
    _marker().write_text((env or airflow_environ())["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])


def _marker() -> Path:
    """Names the database last migrated from this home (so that :func:`start_db` skips a current one)."""
    return paths.airflow_home() / ".db-migrated"
