"""A second version reaching production the careful way, on the production topology (scripts/topology.py), while
a client keeps predicting by the label ``stable`` and none of its requests may fail:

1. a canary run (``deploy.canary: true``) triggered over Airflow's REST API, through the faults a deployment
   meets: the Celery worker running ``train`` is killed (SIGKILL to its process group, as the OOM killer or a lost
   machine would), and restarted; the scheduler is restarted mid-run; Postgres is restarted between two tasks.
   The run still succeeds: the retried ``train`` resumes from its checkpoint, and nothing is duplicated in MLflow
   or the registry. The new version is served under the label ``canary`` while ``stable`` stays where it was;
2. ``pipeline promote`` moves ``stable`` to it, ``pipeline rollback`` moves it back, each followed by the server.

It needs a champion to start from: the one test_topology.py's run made, or one made here when run alone.
"""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
import topology
import yaml
from clients import PENGUIN, label_version, predict_by_label, wait_label

pytestmark = [pytest.mark.e2e, pytest.mark.production]

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "validate", "split", "preprocess", "train", "evaluate", "export", "register", "deploy")
RUN_TIMEOUT_S = 1800  # deadlines, not measures: a run takes minutes on 2 shared cores, the faults add the
STEP_TIMEOUT_S = 600  # heartbeat timeout (60 s here) and the retry delay


class Traffic:
    """A client predicting by ``label`` (and asking which version answers) in a loop until stopped: every
    request that is not a 200 with one prediction of the three classes is kept as a failure."""

    def __init__(self, topo, label: str = "stable"):
        self.url = f"{topo.serving_url}/v1/models/penguins/labels/{label}"
        self.requests, self.failures, self.versions = 0, [], set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="traffic", daemon=True)

    def _loop(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                answer = session.post(f"{self.url}:predict", json={"instances": [PENGUIN]}, timeout=30)
                meta = session.get(f"{self.url}/metadata", timeout=30)
                ok = (answer.status_code == 200 and meta.status_code == 200
                      and answer.json()["predictions"][0]["classes"] == ["Adelie", "Chinstrap", "Gentoo"])
                if ok:
                    self.versions.add(int(meta.json()["model_spec"]["version"]))
                else:
                    self.failures.append(f"{answer.status_code} {answer.text[:200]} / {meta.status_code}")
            except (requests.RequestException, ValueError, KeyError) as exc:
                self.failures.append(repr(exc))
            self.requests += 1
            self._stop.wait(0.05)  # a steady client, not a load test: the cores also train

    def start(self) -> "Traffic":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.fixture(scope="module")
def rest(topo):
    """Airflow's REST API with a fresh token per call (one may be asked for while Postgres restarts); returns
    the response, or None while the API server cannot answer."""
    def call(method: str, path: str, **kw):
        try:
            token = topo.airflow_token()
            return requests.request(method, f"{topo.airflow_url}/api/v2{path}", timeout=30,
                                    headers={"Authorization": f"Bearer {token}"}, **kw)
        except (requests.RequestException, topology.TopologyError):
            return None
    return call


def _trigger(rest, conf: dict) -> str:
    response = rest("POST", f"/dags/{topology.DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf})
    assert response is not None and response.status_code == 200, response and response.text
    return response.json()["dag_run_id"]


def _wait(what: str, probe, timeout_s: float, topo, interval_s: float = 0.5, revived: dict | None = None):
    """Poll ``probe`` until it returns something truthy; the topology is watched meanwhile: a component that
    exits fails the test, or (``revived`` given) is started again as the compose file's restart policy would,
    and recorded there."""
    deadline = time.monotonic() + timeout_s
    while not (found := probe()):
        if revived is None:
            topo.check()
        else:
            revived.update(topo.revive())
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s:.0f} s; logs under {topo.logs}"
        time.sleep(interval_s)
    return found


def _run_state(rest, run_id: str) -> str | None:
    response = rest("GET", f"/dags/{topology.DAG_ID}/dagRuns/{run_id}")
    return response.json()["state"] if response is not None and response.status_code == 200 else None


def _task(rest, run_id: str, task_id: str) -> dict | None:
    response = rest("GET", f"/dags/{topology.DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")
    return response.json() if response is not None and response.status_code == 200 else None


def _finished(rest, run_id: str) -> str | None:
    state = _run_state(rest, run_id)
    return state if state in ("success", "failed") else None


def _checkpointed_epoch(metadata: Path) -> int:
    try:
        return int(json.loads(metadata.read_text())["epoch"])
    except (OSError, ValueError, KeyError):  # not written yet, or half way
        return 0


@pytest.fixture(scope="module")
def champion(topo, rest, mlflow) -> int:
    """The version serving ``stable`` before the canary: test_topology.py's, or a short run's made here."""
    def current() -> int | None:
        response = requests.get(f"{topo.mlflow_url}/api/2.0/mlflow/registered-models/alias", auth=topo.mlflow_admin,
                                params={"name": "penguins", "alias": "champion"}, timeout=30)
        return int(response.json()["model_version"]["version"]) if response.status_code == 200 else None

    if current() is None:
        run_id = _trigger(rest, {"epochs": 5, "min_accuracy": 0.0})
        assert _wait("the first run", lambda: _finished(rest, run_id), RUN_TIMEOUT_S, topo, 2) == "success"
    version = current()
    assert version is not None
    wait_label(topo, "stable", version)
    return version


@pytest.fixture(scope="module")
def traffic(topo, champion):
    client = Traffic(topo).start()
    yield client
    client.stop()


@pytest.fixture(scope="module")
def canary_config(topo) -> Path:
    """conf/penguins.yaml deploying as a canary. The gate lets any version through: a version worse than the
    champion is what a canary is for, and this test is about the way there."""
    cfg = yaml.safe_load((ROOT / "conf" / "penguins.yaml").read_text())
    cfg["deploy"] = {"canary": True}
    cfg["gate"] = {**cfg["gate"], "thresholds": {}, "max_regression": 1.0}
    # small batches and a long patience: a fit of some seconds, so that the worker is killed while it trains
    cfg["training"] = {**cfg["training"], "batch_size": 8, "early_stopping_patience": 40}
    path = topo.root / "canary.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def canary(topo, rest, champion, traffic, canary_config):
    """The canary run, through a killed worker, a restarted scheduler and a restarted Postgres. Returns the
    run id and the faults' record."""
    from pipeline.paths import safe_key

    run_id = _trigger(rest, {"config": str(canary_config), "min_accuracy": 0.0})
    faults: dict[str, object] = {}
    # 1. the worker running `train`, killed once an epoch is checkpointed (Keras' BackupAndRestore writes the
    # weights, then the metadata naming the next epoch)
    metadata = topo.home / "runs" / safe_key(run_id) / "train" / "backup" / "training_metadata.json"
    _wait("a checkpoint of train", lambda: _checkpointed_epoch(metadata) >= 1, STEP_TIMEOUT_S, topo, 0.05)
    marker = f"run_id={run_id}/task_id=train/"
    worker = _wait("the worker running train", lambda: next(
        (f"airflow-worker-{i}" for i in range(1, topo.workers + 1)
         if marker in (topo.logs / f"airflow-worker-{i}.log").read_text(errors="replace")), None), 60, topo)
    topo.restart(worker, kill=True)
    faults["killed"] = worker
    # 2. the scheduler restarted mid-run: the new one finds the dead task, fails it and schedules its retry
    topo.restart("airflow-scheduler")
    # 3. Postgres restarted between two tasks: once train has succeeded (on its retry), before evaluate ends
    trained = _wait("train's retry to succeed", lambda: (lambda ti: ti if ti and ti["state"] == "success" else None)(
        _task(rest, run_id, "train")), STEP_TIMEOUT_S, topo, 0.5)
    faults["train_tries"] = trained["try_number"]
    topo.restart("postgres")
    # Airflow's scheduler, dag-processor and triggerer exit when their database goes away: `restart: unless-stopped`
    # in the compose file starts them again, and so does the wait here
    revived: dict[str, str] = {}
    faults["state"] = _wait("the canary run to end", lambda: _finished(rest, run_id), RUN_TIMEOUT_S, topo, 2,
                            revived=revived)
    revived.update(topo.revive())
    faults["revived"] = sorted(revived)
    print(f"canary run {run_id}: {faults}")
    return run_id, faults


def test_a_canary_run_survives_a_killed_worker_a_restarted_scheduler_and_postgres(topo, rest, mlflow, champion,
                                                                                  canary):
    run_id, faults = canary
    logs = f"logs under {topo.logs} and {topo.home}/airflow/logs"
    assert faults["state"] == "success", f"the canary run {run_id} ended {faults['state']}; {logs}"
    assert faults["train_tries"] >= 2, f"train was not retried after {faults['killed']} was killed; {logs}"
    instances = rest("GET", f"/dags/{topology.DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    assert {ti["task_id"]: ti["state"] for ti in instances} == {t: "success" for t in STAGES}

    # MLflow: one DAG-run run, one run per stage (the retried train's attempts share one), one version
    experiment = mlflow("GET", "/experiments/get-by-name", params={"experiment_name": "penguins"})["experiment"]
    parents = mlflow("POST", "/runs/search", json={
        "experiment_ids": [experiment["experiment_id"]],
        "filter": f"tags.`pipeline.kind` = 'dag_run' and tags.`airflow.run_id` = '{run_id}'"})["runs"]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED", parents
    children = mlflow("POST", "/runs/search", json={
        "experiment_ids": [experiment["experiment_id"]], "max_results": 100,
        "filter": f"tags.`mlflow.parentRunId` = '{parents[0]['info']['run_id']}'"})["runs"]
    stages = sorted(next(t["value"] for t in c["data"]["tags"] if t["key"] == "pipeline.stage") for c in children)
    assert stages == sorted(STAGES), stages
    train_run = next(c for c in children if {"key": "pipeline.stage", "value": "train"} in c["data"]["tags"])
    metrics = {m["key"]: m["value"] for m in train_run["data"]["metrics"]}
    assert metrics["resumed_from_epoch"] >= 1, metrics  # the retry went on from the killed attempt's checkpoint
    versions = mlflow("GET", "/model-versions/search", params={
        "filter": f"name = 'penguins' and tags.`airflow.run_id` = '{run_id}'"})["model_versions"]
    assert len(versions) == 1, versions
    new = int(versions[0]["version"])

    # the registry and the server: the new version is the canary, stable has not moved
    aliases = {a["alias"]: int(a["version"]) for a in mlflow(
        "GET", "/registered-models/get", params={"name": "penguins"})["registered_model"].get("aliases", [])}
    assert (aliases.get("champion"), aliases.get("challenger")) == (champion, new), aliases
    config = (topo.home / "serving" / "models.config").read_text()
    assert re.search(rf'key: "canary"\s+value: {new}\b', config), config
    assert re.search(rf'key: "stable"\s+value: {champion}\b', config), config
    predict_by_label(topo, "canary")
    wait_label(topo, "canary", new)
    assert label_version(topo, "stable") == champion


def _cli(topo, *args: str) -> str:
    proc = subprocess.run([str(topology.VENV_BIN / "pipeline"), *args], env=topo.admin_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"pipeline {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def test_promote_then_rollback_move_stable_while_a_client_predicts(topo, mlflow, champion, canary, traffic,
                                                                   canary_config):
    new = int(mlflow("GET", "/registered-models/alias", params={"name": "penguins", "alias": "challenger"})
              ["model_version"]["version"])

    out = _cli(topo, "promote", "--config", str(canary_config), "--reason", "canary looked fine")
    assert f"champion is version {new}" in out, out
    wait_label(topo, "stable", new)
    for _ in range(20):  # requests answered by the promoted version
        time.sleep(0.1)
    out = _cli(topo, "rollback", "--config", str(canary_config), "--reason", "rolled back by the test")
    assert f"champion is version {champion}" in out, out
    wait_label(topo, "stable", champion)
    time.sleep(2)

    traffic.stop()
    assert traffic.requests > 0 and not traffic.failures, (
        f"{len(traffic.failures)} of {traffic.requests} requests by label stable failed: {traffic.failures[:5]}")
    assert traffic.versions == {champion, new}, traffic.versions  # it saw stable move, and move back
    aliases = {a["alias"]: int(a["version"]) for a in mlflow(
        "GET", "/registered-models/get", params={"name": "penguins"})["registered_model"].get("aliases", [])}
    assert (aliases.get("champion"), aliases.get("previous")) == (champion, new), aliases
    description = mlflow("GET", "/model-versions/get", params={"name": "penguins", "version": str(new)})[
        "model_version"].get("description", "")
    assert "canary looked fine" in description and "rolled back by the test" in description, description
