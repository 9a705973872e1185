"""How the production tests talk to the model server as its users do: what they send to it and how they wait
for it to follow models.config."""
from __future__ import annotations

import time

import requests

PENGUIN = {"island": "Biscoe", "bill_length_mm": 48.6, "bill_depth_mm": 16.0, "flipper_length_mm": 230.0,
           "body_mass_g": 5800.0, "sex": "male"}
# The model server re-reads models.config every 5 s (as tensorflow/serving is configured to, with
# --model_config_file_poll_wait_seconds): a label moves within that, after the new version has loaded.
FOLLOW_TIMEOUT_S = 120.0


def predict_by_label(topo, label: str, timeout_s: float = FOLLOW_TIMEOUT_S) -> dict:
    """A prediction through the model server by version label, retried until the server serves the label."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = requests.post(f"{topo.serving_url}/v1/models/penguins/labels/{label}:predict",
                                 json={"instances": [PENGUIN]}, timeout=30)
        if response.status_code == 200:
            return response.json()
        topo.check()
        assert time.monotonic() < deadline, f"{response.status_code} {response.text}; {topo.logs}/serving.log"
        time.sleep(1)


def label_version(topo, label: str) -> int | None:
    """The version the server answers for ``label`` (its metadata's model_spec), None while it has none."""
    response = requests.get(f"{topo.serving_url}/v1/models/penguins/labels/{label}/metadata", timeout=30)
    if response.status_code != 200:
        return None
    return int(response.json()["model_spec"]["version"])


def wait_label(topo, label: str, version: int, timeout_s: float = FOLLOW_TIMEOUT_S) -> None:
    """Until the server answers ``version`` for ``label``."""
    deadline = time.monotonic() + timeout_s
    while (seen := label_version(topo, label)) != version:
        topo.check()
        assert time.monotonic() < deadline, (f"label {label} still on version {seen}, not {version}, "
                                             f"{timeout_s:.0f} s on; {topo.logs}/serving.log")
        time.sleep(0.5)

