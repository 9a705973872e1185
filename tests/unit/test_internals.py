"""pipeline.internals: each private API it uses is still there and still does what the saving relies on (these
tests fail loudly on an upgrade that changes one), and each falls back to the public path when it is not."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from pipeline import airflow_env, internals, paths

# Prints the routes (path, methods, response model) the in-process execution API serves for the client's
# version, and the status of a request to it; in a subprocess, since the change applies to a whole process.
ROUTES = """
import json, re, sys
from pipeline import airflow_env, internals
airflow_env.apply()
applied = internals.newest_execution_api_only() if sys.argv[1] == "newest" else None
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


def _python(code: str, *args: str, home=None) -> subprocess.CompletedProcess:
    env = airflow_env.airflow_environ({"PATH": "/usr/bin:/bin", "PIPELINE_HOME": str(home or "/nonexistent")})
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=paths.REPO_ROOT)


def _routes(mode: str, home) -> dict:
    out = _python(ROUTES, mode, home=home)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_newest_execution_api_only_applies_and_serves_the_same_routes_for_the_client(tmp_path):
    full, newest = _routes("all", tmp_path), _routes("newest", tmp_path)
    assert newest["applied"] is True, "Airflow's execution API versioning changed: see pipeline/internals.py"
    assert full["status"] == newest["status"] == 200
    assert full["versions"] > 1 and newest["versions"] == 1
    # What the in-process client can call, and what it gets back, is unchanged; only older versions' copies go.
    old_only = {(path, tuple(methods)) for path, methods, _ in full["routes"]} - {
        (path, tuple(methods)) for path, methods, _ in newest["routes"]}
    assert newest["routes"] == [r for r in full["routes"] if (r[0], tuple(r[1])) not in old_only]
    assert all(path.endswith("/previous") for path, _ in old_only), old_only


def test_newest_execution_api_only_falls_back_when_cadwyn_changes(monkeypatch):
    monkeypatch.setitem(sys.modules, "cadwyn.route_generation", None)  # the private module is gone
    assert internals.newest_execution_api_only() is False


EXIT = textwrap.dedent("""
    import atexit, sys
    from pipeline import internals
    atexit.register(lambda: print("atexit ran", flush=True))
    if sys.argv[1] == "fallback":
        del atexit._run_exitfuncs
    print("before", flush=True)
    internals.exit_without_teardown(7)
    print("not reached")
""")


@pytest.mark.parametrize("mode", ["private", "fallback"])
def test_exit_without_teardown_runs_the_atexit_handlers_and_keeps_the_status(mode):
    if mode == "private":
        import atexit

        assert callable(getattr(atexit, "_run_exitfuncs", None)), "see pipeline/internals.py"
    out = _python(EXIT, mode)
    assert out.returncode == 7, out.stderr
    assert out.stdout.split() == ["before", "atexit", "ran"]


def test_optuna_trial_reaches_a_trial_asked_by_another_study_object(tmp_path):
    optuna = pytest.importorskip("optuna")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    asking = optuna.create_study(storage=storage, study_name="s")
    number = asking.ask().number
    other = optuna.load_study(study_name="s", storage=storage)  # as a trial task in another process opens it
    trial = internals.optuna_trial(other, number)
    trial.report(0.5, step=1)
    assert optuna.load_study(study_name="s", storage=storage).trials[number].intermediate_values == {1: 0.5}
