"""The retraining loop through Airflow, with a real scheduler: traffic without drift (no retraining), drift
injected (exactly one retraining, on the configured data plus the newly labelled rows, and a new champion only
if the gate blesses it), drift persisting (no retraining storm).

Real: an ``airflow scheduler`` (LocalExecutor) and an execution-API server (``airflow api-server --apps
execution``) on 127.0.0.1 and a free port, sharing the embedded SQLite metadata database; the ``training_pipeline``
DAG runs only as the scheduler starts it: its weekly cron run trains the first champion (catchup off: the scheduler
creates the latest past Monday's run), and the ``training_data_drift`` Asset event starts the retraining, whose
ingest reads the event's extra from ``triggering_asset_events``. The monitor runs as ``pipeline monitor --json``
(``dag.test`` of ``drift_monitor`` against the same database, as an operator or cron job would run it; its
hourly schedule is off here). Written directly, in the documented format: the request log and the late labels
(the serving server is another issue's). Both Airflow processes run in their own process groups, killed in the
finalizer. Deadlines only bound the waiting; nothing asserts on time.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "monitoring"))  # for monitoring_traffic
import monitoring_traffic as traffic  # noqa: E402

from pipeline import paths  # noqa: E402

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
DEADLINE_S = 1200  # a bound on waiting for the scheduler, not a performance threshold


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(what: str, check, procs, timeout: float = DEADLINE_S):
    """Poll ``check`` until it returns something truthy; fail early if an Airflow process died."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        for name, proc in procs.items():
            assert proc.poll() is None, f"airflow {name} exited with {proc.returncode}"
        time.sleep(2)
    pytest.fail(f"timed out waiting for {what}")


def _training_runs(home: Path) -> list[tuple[str, str, str]]:
    return traffic.query(home, "select run_id, run_type, state from dag_run where dag_id = 'training_pipeline' "
                               "order by id")


def _finished(home: Path, run_type: str) -> list[tuple[str, str, str]]:
    runs = [r for r in _training_runs(home) if r[1] == run_type]
    return runs if runs and all(r[2] in ("success", "failed") for r in runs) else []


def _xcom(home: Path, run_id: str, task_id: str) -> dict:
    rows = traffic.query(home, "select value from xcom where dag_id = 'training_pipeline' and run_id = ? and "
                               "task_id = ? and key = 'return_value'", run_id, task_id)
    value = rows[0][0] if rows else None
    value = json.loads(value) if isinstance(value, (str, bytes)) else value
    return json.loads(value) if isinstance(value, str) else value  # stored JSON-encoded


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """A PIPELINE_HOME with a scheduler and an execution API running on it, and the monitor's config."""
    home = tmp_path_factory.mktemp("loop") / "pipeline_home"
    conf = yaml.safe_load((paths.REPO_ROOT / "conf" / "penguins.yaml").read_text())
    conf["training"]["epochs"] = 30  # the retraining reads this config from the drift event
    conf["monitoring"] = {"retraining": {"cooldown_hours": 6, "max_per_day": 2, "min_new_labels": 100}}
    config = home.parent / "penguins-monitored.yaml"
    config.write_text(yaml.safe_dump(conf))
    port = _free_port()
    env = traffic.pipeline_env(
        home,
        AIRFLOW_HOME=str(home / "airflow"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow' / 'airflow.db'}",
        PIPELINE_MONITOR_SCHEDULE="none",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(16),
        AIRFLOW__CORE__PARALLELISM="2",
    )
    from pipeline import airflow_env

    env = airflow_env.airflow_environ(env)
    assert env["PIPELINE_HOME"] == str(home) and env["AIRFLOW_HOME"] == str(home / "airflow")
    (home / "airflow").mkdir(parents=True)
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    (Path(env["AIRFLOW_HOME"]) / ".db-migrated").write_text(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    subprocess.run([str(BIN / "airflow"), "dags", "reserialize"], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    # The monitor runs as `pipeline monitor` (dag.test); paused, its runs are never also picked up by the
    # scheduler, which would race dag.test for the same task instances.
    subprocess.run([str(BIN / "airflow"), "dags", "pause", "drift_monitor"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logs = home / "test-logs"
    logs.mkdir(parents=True)
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, args in (("api-server", ["api-server", "--apps", "execution", "-H", "127.0.0.1", "-p", str(port),
                                           "-w", "1"]),
                           ("scheduler", ["scheduler"])):
            procs[name] = subprocess.Popen([str(BIN / "airflow"), *args], env=env, stdout=open(logs / f"{name}.log", "w"),
                                           stderr=subprocess.STDOUT, start_new_session=True)
        yield {"home": home, "env": env, "config": config, "procs": procs, "logs": logs}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            try:  # the group's children (LocalExecutor workers, task supervisors) too
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_drift_retrains_once_and_persisting_drift_does_not_storm(loop, penguins, monkeypatch):
    home, env, config, procs = loop["home"], loop["env"], loop["config"], loop["procs"]
    monitor = ("--config", str(config))

    # The first champion: the scheduler's cron run of training_pipeline.
    first = _wait_for("the scheduled training run", lambda: _finished(home, "scheduled"), procs)
    assert [r[2] for r in first] == ["success"], (first, (loop["logs"] / "scheduler.log").read_text()[-5000:])
    assert (home / "serving" / "penguins" / "1" / "saved_model.pb").exists()

    # 1. Traffic like the training data, labelled: no drift, no retraining.
    calm = penguins.sample(250, replace=True, random_state=0)
    traffic.write_labels(home, "penguins", traffic.write_requests(home, "penguins", calm, version=1), calm["species"])
    result = traffic.monitor_json(env, *monitor)
    assert result["dataset_drift"] is False and result["retraining_triggered"] is False, result["reason"]
    assert traffic.drift_events(home) == []

    # 2. Drift, with labels arriving for it: exactly one retraining.
    shifted = traffic.drifted(penguins.sample(250, replace=True, random_state=1))
    ids = traffic.write_requests(home, "penguins", shifted, version=1)
    traffic.write_labels(home, "penguins", ids, shifted["species"])
    result = traffic.monitor_json(env, *monitor)
    assert result["dataset_drift"] is True and result["retraining_triggered"] is True, result["reason"]
    extra = result["airflow"]["asset_event"]
    assert extra["labelled_rows"] == 500, "the labelled served rows of the lookback: calm and drifted"

    # 3. Drift persisting while the retraining is queued or running: held back.
    more = traffic.drifted(penguins.sample(250, replace=True, random_state=2))
    traffic.write_labels(home, "penguins", traffic.write_requests(home, "penguins", more, version=1), more["species"])
    result = traffic.monitor_json(env, *monitor)
    assert result["dataset_drift"] is True and result["retraining_triggered"] is False
    assert "in flight" in result["reason"] or "cooldown" in result["reason"], result["reason"]

    retrained = _wait_for("the drift-triggered training run", lambda: _finished(home, "asset_triggered"), procs)
    assert len(retrained) == 1 and retrained[0][2] == "success", retrained
    run_id = retrained[0][0]

    # It trained on the configured data plus the newly labelled rows, with the monitor's config.
    ingested = _xcom(home, run_id, "ingest")
    assert ingested["labelled_data"] == [extra["labelled_data"]]
    snapshot = json.loads((Path(ingested["snapshot"]).parent / "snapshot.json").read_text())
    assert snapshot["source_rows"] == len(penguins) and ingested["rows"] == len(penguins) + 500
    assert len(pd.read_parquet(ingested["snapshot"])) == len(penguins) + 500
    consumed = traffic.query(home, "select count(*) from dagrun_asset_event e join dag_run d on d.id = e.dag_run_id "
                                   "where d.run_id = ?", run_id)
    assert consumed == [(1,)], "the run consumed the monitor's event"
    monkeypatch.setenv("PIPELINE_HOME", str(home))
    from pipeline import registry, tracking

    train_runs = tracking.client().search_runs(
        [tracking.client().get_experiment_by_name("penguins").experiment_id],
        filter_string=f"tags.`airflow.run_id` = '{run_id}' and tags.`pipeline.stage` = 'train'")
    assert [r.data.params["training_epochs"] for r in train_runs] == ["30"], "the monitor's config, from the event"

    # A new champion only if the evaluation gate blessed it (and the deploy stage published it).
    registered = _xcom(home, run_id, "register")
    champion = registry.version_by_alias("penguins", registry.CHAMPION)
    expected = registered["version"] if registered["blessed"] else 1
    assert int(champion.version) == expected, (registered, champion.version)
    print(f"retraining: version {registered['version']} blessed={registered['blessed']}; champion v{champion.version}")

    # 4. Drift persisting after the retraining: the cooldown holds, still one retraining.
    again = traffic.drifted(penguins.sample(250, replace=True, random_state=3))
    traffic.write_labels(home, "penguins", traffic.write_requests(home, "penguins", again, version=1), again["species"])
    result = traffic.monitor_json(env, *monitor)
    assert result["retraining_triggered"] is False and "cooldown" in result["reason"], result["reason"]
    assert len(traffic.drift_events(home)) == 1
    assert traffic.query(home, "select count(*) from asset_dag_run_queue") == [(0,)], "nothing queued for later"
    assert [r[1] for r in _training_runs(home)] == ["scheduled", "asset_triggered"], "no retraining storm"
