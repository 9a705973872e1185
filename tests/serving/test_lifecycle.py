"""Model lifecycle: new versions, broken and half-copied directories, labels, reloads, warmup, shutdown."""
from __future__ import annotations

import shutil
import signal
import threading
import time

import grpc
import numpy as np
import pytest
import serving_models as models
import tensorflow as tf
from conftest import ServerProcess, write_models_config
from tensorflow_serving.apis import model_management_pb2, predict_pb2
from tensorflow_serving.config import model_server_config_pb2

ROW = {"bill_length_mm": 42.0, "island": "Dream"}
pytestmark = pytest.mark.slow


def served_version(response) -> int:
    """Which penguins version produced a prediction (the version is baked into the graph)."""
    got = np.asarray(response.json()["predictions"][0]["probabilities"])
    for version in range(1, 10):
        if np.allclose(got, models.penguins_expected([42.0], ["Dream"], version)[0], rtol=1e-5):
            return version
    raise AssertionError(f"prediction matches no version: {got}")


def wait_for(condition, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def states(server, model: str) -> dict[int, tuple[str, str, str]]:
    response = server.get(f"/v1/models/{model}")
    if response.status_code != 200:
        return {}
    return {int(v["version"]): (v["state"], v["status"]["error_code"], v["status"]["error_message"])
            for v in response.json()["model_version_status"]}


@pytest.fixture(scope="module")
def lifecycle(templates, tmp_path_factory):
    work = tmp_path_factory.mktemp("lifecycle")
    base = work / "models"
    models.copy_version(templates["penguins_1"], base / "penguins", 1)
    config = write_models_config(work / "models.config", [
        f'config {{ name: "penguins" base_path: "{base / "penguins"}" model_platform: "tensorflow" }}'])
    server = ServerProcess(work, ["--model_config_file", str(config), "--file_system_poll_wait_seconds", "0.2",
                                  "--model_config_file_poll_wait_seconds", "0.5"])
    server.base, server.config, server.templates = base, config, templates
    server.start()
    try:
        server.wait_ready("penguins")
        yield server
    finally:
        server.stop()


class Hammer(threading.Thread):
    """Sends predictions continuously and records every status code and answering version."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server, self.stop_event, self.results = server, threading.Event(), []

    def run(self):
        while not self.stop_event.is_set():
            response = self.server.post("/v1/models/penguins:predict", {"instances": [ROW]})
            self.results.append((response.status_code, served_version(response) if response.ok else response.text))

    def finish(self):
        self.stop_event.set()
        self.join(timeout=60)
        return self.results


def test_new_version_is_served_without_failed_requests(lifecycle):
    hammer = Hammer(lifecycle)
    hammer.start()
    wait_for(lambda: len(hammer.results) > 5, what="traffic")
    shutil.copytree(lifecycle.templates["penguins_2"], lifecycle.base / "penguins" / "2")
    wait_for(lambda: hammer.results and hammer.results[-1] == (200, 2), what="version 2 answering")
    time.sleep(0.3)
    results = hammer.finish()
    assert {code for code, _ in results} == {200}
    versions = [version for _, version in results]
    assert set(versions) == {1, 2}
    switch = versions.index(2)
    assert all(v == 2 for v in versions[switch:])  # atomic: never back to 1 once 2 answered
    wait_for(lambda: states(lifecycle, "penguins").get(1, ("",))[0] == "END", what="version 1 unloaded")
    assert states(lifecycle, "penguins")[2] == ("AVAILABLE", "OK", "")


def test_broken_version_is_reported_and_never_replaces_the_working_one(lifecycle):
    models.write_broken(lifecycle.base / "penguins" / "3")
    state = wait_for(lambda: states(lifecycle, "penguins").get(3), what="version 3 status")
    assert state[0] == "END" and state[1] != "OK" and state[2]
    assert served_version(lifecycle.post("/v1/models/penguins:predict", {"instances": [ROW]})) == 2
    response = lifecycle.post("/v1/models/penguins/versions/3:predict", {"instances": [ROW]})
    assert response.status_code == 404
    assert states(lifecycle, "penguins")[2][0] == "AVAILABLE"


def test_half_copied_directory_is_never_served(lifecycle):
    target = lifecycle.base / "penguins" / "4"
    template = lifecycle.templates["penguins_3"]
    target.mkdir()
    shutil.copy(template / "saved_model.pb", target / "saved_model.pb")  # graph there, variables not yet
    (target / "variables").mkdir()
    shutil.copy(template / "variables" / "variables.data-00000-of-00001", target / "variables")
    for _ in range(10):  # many polls' worth of requests: all answered by version 2
        assert served_version(lifecycle.post("/v1/models/penguins:predict", {"instances": [ROW]})) == 2
        time.sleep(0.1)
    assert 4 not in states(lifecycle, "penguins")
    shutil.copy(template / "variables" / "variables.index", target / "variables")  # the copy completes
    wait_for(lambda: served_version(lifecycle.post("/v1/models/penguins:predict", {"instances": [ROW]})) == 3,
             what="version 4 (baked 3) answering")
    assert states(lifecycle, "penguins")[4] == ("AVAILABLE", "OK", "")


def test_failed_load_is_retried_when_the_files_change(lifecycle):
    target = lifecycle.base / "penguins" / "5"
    shutil.copytree(lifecycle.templates["penguins_2"], target)
    data = target / "variables" / "variables.data-00000-of-00001"
    full = data.read_bytes()
    data.write_bytes(full[: len(full) // 3])  # a truncated copy that looks complete
    state = wait_for(lambda: states(lifecycle, "penguins").get(5), what="version 5 status")
    state = wait_for(lambda: states(lifecycle, "penguins")[5][0] in ("END", "AVAILABLE") and
                     states(lifecycle, "penguins")[5], what="version 5 settled")
    if state[0] == "END":  # the truncated file failed to load: old version kept
        assert state[1] != "OK"
        assert served_version(lifecycle.post("/v1/models/penguins:predict", {"instances": [ROW]})) == 3
    data.write_bytes(full)
    wait_for(lambda: states(lifecycle, "penguins").get(5, ("",))[0] == "AVAILABLE", what="version 5 loaded")
    assert served_version(lifecycle.post("/v1/models/penguins:predict", {"instances": [ROW]})) == 2


def test_warmup_failure_keeps_a_version_out_of_traffic(lifecycle):
    shutil.copytree(lifecycle.templates["bad_warmup"], lifecycle.base / "penguins" / "6")
    state = wait_for(lambda: states(lifecycle, "penguins").get(6, ("",))[0] == "END" and
                     states(lifecycle, "penguins")[6], what="version 6 failed")
    assert "Failed to warm up model penguins version 6" in state[2]
    assert served_version(lifecycle.post("/v1/models/penguins:predict", {"instances": [ROW]})) == 2


def _reload(server, entries: list[tuple[str, str, list[int], dict[str, int]]]):
    config = model_server_config_pb2.ModelServerConfig()
    for name, base, versions, labels in entries:
        item = config.model_config_list.config.add(name=name, base_path=base, model_platform="tensorflow")
        if versions:
            item.model_version_policy.specific.versions.extend(versions)
        for key, value in labels.items():
            item.version_labels[key] = value
    request = model_management_pb2.ReloadConfigRequest(config=config)
    return server.model_stub().HandleReloadConfigRequest(request, timeout=120)


def test_reload_via_grpc_with_labels(lifecycle):
    base = str(lifecycle.base / "penguins")
    response = _reload(lifecycle, [("penguins", base, [2, 4], {"stable": 2, "canary": 4})])
    assert response.status.error_code == 0
    assert served_version(lifecycle.post("/v1/models/penguins/labels/stable:predict", {"instances": [ROW]})) == 2
    assert served_version(lifecycle.post("/v1/models/penguins/labels/canary:predict", {"instances": [ROW]})) == 3
    available = {v for v, s in states(lifecycle, "penguins").items() if s[0] == "AVAILABLE"}
    assert available == {2, 4}
    # Latest = the highest available under the "specific" policy.
    assert served_version(lifecycle.post("/v1/models/penguins:predict", {"instances": [ROW]})) == 3


def test_reload_with_a_label_on_an_unavailable_version_fails_and_keeps_labels(lifecycle):
    base = str(lifecycle.base / "penguins")
    with pytest.raises(grpc.RpcError) as info:
        _reload(lifecycle, [("penguins", base, [2, 4], {"stable": 2, "canary": 9})])
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == ("Request to assign label to version 9 of model penguins, which is not "
                                    "currently available for inference")
    assert served_version(lifecycle.post("/v1/models/penguins/labels/canary:predict", {"instances": [ROW]})) == 3


def test_config_file_is_polled(lifecycle):
    models.copy_version(lifecycle.templates["half_plus_two_1"], lifecycle.base / "half_plus_two", 1)
    write_models_config(lifecycle.config, [
        f'config {{ name: "penguins" base_path: "{lifecycle.base / "penguins"}" }}',
        f'config {{ name: "half_plus_two" base_path: "{lifecycle.base / "half_plus_two"}" }}'])
    wait_for(lambda: states(lifecycle, "half_plus_two").get(1, ("",))[0] == "AVAILABLE", what="new model")
    response = lifecycle.post("/v1/models/half_plus_two:predict", {"instances": [2.0]})
    assert response.json() == {"predictions": [3.0]}


# ------------------------------------------------------------------------------------- process-level
def test_label_on_unavailable_version_aborts_start_unless_allowed(templates, tmp_path):
    base = tmp_path / "models"
    models.copy_version(templates["half_plus_two_2"], base / "half_plus_two", 2)
    config = write_models_config(tmp_path / "models.config", [
        f'config {{ name: "half_plus_two" base_path: "{base / "half_plus_two"}" '
        'version_labels { key: "stable" value: 1 } }'])
    strict = ServerProcess(tmp_path, ["--model_config_file", str(config)]).start()
    try:
        assert strict.proc.wait(timeout=180) == 1
        assert "Request to assign label to version 1 of model half_plus_two" in strict.log_tail()
    finally:
        strict.stop()
    lenient = ServerProcess(tmp_path, ["--model_config_file", str(config),
                                       "--allow_version_labels_for_unavailable_models"]).start()
    try:
        lenient.wait_ready("half_plus_two")
        response = lenient.post("/v1/models/half_plus_two/labels/stable:predict", {"instances": [1.0]})
        assert response.status_code == 404
        assert response.json() == {"error": "Servable not found for request: Specific(half_plus_two, 1)"}
    finally:
        lenient.stop()


def test_no_arguments_serves_the_serving_base_and_stops_cleanly_on_sigterm(templates, tmp_path):
    serving = tmp_path / "home" / "serving"
    models.copy_version(templates["slow_1"], serving / "slow", 1)
    server = ServerProcess(tmp_path, ["--file_system_poll_wait_seconds", "0.2"],
                           env={"PIPELINE_SERVING_BASE": ""})
    server.start()
    try:
        server.wait_ready("slow")
        models.copy_version(templates["half_plus_two_1"], serving / "half_plus_two", 1)  # discovered later
        server.wait_ready("half_plus_two")
        stub = server.prediction_stub()

        def slow_request(rounds: float):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "slow"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([rounds], tf.float32))
            return stub.Predict(request, timeout=120)

        assert list(slow_request(1).outputs["y"].float_val) == [1.0]  # connected and warm
        result = {}
        caller = threading.Thread(target=lambda: result.setdefault("response", slow_request(20000)))
        caller.start()
        time.sleep(0.5)
        assert server.stop(signal.SIGTERM, timeout=120) == 0
        caller.join(timeout=120)
        assert list(result["response"].outputs["y"].float_val) == [20000.0]  # the in-flight request finished
        assert "stopped" in server.log_tail()
    finally:
        server.stop(signal.SIGKILL)
