"""``pipeline rollback`` under load: a running server that follows models.config switches ``stable`` back to the
previous version while REST and gRPC clients keep sending requests, and not one of them fails."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from deploy_helpers import MODEL, ServerProcess, answered_version, config_following_server, run_pipeline

from pipeline import deploy, registry
from pipeline.config import DeployConfig

ISLAND, BILL = ["Biscoe", "Dream"], [39.1, 45.0]
SWITCH_TIMEOUT_S = 120  # only bounds a broken switch; nothing is asserted about how fast it is


class Load:
    """Clients sending predicts to the ``stable`` label until stopped, recording which version answered."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.stop = threading.Event()
        self.answers: dict[str, list[int | None]] = {"rest-1": [], "rest-2": [], "grpc": []}
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._rest, args=(k,), daemon=True) for k in ("rest-1", "rest-2")]
        self.threads.append(threading.Thread(target=self._grpc, daemon=True))

    def _rest(self, key: str) -> None:
        import requests

        session = requests.Session()
        url = f"{self.server.url}/v1/models/{MODEL}/labels/stable:predict"
        body = {"inputs": {"bill_length_mm": BILL, "island": ISLAND}}
        while not self.stop.is_set():
            try:
                response = session.post(url, json=body, timeout=30)
                if response.status_code != 200:
                    self.failures.append(f"{key}: {response.status_code} {response.text}")
                    continue
                self.answers[key].append(answered_version(response.json()["outputs"]["probabilities"], ISLAND, BILL))
            except Exception as exc:  # any failure at all counts
                self.failures.append(f"{key}: {exc!r}")

    def _grpc(self) -> None:
        import tensorflow as tf

        stub = self.server.prediction_stub()
        request = deploy.predict_request(MODEL, {"bill_length_mm": np.array(BILL, np.float32),
                                                 "island": np.array(ISLAND)})
        request.model_spec.version_label = "stable"
        while not self.stop.is_set():
            try:
                response = stub.Predict(request, timeout=30)
                self.answers["grpc"].append(
                    answered_version(tf.make_ndarray(response.outputs["probabilities"]), ISLAND, BILL))
            except Exception as exc:
                self.failures.append(f"grpc: {exc!r}")

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def wait_until_all_answer(self, version: int, count: int = 20) -> None:
        """Until every client has seen ``count`` answers in a row from ``version``."""
        deadline = time.monotonic() + SWITCH_TIMEOUT_S
        while time.monotonic() < deadline and not self.failures:
            if all(len(a) >= count and set(a[-count:]) == {version} for a in self.answers.values()):
                return
            time.sleep(0.1)
        raise AssertionError(f"not every client saw version {version}: failures {self.failures[:5]}, "
                             f"last answers {({k: a[-5:] for k, a in self.answers.items()})}")


@pytest.fixture
def two_versions_serving(reg, pipeline_home, templates):
    """v1 previous, v2 champion, both on disk; a server following models.config every 0.2 s."""
    v1 = reg.place(templates["v1"], champion=-1)
    v2 = reg.place(templates["v2"])
    deploy.move_aliases(MODEL, deploy.new_aliases(reg.aliases(), v2, canary=False), action="deploy", reason="set-up")
    server = config_following_server(pipeline_home)
    try:
        server.wait_ready(MODEL, v1)
        server.wait_ready(MODEL, v2)
        yield server, v1, v2
    finally:
        server.stop()


def test_rollback_under_load_switches_stable_with_zero_failed_requests(reg, pipeline_home, two_versions_serving):
    server, v1, v2 = two_versions_serving
    with Load(server) as load:
        load.wait_until_all_answer(v2)
        result = run_pipeline(pipeline_home, "rollback", "--reason", "bad canary metrics")
        assert result.returncode == 0, result.stdout[-3000:]
        assert f"Rolled back:      champion is version {v1}" in result.stdout
        load.wait_until_all_answer(v1)
    assert load.failures == []
    for key, answers in load.answers.items():
        assert None not in answers, f"{key} got an answer from neither version"
        switch = answers.index(v1)
        assert set(answers[:switch]) == {v2} and set(answers[switch:]) == {v1}, f"{key} went back and forth"

    assert reg.aliases() == {"champion": v1, "previous": v2}
    status = server.get(f"/v1/models/{MODEL}/labels/stable/metadata").json()
    assert status["model_spec"]["version"] == str(v1)
    event = registry.version_events(MODEL, v1)[-1]
    assert (event["action"], event["alias"], event["reason"]) == ("rollback", "champion", "bad canary metrics")
    assert event["by"].startswith("cli:")

    lineage = run_pipeline(pipeline_home, "lineage", str(v1))
    assert lineage.returncode == 0 and "rollback  -> champion" in lineage.stdout and "bad canary metrics" in lineage.stdout


def test_rollback_refuses_what_it_cannot_serve(reg, pipeline_home, templates):
    cfg = DeployConfig()
    with pytest.raises(deploy.DeployError, match="no previous version to roll back to"):
        v1 = reg.place(templates["v1"], champion=-1)
        deploy.rollback(MODEL, cfg)
    unblessed, _, _ = reg.export(templates["v2"], blessed=False)
    with pytest.raises(deploy.DeployError, match=f"version {unblessed} of penguins was never blessed"):
        deploy.rollback(MODEL, cfg, to=unblessed)
    gone, staging, _ = reg.export(templates["v3"])  # blessed, but never published (or removed by retention)
    with pytest.raises(deploy.DeployError, match=f"version {gone} of penguins is not on disk"):
        deploy.rollback(MODEL, cfg, to=gone)
    with pytest.raises(deploy.DeployError, match="is the champion already"):
        deploy.rollback(MODEL, cfg, to=v1)
    assert reg.aliases() == {"champion": v1}
    result = run_pipeline(pipeline_home, "rollback")
    assert result.returncode == 1 and "error: penguins has no previous version to roll back to" in result.stdout
