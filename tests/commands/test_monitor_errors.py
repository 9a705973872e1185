"""``pipeline monitor --json`` when its DAG run fails: the ``error`` key says why each task failed, not only which
task (issue 15: before any model exists it said ``failed tasks: ['resolve_window']``, the reason being only in
the logs). A real ``drift_monitor`` run through Airflow on an empty PIPELINE_HOME, as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.e2e
def test_the_error_carries_the_failed_tasks_reason(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "PIPELINE_HOME": str(home), "PIPELINE_MONITOR_SCHEDULE": "none"}
    for var in ("AIRFLOW_HOME", "MLFLOW_TRACKING_URI", "PIPELINE_SERVING_BASE"):
        env.pop(var, None)
    result = subprocess.run([str(BIN / "pipeline"), "monitor", "--json", "--no-mlflow"], env=env, capture_output=True,
                            text=True, timeout=300, start_new_session=True)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    doc = json.loads(result.stdout)  # stdout is that one object
    reason = f"no exported version of 'penguins' under {home / 'serving'}"
    assert reason in doc["error"] and "resolve_window" in doc["error"], doc["error"]
    assert doc["airflow"]["failed_tasks"] == ["resolve_window"]
    assert doc["airflow"]["errors"] == {"resolve_window": reason}
