"""The training pipeline on the production topology (scripts/topology.py): Airflow on Postgres with the
CeleryExecutor and two workers behind the FAB auth manager, MLflow's tracking server with basic auth on
Postgres, ``pipeline serve`` following the generated models.config as tensorflow/serving does.

One penguins run, triggered over Airflow's REST API with a token by ``pipeline trigger``, followed to success;
then checked through the REST APIs only: Airflow's (the run, its tasks, the workers that ran them), MLflow's
(the parent and stage runs, the registered version, the ``champion`` alias, the tasks' own MLflow user) and
the model server's (a prediction by the label ``stable``)."""
from __future__ import annotations

import json
import re
import subprocess

import pytest
import requests
import topology
from clients import PENGUIN, predict_by_label

pytestmark = [pytest.mark.e2e, pytest.mark.production]

STAGES = ("ingest", "validate", "split", "preprocess", "train", "evaluate", "export", "register", "deploy")
# A short fit: the gate is not what this test is about (min_accuracy 0: the first version is blessed).
PARAMS = {"epochs": 5, "min_accuracy": 0.0}
RUN_TIMEOUT_S = 1800  # a deadline, not a measure: a run takes minutes on 2 shared cores


@pytest.fixture(scope="module")
def triggered(topo):
    """``pipeline trigger`` run against the topology, as a user would: the Airflow admin's credentials in a
    netrc file, the MLflow server in the environment. Returns its exit status, output and the DAG run id."""
    env = topo.admin_env()
    proc = subprocess.run([str(topology.VENV_BIN / "pipeline"), "trigger", "--airflow", topo.airflow_url,
                           "--netrc", str(topo.root / "airflow.netrc"), "--conf", json.dumps(PARAMS)],
                          env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    out = proc.stdout + proc.stderr
    found = re.search(r"^DAG run:\s+(\S+) \(", proc.stdout, re.M)
    return proc.returncode, out, found.group(1) if found else None


def test_training_pipeline_runs_on_the_production_topology(topo, triggered, airflow, mlflow):
    code, out, run_id = triggered
    assert code == 0, f"pipeline trigger exited {code}; logs under {topo.logs}\n{out[-6000:]}"
    assert run_id and f"DAG run:          {run_id} (success)" in out
    for task in STAGES:  # followed task by task
        assert re.search(rf"^  {task}\s+success", out, re.M), task

    # -- Airflow: the run, its tasks, and the Celery workers that ran them -----------------------------------
    run = airflow(f"/dags/{topology.DAG_ID}/dagRuns/{run_id}").json()
    assert (run["state"], run["run_type"], run["triggered_by"]) == ("success", "manual", "rest_api")
    assert run["conf"] == {**PARAMS, "config": ""}
    instances = airflow(f"/dags/{topology.DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    assert {ti["task_id"]: ti["state"] for ti in instances} == {t: "success" for t in STAGES}
    retried = {ti["task_id"]: ti["try_number"] for ti in instances if ti["try_number"] != 1}
    assert not retried, f"tasks retried: {retried}; their first attempts' logs under {topo.home}/airflow/logs"
    ran_on = {task: name for name in ("airflow-worker-1", "airflow-worker-2")
              for task in re.findall(rf"log_path='dag_id={topology.DAG_ID}/run_id=[^/]+/task_id=(\w+)/",
                                     (topo.logs / f"{name}.log").read_text())}
    assert set(ran_on) == set(STAGES)
    # both workers ran tasks: they share PIPELINE_HOME (each task reads what the previous one wrote)
    assert len(set(ran_on.values())) == 2, f"one worker ran every task: {ran_on}"

    # -- MLflow: the DAG run's run, one finished run per stage, the version and its alias --------------------
    assert requests.get(f"{topo.mlflow_url}/api/2.0/mlflow/experiments/search", params={"max_results": 1},
                        timeout=30).status_code == 401  # basic auth is on
    experiment = mlflow("GET", "/experiments/get-by-name",
                        params={"experiment_name": "penguins"})["experiment"]
    parents = mlflow("POST", "/runs/search", json={
        "experiment_ids": [experiment["experiment_id"]],
        "filter": f"tags.`pipeline.kind` = 'dag_run' and tags.`airflow.run_id` = '{run_id}'"})["runs"]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    parent_id = parents[0]["info"]["run_id"]
    assert f"MLflow run:       {parent_id}" in out
    children = mlflow("POST", "/runs/search", json={"experiment_ids": [experiment["experiment_id"]],
                                                    "filter": f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                                    "max_results": 100})["runs"]
    stages = {next(t["value"] for t in c["data"]["tags"] if t["key"] == "pipeline.stage"): c["info"]["status"]
              for c in children}
    assert stages == {s: "FINISHED" for s in STAGES}
    versions = mlflow("GET", "/model-versions/search", params={
        "filter": f"name = 'penguins' and tags.`airflow.run_id` = '{run_id}'"})["model_versions"]
    assert len(versions) == 1
    version = versions[0]
    tags = {t["key"]: t["value"] for t in version["tags"]}
    assert (tags["blessed"], tags["mlflow_parent_run_id"], version["status"]) == ("true", parent_id, "READY")
    champion = mlflow("GET", "/registered-models/alias", params={"name": "penguins", "alias": "champion"})
    assert champion["model_version"]["version"] == version["version"]
    assert f"Champion:         version {version['version']}" in out
    # the tasks logged as their own MLflow user, which owns what they created
    permission = requests.get(f"{topo.mlflow_url}/api/3.0/mlflow/users/permissions/get",
                              auth=topo.mlflow_admin, timeout=30,
                              params={"username": topology.SHARED_ENV["MLFLOW_TRACKING_USERNAME"],
                                      "resource_type": "experiment",
                                      "resource_id": experiment["experiment_id"]})
    assert permission.json().get("permission") == "MANAGE", permission.text
    # the artifacts went through the server into its artifact destination
    artifacts = topo.home / "mlflow" / "artifacts"
    assert any(artifacts.rglob("saved_model.pb")) and not (topo.home / "mlflow" / "mlflow.db").exists()

    # -- serving: the generated models.config, a prediction by the label stable ------------------------------
    config = (topo.home / "serving" / "models.config").read_text()
    assert re.search(rf'key: "stable"\s+value: {version["version"]}', config), config
    answer = predict_by_label(topo, "stable")
    assert answer["predictions"][0]["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    probabilities = answer["predictions"][0]["probabilities"]
    assert abs(sum(probabilities) - 1) < 1e-4
    by_version = requests.post(f"{topo.serving_url}/v1/models/penguins/versions/{version['version']}:predict",
                               json={"instances": [PENGUIN]}, timeout=30).json()
    assert by_version == answer


def test_airflow_refuses_requests_without_a_valid_token(topo):
    assert requests.get(f"{topo.airflow_url}/api/v2/dags", timeout=30).status_code == 401
    wrong = requests.post(f"{topo.airflow_url}/auth/token", json={"username": "admin", "password": "wrong"},
                          timeout=30)
    assert wrong.status_code == 401


def test_every_process_listens_on_127_0_0_1_only(topo):
    import psutil

    listening: dict[str, set[str]] = {}
    for component in topo.components:
        leader = psutil.Process(component.pid)
        for proc in [leader, *leader.children(recursive=True)]:
            try:
                sockets = proc.net_connections(kind="inet")
            except psutil.Error:  # exited meanwhile
                continue
            for sock in sockets:
                if sock.status == psutil.CONN_LISTEN:
                    listening.setdefault(component.name, set()).add(sock.laddr.ip)
    assert {"postgres", "redis", "mlflow", "airflow-apiserver", "serving"} <= set(listening)
    assert all(ips <= {"127.0.0.1", "::ffff:127.0.0.1"} for ips in listening.values()), listening
