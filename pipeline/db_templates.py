"""Empty metadata databases kept once per installed version, so that a new ``PIPELINE_HOME`` copies them instead
of running Airflow's and MLflow's schema migrations again (3-4 s each on a 2-core machine, on every first run
and in every test that starts from an empty home).

A template is the SQLite file a successful migration left, saved right after it and before anything else wrote
to it; its name carries the versions of the package and of SQLAlchemy that made it, so an upgrade migrates
afresh. The cache is ``$PIPELINE_CACHE`` or ``~/.cache/keras-airflow-pipeline``; removing it is always safe.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = {"airflow": "apache-airflow", "mlflow": "mlflow"}


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "keras-airflow-pipeline"
    return Path(os.environ.get("PIPELINE_CACHE") or default).expanduser()


def template_path(kind: str) -> Path | None:
    """Where the empty ``kind`` ("airflow" or "mlflow") database of the installed versions is kept."""
    try:
        key = f"{kind}-{version(PACKAGES[kind])}-sqlalchemy-{version('sqlalchemy')}"
    except PackageNotFoundError:
        return None
    return cache_dir() / f"{key}.db"


def restore(kind: str, target: Path) -> bool:
    """Put the ``kind`` template at ``target`` (which must not exist yet); False when there is none (or it is
    unreadable: it is then removed, and the caller migrates)."""
    template = template_path(kind)
    if template is None or not template.is_file() or target.exists():
        return False
    try:
        with sqlite3.connect(f"file:{template}?mode=ro&immutable=1", uri=True) as db:  # no -wal/-shm files
            ok = db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            ok = ok and db.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
    except sqlite3.Error:
        ok = False
    if not ok:
        template.unlink(missing_ok=True)
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    shutil.copyfile(template, partial)
    os.replace(partial, target)
    return True


def save(kind: str, source: Path) -> None:
    """Keep ``source``, a database just migrated, as the ``kind`` template unless there is one (best effort:
    a cache that cannot be written is only slower)."""
    template = template_path(kind)
    if template is None or template.exists() or not source.is_file():
        return
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        partial = template.with_name(f".{template.name}.{uuid.uuid4().hex[:8]}")
        shutil.copyfile(source, partial)
        os.replace(partial, template)
    except OSError:
        pass
