"""Fixtures of the production tests: the topology of scripts/topology.py (real Postgres, Redis, Airflow with
the CeleryExecutor and two workers, MLflow with basic auth, ``pipeline serve``), started once for the tests
that need it and stopped, process group by process group, whatever they do.

The topology takes minutes and needs PostgreSQL, Redis and the production extras
(docker/requirements-prod.txt): its tests run under ``make test-production``, which installs them and sets
PIPELINE_TEST_PRODUCTION=1; elsewhere they are skipped. The compose-file and ``pipeline trigger`` tests need
none of it and always run.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))  # topology, under any --import-mode
sys.path.insert(0, str(Path(__file__).resolve().parent))  # fake_airflow, clients
import topology  # noqa: E402

RUN_TOPOLOGY = os.environ.get("PIPELINE_TEST_PRODUCTION") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "production: runs on the production topology (make test-production)")


@pytest.fixture(scope="session")
def topo(tmp_path_factory):
    """The running topology under a throw-away directory; stopped at the end of the session, after which none
    of the processes it started (nor their descendants) may be left."""
    if not RUN_TOPOLOGY:
        pytest.skip("the production topology runs under `make test-production` (PIPELINE_TEST_PRODUCTION=1)")
    import psutil

    root = tmp_path_factory.mktemp("topology")
    started = topology.Topology(root)
    try:
        started.start()
    except topology.TopologyError as exc:
        pytest.fail(f"the topology did not start: {exc}", pytrace=False)
    processes = []
    for component in started.components:
        try:
            leader = psutil.Process(component.pid)
            processes += [leader, *leader.children(recursive=True)]
        except psutil.Error:
            pass
    try:
        yield started
    finally:
        started.stop()
        left = topology.still_running(processes, timeout_s=10)
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        assert not left, f"processes left running after stop(): {[p.pid for p in left]}"


@pytest.fixture(scope="module")
def airflow(topo):
    """GET on Airflow's REST API (``/api/v2`` + path) with a token of its own (``POST /auth/token``)."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {topo.airflow_token()}"
    return lambda path, **kw: session.get(f"{topo.airflow_url}/api/v2{path}", timeout=30, **kw)


@pytest.fixture(scope="module")
def mlflow(topo):
    """MLflow REST API calls with the admin's basic-auth credentials; anything but 200 fails the test."""
    import requests

    def call(method: str, path: str, **kw):
        response = requests.request(method, f"{topo.mlflow_url}/api/2.0/mlflow{path}", auth=topo.mlflow_admin,
                                    timeout=30, **kw)
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return response.json()
    return call

