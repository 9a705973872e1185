"""End to end: two `pipeline train` runs on penguins, then what a user compares them by in MLflow: the logged
models' metrics (Models tab), the DAG runs' headline (runs table), the registered versions' descriptions and
events, the model card, a drift run's link to the version it judged; through MLflow's client, its REST API and
the UI itself in headless Chromium (docs/mlflow_ui.md)."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
MODEL = "penguins"
CLASS_METRICS = [f"{m}_{c}" for c in ("Adelie", "Chinstrap", "Gentoo") for m in ("precision", "recall", "f1")]
EVAL_METRICS = ["accuracy", "precision_macro", "recall_macro", "f1_macro", "log_loss", "roc_auc_ovr", *CLASS_METRICS]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("compare") / "pipeline_home"


@pytest.fixture(scope="module")
def two_runs(home, run_train):
    """The two DAG runs' `pipeline train` outputs: v1 becomes the champion, v2 is compared with it."""
    outs = []
    for _ in range(2):
        result = run_train(home, "--epochs", "20")
        assert result.returncode == 0, result.stdout[-5000:]
        outs.append(result.stdout)
    return outs


@pytest.fixture
def client(home, two_runs, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from pipeline.tracking import client

    return client()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(home, two_runs):
    """`mlflow server` on the test store, on a free port of 127.0.0.1, in a process group stopped afterwards."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    log = open(home.parent / "mlflow-server.log", "w")
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri",
                             f"sqlite:///{home / 'mlflow' / 'mlflow.db'}", "--default-artifact-root",
                             str(home / "mlflow" / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # until it answers, or stops: a server that never starts fails the test below
            if proc.poll() is not None:
                break
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, (home.parent / "mlflow-server.log").read_text()[-3000:]
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _rest(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=data,
                                 headers={"Content-Type": "application/json"}, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def _experiment(client):
    return client.get_experiment_by_name(MODEL).experiment_id


def test_the_models_tab_has_each_candidates_metrics_on_the_test_dataset(client, server):
    import mlflow

    exp = _experiment(client)
    models = {m.name: m for m in mlflow.search_logged_models(experiment_ids=[exp], output_format="list")}
    assert sorted(models) == ["penguins-v1", "penguins-v2"], "named after the served model and its version"
    for version, model in enumerate((models["penguins-v1"], models["penguins-v2"]), start=1):
        metrics = {m.key: m for m in model.metrics if m.dataset_name}
        assert set(EVAL_METRICS) <= set(metrics), f"v{version} lacks {set(EVAL_METRICS) - set(metrics)}"
        assert {m.dataset_name for m in metrics.values()} == {"penguins-test"}
        assert model.tags["model_version"] == str(version) and model.tags["gate.decision"] in ("blessed", "not blessed")
        assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": MODEL, "version": version}]
    first, second = ({m.key: m.value for m in models[n].metrics} for n in ("penguins-v1", "penguins-v2"))
    assert not any(k.startswith("champion_") for k in first), "no champion before the first run"
    assert {f"champion_{k}" for k in EVAL_METRICS} <= set(second)
    assert second["champion_accuracy"] == pytest.approx(first["accuracy"]), "v1 scored again on the same split"

    # The same through the REST API, as the UI reads it.
    found = _rest(server, "logged-models/search", {"experiment_ids": [exp]})["models"]
    by_name = {m["info"]["name"]: m for m in found}
    rest_metrics = {m["key"] for m in by_name["penguins-v2"]["data"]["metrics"] if m.get("dataset_name")}
    assert {"accuracy", "f1_macro", "champion_accuracy"} <= rest_metrics


def test_each_dag_runs_run_carries_the_headline_and_the_gate_decision(client, server):
    exp = _experiment(client)
    runs = _rest(server, "runs/search", {"experiment_ids": [exp], "filter": "tags.`pipeline.kind` = 'dag_run'",
                                         "order_by": ["attributes.start_time ASC"]})["runs"]
    assert len(runs) == 2
    for i, run in enumerate(runs, start=1):
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert {"test_accuracy", "rows", "training_seconds"} <= set(metrics)
        assert metrics["rows"] == 344 and metrics["training_seconds"] > 0
        assert tags["gate.metric"] == "accuracy" and tags["model_version"] == str(i)
        assert tags["gate.decision"] == ("blessed" if tags["blessed"] == "true" else "not blessed")
        assert "accuracy" in tags["gate.reason"]
        assert ("champion_accuracy" in metrics) == (i == 2), "the champion's score once there is one"
    first_tags = {t["key"]: t["value"] for t in runs[0]["data"]["tags"]}
    assert first_tags["blessed"] == "true", "20 epochs make a blessed first model (the second needs a champion)"

    # The runs table's saved view shows these columns; the printed link opens it.
    from pipeline import tracking

    view = json.loads(client.get_experiment(exp).tags[tracking.SAVED_VIEW_PREFIX + tracking.RUNS_VIEW_KEY])
    columns = json.loads(view["state"])["selectedColumns"]
    assert {"metrics.`test_accuracy`", "metrics.`champion_accuracy`", "tags.`gate.decision`"} <= set(columns)
    assert tracking.ui_url("http://h", MODEL).endswith(f"&viewStateShareKey={tracking.RUNS_VIEW_KEY}")


def test_each_version_describes_its_data_metrics_gate_lineage_and_events(client, server):
    from pipeline import registry

    second = _rest(server, f"model-versions/get?name={MODEL}&version=2")["model_version"]["description"]
    first = client.get_model_version(MODEL, "1").description
    assert first.startswith("Blessed: accuracy") and "(no champion to compare with)" in first
    assert re.match(r"(Not blessed|Blessed): accuracy \S+ \(champion v1: \S+\)\n", second)
    assert "| metric | v2 | champion v1 |" in second and "| f1_macro |" in second
    assert "**Gate** on `accuracy`" in second and "vs champion" in second
    assert "344 rows from" in second and "sha256" in second
    assert "[DAG run's MLflow run](#/experiments/" in second and "[logged model `penguins-v2`](#/experiments/" in second
    assert "/dags/training_pipeline/runs/manual__" in second
    assert "deploy.events" not in client.get_model_version(MODEL, "1").tags, "events are lines, not a JSON tag"

    blessed = client.get_model_version(MODEL, "2").tags["blessed"] == "true"
    events = registry.version_events(MODEL, 1)
    assert [(e["action"], e["alias"]) for e in events] == [("deploy", "champion")] + (
        [("deploy", "previous")] if blessed else [])
    assert "### Deploy events\n\n- `" in first and "` deploy → `champion` by `airflow:training_pipeline/" in first
    assert all(e["by"].startswith("airflow:training_pipeline/manual__") for e in events)

    table = client.get_registered_model(MODEL).description
    assert "| version | registered | blessed | accuracy | f1_macro |" in table
    assert table.index("| v2 |") < table.index("| v1 |"), "newest first"


def test_each_candidate_has_a_model_card_with_the_deploy_outcome(client, two_runs):
    exp = _experiment(client)
    import mlflow

    model = next(m for m in mlflow.search_logged_models(experiment_ids=[exp], output_format="list")
                 if m.name == "penguins-v1")
    card = Path(mlflow.artifacts.download_artifacts(f"{model.artifact_location}/model_card.html")).read_text()
    assert "<title>Model card: penguins version 1</title>" in card
    assert "<code>island</code></td><td>categorical</td>" in card and "<code>body_mass_g</code></td><td>numeric</td>" in card
    assert "data:image/png;base64," in card, "the plots are embedded"
    assert "Outcome: deployed (label stable)" in card and "ms</td>" in card, "the deploy checks' measurements"
    parent = client.get_model_version(MODEL, "1").tags["mlflow_parent_run_id"]
    assert "model_card.html" in {a.path for a in client.list_artifacts(parent)}


def test_a_drift_run_names_the_version_it_judged(client, home):
    import pandas as pd

    from pipeline.monitoring.monitor import MonitorConfig, run_monitor

    version_dir = home / "serving" / MODEL / "1"
    lineage = version_dir / "assets.extra" / "pipeline_metadata.json"
    meta = json.loads(lineage.read_text())
    window = pd.read_parquet(meta["test_split"]).drop(columns=[meta["label"]])  # served traffic: no labels yet
    result = run_monitor(MonitorConfig(model_name=MODEL, report=False), window, lineage,
                         window_end=pd.Timestamp("2026-12-01T00:00:00Z").to_pydatetime(), log_mlflow=True)
    run = client.get_run(result.meta["mlflow_run_id"])
    assert run.data.tags["monitor.registered_model"] == f"models:/{MODEL}/1"
    assert run.data.tags["monitor.model_version_url"] == f"#/models/{MODEL}/versions/1"
    assert f"[{MODEL} version 1](#/models/{MODEL}/versions/1)" in run.data.tags["mlflow.note.content"]
    model_id = run.data.tags["monitor.model_id"]
    assert client.get_logged_model(model_id).name == "penguins-v1"
    assert [m.model_id for m in run.inputs.model_inputs] == [model_id]


# --------------------------------------------------------------------------------------------- the browser
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _page_text(dom: str) -> str:
    """What the page shows: its DOM without scripts, styles and tags."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def _browse(url: str, out: Path, expect: set[str], width: int = 1800) -> str:
    """Load ``url`` in headless Chromium and return the page's text once it shows every string of ``expect``
    (the UI fetches its data after the page loads: on a busy machine a first look may come too early, so the
    page is loaded again with more virtual time, up to three times); then save a screenshot to ``out``."""
    def run(budget_ms: int, *args: str) -> str:
        cmd = [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
               f"--user-data-dir={out.parent / 'chromium-profile'}", f"--virtual-time-budget={budget_ms}",
               f"--window-size={width},1100", *args, url]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        try:
            return proc.communicate(timeout=300)[0]
        finally:
            if proc.poll() is None:  # stop the group we started: Chromium's own children included
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    for budget in (20000, 40000, 80000):
        text = _page_text(run(budget, "--dump-dom"))
        if all(e in text for e in expect):
            break
    run(budget, f"--screenshot={out}")
    assert out.is_file() and out.stat().st_size > 0, f"no screenshot of {url}"
    missing = sorted(e for e in expect if e not in text)
    assert not missing, f"{url} does not show {missing}: {text[:3000]}"
    return text


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (Debian: apt-get install -y "
                                                  "chromium); the UI is checked through the REST API only")
def test_the_ui_shows_the_metric_columns(client, server, tmp_path):
    exp = _experiment(client)
    ml = "workflowType=machine_learning"
    # Wide enough for the candidates' metric columns: the table only renders the columns in the window.
    models = _browse(f"{server}/#/experiments/{exp}/models?{ml}", tmp_path / "models_tab.png",
                     {"penguins-v1", "penguins-v2", "penguins-test", "f1_macro"}, width=4200)
    assert {"accuracy", "precision_macro", "recall_macro", "f1_macro", "log_loss"} <= set(models.split())

    _browse(f"{server}/#/experiments/{exp}/models?{ml}&viewMode=CHART", tmp_path / "models_chart.png",
            {"penguins-v1", "penguins-v2", "penguins-test", "accuracy"})

    from pipeline import tracking

    runs = _browse(f"{server}/#/experiments/{exp}/runs?{ml}&viewStateShareKey={tracking.RUNS_VIEW_KEY}",
                   tmp_path / "runs_table.png", {"test_accuracy", "gate.decision"}, width=3600)
    assert {"test_accuracy", "champion_accuracy", "training_seconds", "blessed", "gate.decision"} <= set(runs.split())

    registered = _browse(f"{server}/#/models/{MODEL}?{ml}", tmp_path / "registered_model.png",
                         {"champion's accuracy", "f1_macro"})
    assert {"accuracy", "f1_macro", "v1", "v2"} <= set(registered.split())

    deployed = client.get_model_version(MODEL, "2").tags["blessed"] == "true"  # else it has no events yet
    _browse(f"{server}/#/models/{MODEL}/versions/2?{ml}", tmp_path / "model_version.png",
            {"champion v1", "f1_macro", "Lineage", "Deploy events" if deployed else "Not blessed"})
    print(f"screenshots: {tmp_path}")
