"""``pipeline trigger`` against a stand-in Airflow REST API (fake_airflow.py): credentials, params, following
a run, the summary, exit statuses, and SIGINT ending the run failed. The real api-server is
test_topology.py's."""
from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_airflow import STAGES, FakeAirflow

from pipeline.commands import trigger

ROOT = Path(__file__).resolve().parents[2]
REGISTERED = {"parent_run_id": "run123", "model_name": "penguins", "version": 3, "blessed": True}
DEPLOYED = {"parent_run_id": "run123", "model_name": "penguins", "version": 3, "deployed": True,
            "published": "/srv/pipeline/serving/penguins/3", "label": "stable", "aliases": {"champion": 3}}


@pytest.fixture
def fake(monkeypatch):
    server = FakeAirflow(xcoms={"ingest": {"parent_run_id": "run123"}, "register": REGISTERED,
                                "deploy": DEPLOYED})
    server.start()
    for var in ("NETRC", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AIRFLOW_USERNAME", server.username)
    monkeypatch.setenv("AIRFLOW_PASSWORD", server.password)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)  # its /api/2.0/mlflow/runs/get answers too
    yield server
    server.stop()


def run(fake: FakeAirflow, *flags: str) -> tuple[int, str]:
    out = io.StringIO()
    code = trigger.main(["--airflow", fake.url, "--poll-seconds", "0.01", *flags], out=out)
    return code, out.getvalue()


def test_a_run_is_triggered_with_the_params_and_followed_to_success(fake, tmp_path):
    config = tmp_path / "my.yaml"
    code, out = run(fake, "--config", str(config), "--epochs", "5", "--conf", '{"min_accuracy": 0.5}')

    assert code == 0, out
    assert fake.calls("POST", r"^/auth/token$") == [{"username": "admin", "password": "secret"}]
    assert fake.calls("POST", r"/dagRuns$") == [{"logical_date": None, "conf": {
        "min_accuracy": 0.5, "config": str(config.resolve()), "epochs": 5}}]
    lines = out.splitlines()
    assert f"pipeline trigger: DAG training_pipeline run {fake.run_id} on {fake.url}" in lines[0]
    # one line per task as it starts and as it ends, in the DAG's order
    started = [line.split()[0] for line in lines if line.strip().endswith("running")]
    finished = [line.split()[0] for line in lines if " success " in f"{line} "]
    assert started == list(STAGES) and finished == list(STAGES)
    assert f"MLflow run:       run123 ({fake.url}/#/experiments/7/runs/run123)" in lines
    assert lines[-6:] == [
        f"DAG run:          {fake.run_id} (success)",
        "MLflow run:       run123",
        "Registered model: penguins version 3",
        "Blessed:          yes",
        "Deployed:         /srv/pipeline/serving/penguins/3 (label stable)",
        "Champion:         version 3",
    ]


def test_a_failed_run_exits_1_naming_the_task_and_its_error(fake):
    fake.script = [{"ingest": "running"}, {"ingest": "success", "validate": "failed",
                                            **{t: "upstream_failed" for t in STAGES[2:]}}]
    fake.final_state, fake.xcoms = "failed", {"ingest": {"parent_run_id": "run123"}}
    fake.logs["validate"] = [
        {"event": "::group::Pre Execute", "level": "info"},
        {"event": "E0000 00:00:1 cuda_platform.cc:52] failed call to cuInit", "level": "error"},
        {"event": "Task failed with exception", "level": "error",
         "error_detail": [{"exc_type": "AirflowFailException",
                           "exc_value": "penguins.csv: column 'species': all values are missing"}]},
    ]
    code, out = run(fake)

    assert code == 1
    assert ("  validate     failed  1.5 s\n"
            "      AirflowFailException: penguins.csv: column 'species': all values are missing") in out
    assert f"DAG run:          {fake.run_id} (failed)" in out
    assert "Failed tasks:     deploy, evaluate, export, preprocess, register, split, train, validate" in out


@pytest.mark.parametrize("case, expected", [
    ("wrong password", "signing in to"),
    ("unknown DAG", "has no DAG 'other'"),
    ("paused", "DAG training_pipeline is paused"),
    ("params refused", "Invalid input for param epochs"),
    ("bad --conf", "--conf is not valid JSON"),
    ("unreachable", "is not reachable"),
])
def test_nothing_triggered_exits_2(fake, monkeypatch, capsys, case, expected):
    flags = []
    if case == "wrong password":
        monkeypatch.setenv("AIRFLOW_PASSWORD", "wrong")
    elif case == "unknown DAG":
        flags = ["--dag", "other"]
    elif case == "paused":
        fake.paused = True
    elif case == "params refused":
        flags = ["--epochs", "0"]
    elif case == "bad --conf":
        flags = ["--conf", "{epochs: 5}"]
    if case == "unreachable":
        code = trigger.main(["--airflow", "http://127.0.0.1:1"])
    else:
        code, _ = run(fake, *flags)

    assert code == 2
    assert expected in capsys.readouterr().err
    assert case == "params refused" or not fake.calls("POST", r"/dagRuns$")


def test_unpause_unpauses_a_paused_dag_before_triggering(fake):
    fake.paused = True
    code, out = run(fake, "--unpause", "--no-follow")

    assert code == 0
    assert fake.calls("PATCH", r"/dags/training_pipeline$") == [{"is_paused": False}]
    assert len(fake.calls("POST", r"/dagRuns$")) == 1
    assert "pipeline trigger: unpaused DAG training_pipeline" in out


def test_an_expired_token_is_replaced_by_signing_in_again(fake):
    fake.expire_token_after = 3
    code, out = run(fake)

    assert code == 0, out
    assert len(fake.calls("POST", r"^/auth/token$")) == 2


def test_credentials_come_from_the_environment_first_then_a_netrc_entry_of_the_host(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine airflow.example login alice password from-netrc\n"
                     "default login bob password other\n")
    netrc.chmod(0o600)
    url = "http://airflow.example:8080"

    environ = {"AIRFLOW_USERNAME": "u", "AIRFLOW_PASSWORD": "p"}
    assert trigger.credentials(url, str(netrc), environ) == ("u", "p")
    assert trigger.credentials(url, str(netrc), {}) == ("alice", "from-netrc")
    assert trigger.credentials(url, None, {"NETRC": str(netrc)}) == ("alice", "from-netrc")
    assert trigger.credentials("http://elsewhere:8080", str(netrc), {}) == ("bob", "other")
    with pytest.raises(trigger.TriggerError, match="no such file"):
        trigger.credentials(url, str(tmp_path / "missing"), {})
    netrc.write_text("machine other login x password y\n")
    with pytest.raises(trigger.TriggerError, match="no Airflow credentials for airflow.example"):
        trigger.credentials(url, str(netrc), {})


def test_run_conf_makes_paths_absolute_and_lets_flags_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(conf='{"epochs": 80, "seed": 3}', config=None, source="data.csv", label="y",
                              model_name="m", epochs=5, max_minutes=None)
    assert trigger.run_conf(args) == {"epochs": 5, "seed": 3, "config": "", "label": "y", "model_name": "m",
                                      "source": str(tmp_path / "data.csv")}
    args.source = "s3://bucket/data.csv"
    assert trigger.run_conf(args)["source"] == "s3://bucket/data.csv"
    args.conf = "[1]"
    with pytest.raises(trigger.TriggerError, match="JSON object"):
        trigger.run_conf(args)


def test_sigint_ends_the_dag_run_failed_and_exits_130(fake):
    """Through the `pipeline` command itself (pipeline.cli), in a process of its own."""
    fake.hold = True  # the run stays at its first step until the command marks it failed
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "trigger", "--airflow", fake.url,
                             "--poll-seconds", "0.05"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(p.split("?")[0].endswith("/taskInstances") for _, p, _ in fake.requests):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the command never followed the run"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == 130, out
    note = "interrupted by SIGINT (pipeline trigger)"
    assert fake.calls("PATCH", r"/dagRuns/") == [{"state": "failed", "note": note}]
    assert "Interrupted:      by SIGINT; the DAG run ended failed" in out
    assert f"DAG run:          {fake.run_id} (failed, interrupted by SIGINT)" in out
