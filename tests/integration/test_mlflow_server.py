"""The pipeline's tracking against a real MLflow tracking server (the production set-up: runs over HTTP, artifacts
proxied by the server), not only the embedded SQLite store. The server is `mlflow/server.sh`, the script the
production compose file runs, on a free port in its own process group."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tracking_server(pipeline_home, tmp_path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_PORT": str(port), "MLFLOW_HOST": "127.0.0.1",
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'server.db'}",
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "server-artifacts"), "MLFLOW_WORKERS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(["bash", str(ROOT / "mlflow" / "server.sh")], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, "mlflow server exited"
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not become healthy")
        yield url, tmp_path / "server-artifacts"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_pipeline_tracks_and_registers_through_a_tracking_server(tracking_server, monkeypatch):
    url, artifacts = tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    from pipeline import tasks as T
    from pipeline.tracking import client

    ctx = T.RunContext("training_pipeline", "manual__remote")
    p = {"epochs": 3, "min_accuracy": 0.0}
    i = T.ingest_task(p, ctx)
    v = T.validate_task(p, ctx, i)
    s = T.split_task(p, ctx, i, v)
    pp = T.preprocess_task(p, ctx, s, v)
    tr = T.train_task(p, ctx, s, pp)
    e = T.evaluate_task(p, ctx, s, pp, tr)
    x = T.export_task(p, ctx, i, v, s, pp, tr, e)
    r = T.register_task(p, ctx, i, e, x)
    d = T.deploy_task(p, ctx, x, r)  # publishing and the aliases are the deploy stage's
    assert d["deployed"] and d["aliases"]["champion"] == r["version"]

    c = client()
    assert c.tracking_uri == url
    assert str(c.get_model_version_by_alias("penguins", "champion").version) == str(r["version"])
    children = c.search_runs([c.get_experiment_by_name("penguins").experiment_id],
                             filter_string=f"tags.`mlflow.parentRunId` = '{r['parent_run_id']}'")
    assert len(children) == 9
    evaluate = next(ch for ch in children if ch.data.tags["pipeline.stage"] == "evaluate")
    assert "confusion_matrix.png" in {a.path for a in c.list_artifacts(evaluate.info.run_id)}
    # The artifacts went through the server into its artifact destination, not into the local PIPELINE_HOME.
    assert any(p.name == "confusion_matrix.png" for p in artifacts.rglob("*.png"))
    assert any(p.name == "saved_model.pb" for p in artifacts.rglob("saved_model.pb"))
