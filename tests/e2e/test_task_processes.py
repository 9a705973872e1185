"""`pipeline train` with `execution.task_processes: own`: the TensorFlow stages each run in a process of
their own (pipeline.task_process), and the run is the same run: every
stage's MLflow run, the epochs in the live view, a registered and published version."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e

OWN_PROCESS = {"preprocess", "train", "evaluate", "export", "deploy"}


def test_tensorflow_stages_run_in_processes_of_their_own(tmp_path, run_train, monkeypatch):
    home = tmp_path / "home"
    conf = json.dumps({"overrides": {"execution.task_processes": "own"}})
    result = run_train(home, "--epochs", "5", "--conf", conf)
    assert result.returncode == 0, result.stdout[-5000:]
    assert "Registered model: penguins version 1" in result.stdout
    assert "train: epoch 5/5" in result.stdout, "the child's epochs reach the parent's view"
    assert (home / "serving" / "penguins" / "1" / "saved_model.pb").is_file()

    monkeypatch.setenv("PIPELINE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from pipeline import task_process
    from pipeline.tracking import client

    c = client()
    exp = c.get_experiment_by_name("penguins")
    stages = {r.info.run_name: r for r in c.search_runs([exp.experiment_id])
              if r.data.tags.get("pipeline.kind") != "dag_run"}
    pids = {name: r.data.tags.get(task_process.PID_TAG) for name, r in stages.items()}
    assert {name for name, pid in pids.items() if pid} == OWN_PROCESS, pids
    assert len({pids[s] for s in OWN_PROCESS}) == len(OWN_PROCESS), "a fresh process for each stage"
    assert all(r.info.status == "FINISHED" for r in stages.values())
    assert c.get_metric_history(stages["train"].info.run_id, "val_loss"), "the child logged every epoch"
