"""End to end: two real runs of the training DAG through Airflow (short training), the second in canary mode;
then ``pipeline promote`` while ``pipeline serve`` (no flags: the generated models.config) is running."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from deploy_helpers import MODEL, ServerProcess, run_pipeline

pytestmark = pytest.mark.e2e
CONFIG = Path(__file__).resolve().parents[2] / "conf" / "penguins.yaml"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("deploy_e2e") / "pipeline_home"


def _config(tmp: Path, **deploy) -> Path:
    raw = yaml.safe_load(CONFIG.read_text())
    raw["training"]["epochs"] = 15
    raw["gate"] = {"metric": "accuracy", "thresholds": {"accuracy": 0.5}, "max_regression": 1.0}
    raw["deploy"] = {"latency_budget_ms": 5000, **deploy}
    path = tmp / f"penguins-{'-'.join(deploy) or 'plain'}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _line(out: str, prefix: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(prefix + ":")).split(":", 1)[1].strip()


def test_two_dag_runs_canary_then_promote_while_serving(home, tmp_path_factory, monkeypatch):
    tmp = tmp_path_factory.mktemp("configs")
    first = run_pipeline(home, "train", "--config", str(_config(tmp)), timeout=900)
    assert first.returncode == 0, first.stdout[-5000:]
    assert _line(first.stdout, "Deployed") == f"{home / 'serving' / MODEL / '1'} (label stable)"
    second = run_pipeline(home, "train", "--config", str(_config(tmp, canary=True)), timeout=900)
    assert second.returncode == 0, second.stdout[-5000:]
    assert _line(second.stdout, "Deployed") == f"{home / 'serving' / MODEL / '2'} (label canary)"
    assert _line(second.stdout, "Champion") == "version 1; canary: version 2"
    assert not list((home / "serving" / MODEL).glob(".staging-*")), "staging copies are cleaned up"

    monkeypatch.setenv("PIPELINE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from pipeline import registry

    assert registry.served_aliases(MODEL) == {"champion": 1, "challenger": 2}
    server = ServerProcess(home, [], env={"PIPELINE_HOME": str(home)})  # no flags: serving/models.config
    server.start()
    try:
        server.wait_ready(MODEL, 1)
        server.wait_ready(MODEL, 2)
        for label, version in (("stable", "1"), ("canary", "2")):
            assert server.get(f"/v1/models/{MODEL}/labels/{label}/metadata").json()["model_spec"]["version"] == version
        row = {"island": "Biscoe", "bill_length_mm": 48.6, "bill_depth_mm": 16.0, "flipper_length_mm": 230.0,
               "body_mass_g": 5800.0, "sex": "male"}
        answer = server.post(f"/v1/models/{MODEL}/labels/stable:predict", {"instances": [row]})
        assert answer.status_code == 200 and answer.json()["predictions"][0]["classes"][2] == "Gentoo"

        promoted = run_pipeline(home, "promote", "--config", str(_config(tmp, canary=True)), "--reason", "e2e")
        assert promoted.returncode == 0, promoted.stdout
        assert registry.served_aliases(MODEL) == {"champion": 2, "previous": 1}
        # The running server follows the regenerated models.config: stable is version 2, canary is gone.
        import time

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            stable = server.get(f"/v1/models/{MODEL}/labels/stable/metadata").json()
            canary = server.get(f"/v1/models/{MODEL}/labels/canary/metadata")
            if stable.get("model_spec", {}).get("version") == "2" and canary.status_code == 400:
                break
            time.sleep(0.2)
        assert stable["model_spec"]["version"] == "2" and canary.status_code == 400, (stable, canary.text)
    finally:
        server.stop()

    lineage = run_pipeline(home, "lineage")
    assert lineage.returncode == 0, lineage.stdout
    out = lineage.stdout
    assert "Model:            penguins version 2 (champion; blessed)" in out
    assert "DAG run:          training_pipeline / manual__" in out and "Dataset digest:   " in out
    assert "accuracy=" in out and "deploy    -> challenger by airflow:training_pipeline/manual__" in out
    assert "promote   -> champion   by cli:" in out
