"""pipeline.airflow_env: the embedded defaults, and the in-process execution API of `pipeline train`."""
from __future__ import annotations

import json
import subprocess
import sys

from pipeline import airflow_env, paths

# Prints the routes (path, methods, response model) the in-process execution API serves for the client's
# version, and the status of a request to it; in a subprocess, since the change applies to a whole process.
ROUTES = """
import json, re, sys
from pipeline import airflow_env
airflow_env.apply()
applied = airflow_env.in_process_api_newest_version_only() if sys.argv[1] == "newest" else None
import httpx
from airflow.api_fastapi.execution_api.app import InProcessExecutionAPI
from airflow.sdk.api.datamodels._generated import API_VERSION
api = InProcessExecutionAPI()
with httpx.Client(transport=api.transport, base_url="http://in-process.invalid") as client:
    status = client.get("/health", headers={"airflow-api-version": API_VERSION}).status_code
routes = sorted([r.path, sorted(r.methods), re.sub(r" at 0x[0-9a-f]+", "", repr(getattr(r, "response_model", None)))]
                for r in api.app.router.versioned_routers[API_VERSION].routes if hasattr(r, "methods"))
print(json.dumps({"applied": applied, "status": status, "versions": len(api.app.router.versioned_routers),
                  "routes": routes}))
"""


def _routes(mode: str, home) -> dict:
    env = airflow_env.airflow_environ({"PATH": "/usr/bin:/bin", "PIPELINE_HOME": str(home)})
    out = subprocess.run([sys.executable, "-c", ROUTES, mode], env=env, capture_output=True, text=True, timeout=300,
                         cwd=paths.REPO_ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_newest_version_only_serves_the_same_routes_for_the_client(tmp_path):
    full, newest = _routes("all", tmp_path), _routes("newest", tmp_path)
    assert newest["applied"] is True and full["status"] == newest["status"] == 200
    assert full["versions"] > 1 and newest["versions"] == 1
    # What the in-process client can call, and what it gets back, is unchanged; only older versions' copies go.
    old_only = {(path, tuple(methods)) for path, methods, _ in full["routes"]} - {
        (path, tuple(methods)) for path, methods, _ in newest["routes"]}
    assert newest["routes"] == [r for r in full["routes"] if (r[0], tuple(r[1])) not in old_only]
    assert all(path.endswith("/previous") for path, _ in old_only), old_only


def test_airflow_environ_fills_only_what_is_unset(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    env = airflow_env.airflow_environ({"PATH": "/usr/bin", "AIRFLOW__CORE__PARALLELISM": "8"})
    assert env["AIRFLOW__CORE__PARALLELISM"] == "8" and env["AIRFLOW_HOME"] == str(tmp_path / "airflow")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path / 'airflow' / 'airflow.db'}"
    assert env["PATH"].split(":")[0] == str(__import__("pathlib").Path(sys.executable).parent)
