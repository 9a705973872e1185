"""pipeline.db_templates: empty metadata databases copied into new homes instead of migrated again."""
from __future__ import annotations

import sqlite3

import pytest

from pipeline import db_templates


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _migrated(path, revision="abc123"):
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        db.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    return path


def test_a_saved_template_is_copied_into_a_new_home_once(tmp_path, cache):
    assert not db_templates.restore("mlflow", tmp_path / "home" / "mlflow.db"), "no template yet"
    db_templates.save("mlflow", _migrated(tmp_path / "first.db"))
    template = db_templates.template_path("mlflow")
    assert template.parent == cache and "mlflow-" in template.name and "-sqlalchemy-" in template.name
    target = tmp_path / "home" / "mlflow.db"
    assert db_templates.restore("mlflow", target)
    with sqlite3.connect(target) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("abc123",)]
    assert not db_templates.restore("mlflow", target), "an existing database is never replaced"
    db_templates.save("mlflow", _migrated(tmp_path / "second.db", "zzz"))  # the first template stays
    with sqlite3.connect(template) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("abc123",)]
    assert sorted(p.name for p in cache.iterdir()) == [template.name], "no temporary or -wal/-shm files left"


def test_an_unreadable_template_is_dropped_and_the_caller_migrates(tmp_path, cache):
    template = db_templates.template_path("airflow")
    template.parent.mkdir(parents=True)
    template.write_bytes(b"not a database")
    assert not db_templates.restore("airflow", tmp_path / "airflow.db")
    assert not template.exists() and not (tmp_path / "airflow.db").exists()


def test_a_cache_that_cannot_be_written_is_only_slower(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("PIPELINE_CACHE", str(blocker / "cache"))  # below a file: cannot be created
    db_templates.save("mlflow", _migrated(tmp_path / "first.db"))
    assert not db_templates.restore("mlflow", tmp_path / "home.db")
