"""``pipeline.retention``: old runs that no served version needs are removed; served, registered-and-served,
current, recent and newest runs stay; an unreadable registry removes nothing. On a real PIPELINE_HOME layout
and a real MLflow registry (SQLite)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pipeline import paths, retention
from pipeline.config import RetentionConfig

DAY = 86400.0


def _run(home: Path, key: str, age_days: float, now: float) -> None:
    for parent in ("data", "runs"):
        d = home / parent / key
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "file.bin").write_bytes(b"x" * 1000)
        for p in [d, d / "sub", d / "sub" / "file.bin"]:
            os.utime(p, (now - age_days * DAY, now - age_days * DAY))


def _served(home: Path, model: str, version: int, run_id: str) -> None:
    lineage = paths.serving_dir(model) / str(version) / "assets.extra" / "pipeline_metadata.json"
    lineage.parent.mkdir(parents=True)
    lineage.write_text(json.dumps({"dag_run_id": run_id, "train_split": str(home / "data" / paths.safe_key(run_id)
                                                                            / "sub" / "file.bin")}))


def _register(model: str, run_id: str, alias: str | None) -> None:
    from mlflow import MlflowClient

    uri = paths.mlflow_tracking_uri()
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        c.create_registered_model(model)
    except Exception:  # noqa: BLE001 - created by an earlier call
        pass
    mv = c.create_model_version(model, source="file:///nowhere", tags={"airflow.run_id": run_id})
    if alias:
        c.set_registered_model_alias(model, alias, mv.version)


def test_select_keeps_protected_current_newest_and_recent():
    now = 1_000 * DAY
    runs = [retention.Run(k, (Path(f"/x/{k}"),), now - age * DAY) for k, age in
            [("a", 100), ("b", 90), ("c", 80), ("d", 70), ("e", 1)]]
    plan = retention.select(runs, {"a": "m v1 is on disk"}, RetentionConfig(keep_runs=1, keep_days=30), now,
                            current="b")
    assert [r.key for r in plan.remove] == ["d", "c"]  # newest first
    assert plan.kept == {"e": "among the 1 newest", "b": "the current run", "a": "m v1 is on disk"}
    assert [r.key for r in retention.select(runs, {}, RetentionConfig(keep_runs=0, keep_days=85), now).remove] \
        == ["b", "a"]


def test_apply_removes_only_what_no_served_version_needs(pipeline_home):
    now = time.time()
    for key, age in [("served_on_disk", 60), ("served_before", 61), ("registered_only", 62), ("old", 63),
                     ("current", 64), ("recent", 2)]:
        _run(pipeline_home, key, age, now)
    _served(pipeline_home, "m", 3, "served_on_disk")
    _register("m", "served_before", alias="previous")
    _register("m", "registered_only", alias=None)
    (pipeline_home / "monitoring" / "runs" / "m" / "old_monitor").mkdir(parents=True)
    os.utime(pipeline_home / "monitoring" / "runs" / "m" / "old_monitor", (now - 90 * DAY,) * 2)

    dry = retention.apply(RetentionConfig(keep_runs=1, keep_days=30), current="current", dry_run=True)
    assert sorted(dry["removed"]) == ["old", "registered_only"] and (pipeline_home / "runs" / "old").exists()

    done = retention.apply(RetentionConfig(keep_runs=1, keep_days=30), current="current")
    assert sorted(done["removed"]) == ["old", "registered_only"]
    assert done["freed_bytes"] >= 4 * 1000
    left = sorted(p.name for p in (pipeline_home / "runs").iterdir())
    assert left == ["current", "recent", "served_before", "served_on_disk"]
    assert sorted(p.name for p in (pipeline_home / "data").iterdir()) == left
    # monitor runs: one per model is the newest, so it stays
    assert (pipeline_home / "monitoring" / "runs" / "m" / "old_monitor").exists()
    kept = done["training"]["kept"]
    assert kept["served_on_disk"] == "m v3 is on disk" and kept["served_before"] == "m v1 was served"


def test_an_unreadable_registry_removes_nothing(pipeline_home, tmp_path):
    now = time.time()
    _run(pipeline_home, "old", 100, now)
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a database path under a regular file: the store cannot be opened
    done = retention.apply(RetentionConfig(keep_runs=0, keep_days=1), tracking_uri=f"sqlite:///{blocker}/x.db")
    assert done["removed"] == [] and (pipeline_home / "runs" / "old").exists()
    assert "registry could not be read" in done["training"]["kept"]["old"]


def test_disabled_keeps_everything(pipeline_home):
    _run(pipeline_home, "old", 100, time.time())
    assert retention.apply(RetentionConfig(enabled=False, keep_runs=0, keep_days=0))["removed"] == []
    assert (pipeline_home / "runs" / "old").exists()


def test_the_command_says_what_it_would_remove(pipeline_home, capsys):
    _run(pipeline_home, "old", 100, time.time())
    assert retention.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove" in out and "old" in out and (pipeline_home / "runs" / "old").exists()


@pytest.mark.parametrize("bad", [{"retention.keep_runs": -1}, {"retention.keep_days": -2}])
def test_bad_settings_are_refused_by_key(bad):
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="keep_"):
        load_config(None, bad)
