"""The ``drift_monitor`` DAG: it parses, and ``pipeline monitor`` runs it through Airflow (``dag.test`` on the
embedded SQLite database) with its guards and its Asset event, on a fake exported version (lineage and training
data, no SavedModel: no TensorFlow, no training here; the whole loop with a real scheduler is
tests/e2e/test_retraining_loop.py).

Real here: the DAG file, Airflow's run of it (params validated against their schema, XCom, skipped emit task,
the ``prev_data_interval_end_success`` window start, ``inlet_events`` as the retraining history, the
``get_dr_count`` in-flight check), the Asset event in the metadata database and the queue entry that makes the
scheduler start ``training_pipeline``. Not here: the scheduler itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for monitoring_traffic, under any --import-mode
import monitoring_traffic as traffic  # noqa: E402

from pipeline import airflow_env  # noqa: E402

EDGES = {("resolve_window", "analyse"), ("resolve_window", "decide"), ("analyse", "decide"), ("decide", "emit_drift")}


def test_dag_parses_with_the_expected_graph_params_and_assets(pipeline_home):
    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag()\n"
        "dag = bag.dags['drift_monitor']\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()},"
        " 'edges': sorted([t.task_id, d] for t in dag.tasks for d in t.downstream_task_ids),"
        " 'params': {k: dag.params.get_param(k).schema.get('type') for k in dag.params},"
        " 'inlets': {t.task_id: [a.name for a in t.inlets] for t in dag.tasks},"
        " 'outlets': {t.task_id: [a.name for a in t.outlets] for t in dag.tasks},"
        " 'schedule': getattr(dag.timetable, 'expression', None), 'max_active_runs': dag.max_active_runs,"
        " 'training_assets': sorted(a.name for a in bag.dags['training_pipeline'].timetable.asset_condition.objects)}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=airflow_env.airflow_environ(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert {tuple(e) for e in result["edges"]} == EDGES
    assert result["params"]["current"] == ["null", "string"] and result["params"]["lookback_hours"] == "number"
    assert {"config", "current", "model_name", "model_version", "labels", "mlflow"} <= set(result["params"])
    assert result["inlets"]["decide"] == ["training_data_drift"]
    assert result["outlets"] == {"resolve_window": [], "analyse": [], "decide": [], "emit_drift": ["training_data_drift"]}
    assert result["schedule"] == "0 * * * *" and result["max_active_runs"] == 1  # hourly
    assert result["training_assets"] == ["training_data_drift"], "training_pipeline is scheduled on the drift Asset"


def test_schedule_comes_from_the_environment(pipeline_home):
    code = ("from airflow.dag_processing.dagbag import DagBag\n"
            "print(getattr(DagBag().dags['drift_monitor'].timetable, 'expression', None))")
    for value, expected in (("none", "None"), ("*/15 * * * *", "*/15 * * * *")):
        env = {**airflow_env.airflow_environ(), "PIPELINE_MONITOR_SCHEDULE": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.strip().splitlines()[-1] == expected


@pytest.fixture
def home(pipeline_home, penguins, tmp_path):
    traffic.fake_version(pipeline_home, "penguins", 1, penguins)
    config = tmp_path / "monitor.yaml"
    config.write_text("name: penguins\nsource: pkg://palmerpenguins/data/penguins.csv\nlabel: species\n"
                      "serving: {model_name: penguins}\n"
                      "monitoring: {retraining: {cooldown_hours: 6, max_per_day: 2, min_new_labels: 100}}\n")
    return pipeline_home, config


def test_monitor_through_airflow_triggers_once_and_guards_persisting_drift(home, penguins):
    """No drift -> nothing; drift with labels -> one event whose extra names the labelled rows; drift again ->
    held back by the cooldown; an empty window -> skipped. Each a real ``drift_monitor`` DAG run."""
    home, config = home
    # Unpaused, as a deployment runs it: Airflow queues Asset events only for DAGs that are not paused.
    env = traffic.pipeline_env(home, PIPELINE_MONITOR_SCHEDULE="none", AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False")
    sample = penguins.sample(200, replace=True, random_state=0)

    traffic.write_requests(home, "penguins", sample, version=1)
    calm = traffic.monitor_json(env, "--config", str(config))
    assert calm["dataset_drift"] is False and calm["retraining_triggered"] is False
    assert calm["n_current"] == 200 and calm["airflow"]["state"] == "success"
    assert calm["airflow"]["asset_event"] is None and traffic.drift_events(home) == []

    shifted = traffic.drifted(penguins.sample(150, replace=True, random_state=1))
    ids = traffic.write_requests(home, "penguins", shifted, version=1)
    traffic.write_labels(home, "penguins", ids, shifted["species"])
    drift = traffic.monitor_json(env, "--config", str(config))
    assert drift["dataset_drift"] is True and drift["retraining_triggered"] is True, drift["reason"]
    assert drift["n_current"] == 150, "the window starts where the previous run's ended"
    assert {"bill_length_mm", "flipper_length_mm", "body_mass_g"} <= set(drift["drifted_features"])
    events = traffic.drift_events(home)
    assert len(events) == 1 and events[0]["_source_dag_id"] == "drift_monitor"
    extra = events[0]
    assert extra == {**drift["airflow"]["asset_event"], "_source_dag_id": "drift_monitor"}
    assert extra["dag_run_id"] == drift["airflow"]["dag_run_id"] and extra["model_version"] == 1
    assert extra["labelled_rows"] == extra["new_labelled_rows"] == 150 and extra["config"] == str(config)
    import pandas as pd

    labelled = pd.read_parquet(extra["labelled_data"])
    assert len(labelled) == 150 and set(labelled["species"]) <= {"Adelie", "Chinstrap", "Gentoo"}
    queued = traffic.query(home, "select target_dag_id from asset_dag_run_queue")
    assert queued == [("training_pipeline",)], "the scheduler would start training_pipeline from this queue entry"

    more = traffic.drifted(penguins.sample(150, replace=True, random_state=2))
    traffic.write_labels(home, "penguins", traffic.write_requests(home, "penguins", more, version=1), more["species"])
    persisting = traffic.monitor_json(env, "--config", str(config))
    assert persisting["dataset_drift"] is True and persisting["retraining_triggered"] is False
    assert "cooldown" in persisting["reason"]
    assert len(traffic.drift_events(home)) == 1, "no retraining storm"

    empty = traffic.monitor_json(env, "--config", str(config))
    assert empty["skipped"] is True and empty["retraining_triggered"] is False and empty["n_current"] == 0

    runs = traffic.query(home, "select state from dag_run where dag_id = 'drift_monitor'")
    assert [s for (s,) in runs] == ["success"] * 4
    emit = traffic.query(home, "select state from task_instance where dag_id = 'drift_monitor' and task_id = 'emit_drift'")
    assert sorted(s for (s,) in emit) == ["skipped", "skipped", "skipped", "success"]


def test_monitor_of_a_file_and_bad_input(home, penguins, tmp_path):
    home, config = home
    env = traffic.pipeline_env(home, PIPELINE_MONITOR_SCHEDULE="none")
    current = tmp_path / "window.csv"
    traffic.drifted(penguins).drop(columns="species").to_csv(current, index=False)
    result = traffic.monitor_json(env, "--config", str(config), "--current", str(current), "--no-mlflow")
    assert result["dataset_drift"] is True and result["n_current"] == len(penguins)
    assert result["retraining_triggered"] is False and "0 new labelled rows" in result["reason"]
    assert result["meta"]["model_version"] == 1, "no version in a file: the latest exported one"

    missing = traffic.run_pipeline(env, "monitor", "--json", "--current", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and missing.stdout == "" and "nope.csv does not exist" in missing.stderr

    failed = traffic.run_pipeline(env, "monitor", "--json", "--config", str(config), "--model-name", "unknown")
    assert failed.returncode == 1
    doc = json.loads(failed.stdout)
    assert doc["airflow"]["failed_tasks"] == ["resolve_window"] and "failed" in doc["error"]
