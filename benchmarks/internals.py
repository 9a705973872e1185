"""What each private API in ``pipeline/internals.py`` saves, against the public path it falls back to.

    .venv/bin/python benchmarks/internals.py [--repeats 3] [--write-docs]

Every measurement runs in a fresh interpreter (the savings are start-up costs, paid once per command), the
private and the public path alternately, and reports the median of ``--repeats``:

- the in-process task execution API of ``pipeline train`` (``dag.test``): its construction and first request with
  the newest API version only (private: Cadwyn's bundle) against every supported version (public);
- loading the DAG to run: importing its file as a module (public, what ``pipeline train`` does) against Airflow's
  ``get_bagged_dag`` (what ``airflow dags test`` does; the parse of the whole bundle that ``dag.test`` repeats);
- logging the exported model to MLflow: MLflow's own input-example check kept (private validator; no longer
  used, the saving was too small) against loading the logged model back and predicting (public, used);
- ending a command that has imported TensorFlow, Airflow and MLflow: the atexit handlers then ``os._exit``
  (private ``atexit._run_exitfuncs``) against ``sys.exit`` (interpreter teardown).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXECUTION_API = """
import sys, time
from pipeline import airflow_env, internals
env = airflow_env.apply(); airflow_env.ensure_db(env)
import httpx
from airflow.api_fastapi.execution_api.app import InProcessExecutionAPI
from airflow.sdk.api.datamodels._generated import API_VERSION
start = time.perf_counter()
if sys.argv[1] == "private":
    assert internals.newest_execution_api_only()
api = InProcessExecutionAPI()
with httpx.Client(transport=api.transport, base_url="http://in-process.invalid") as client:
    assert client.get("/health", headers={"airflow-api-version": API_VERSION}).status_code == 200
print(time.perf_counter() - start)
"""

LOAD_DAG = """
import sys, time
from pipeline import airflow_env
env = airflow_env.apply(); airflow_env.ensure_db(env)
import airflow.sdk
start = time.perf_counter()
if sys.argv[1] == "public":
    from pipeline.commands.train import load_dag
    dag = load_dag("training_pipeline")
else:
    from airflow.utils.cli import get_bagged_dag
    dag = get_bagged_dag(None, "training_pipeline")
assert dag.dag_id == "training_pipeline"
print(time.perf_counter() - start)
"""

LOG_MODEL = """
import sys, time
sys.path.insert(0, "tests/serving")
import json
from pathlib import Path
import mlflow, pandas as pd, numpy as np
import serving_models
from pipeline import tracking
from pipeline.pyfunc import log_pyfunc
path = serving_models.write_penguins(Path(sys.argv[2]) / "model", 1)
(path / "assets.extra").mkdir()
(path / "assets.extra" / "pipeline_metadata.json").write_text(json.dumps({
    "task": "classification", "label": "species", "class_names": serving_models.CLASS_NAMES,
    "features": {"numeric": ["bill_length_mm"], "categorical": ["island"]}}))
if sys.argv[1] == "private":  # what pipeline.pyfunc did before: MLflow's answer kept through its private validator
    import mlflow.models.utils as model_utils
    validate = model_utils._validate_serving_input
    answers = []
    model_utils._validate_serving_input = lambda model_uri, serving_input: answers.append(validate(model_uri, serving_input)) or answers[-1]
    load = mlflow.pyfunc.load_model  # MLflow's validator loads the model itself; the second load is what is saved
    kept = type("Kept", (), {"predict": lambda self, example: answers[-1]})
    mlflow.pyfunc.load_model = lambda uri, *a, **k: kept() if answers else load(uri, *a, **k)
example = pd.DataFrame({"bill_length_mm": [39.1, 50.0], "island": ["Biscoe", "Dream"]})
tracking.configure()
with mlflow.start_run(experiment_id=tracking.experiment_id("bench")):
    start = time.perf_counter()
    log_pyfunc(path, example)
    print(time.perf_counter() - start)
"""

EXIT = """
import sys
import tensorflow, mlflow, airflow.sdk
from pipeline import airflow_env
airflow_env.apply()
import pipeline.commands.train, pipeline.tasks, pipeline.deploy
print("ready", flush=True)
if sys.argv[1] == "private":
    from pipeline.internals import exit_without_teardown
    exit_without_teardown(0)
sys.exit(0)
"""


def _seconds(code: str, mode: str, home: Path) -> float:
    env = {**os.environ, "PIPELINE_HOME": str(home), "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", code, mode, str(home)], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return float(out.stdout.strip().splitlines()[-1])


def _exit_seconds(mode: str, home: Path) -> float:
    """From the child's "ready" line to its end, as the user waits for the prompt."""
    env = {**os.environ, "PIPELINE_HOME": str(home), "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-c", EXIT, mode], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "ready"
    start = time.perf_counter()
    proc.wait(timeout=600)
    return time.perf_counter() - start


CASES = [
    ("in-process execution API, construction + first request", "Cadwyn: newest API version only",
     "every supported version", lambda mode, home: _seconds(EXECUTION_API, mode, home)),
    ("loading the DAG to run", "(none needed)", "Airflow's get_bagged_dag",
     lambda mode, home: _seconds(LOAD_DAG, "public" if mode == "private" else "bagged", home)),
    ("logging the exported model to MLflow", "MLflow's input-example check kept", "model loaded back and predicted",
     lambda mode, home: _seconds(LOG_MODEL, mode, home)),
    ("ending a command after TensorFlow, Airflow and MLflow", "atexit handlers + os._exit", "sys.exit (teardown)",
     _exit_seconds),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    rows, load_before = [], os.getloadavg()
    for title, private, public, measure in CASES:
        times = {"private": [], "public": []}
        for _ in range(args.repeats):
            for mode in ("private", "public"):
                with tempfile.TemporaryDirectory() as home:
                    times[mode].append(measure(mode, Path(home)))
        priv, pub = statistics.median(times["private"]), statistics.median(times["public"])
        rows.append((title, private, public, priv, pub))
        print(json.dumps({"case": title, "private_s": times["private"], "public_s": times["public"]}), flush=True)
    lines = ["## Private APIs (`benchmarks/internals.py`)", "",
             f"Command: `.venv/bin/python benchmarks/internals.py --repeats {args.repeats} --write-docs` (machine: "
             f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}); fresh interpreters, "
             "median of the repeats. Each private API sits in `pipeline/internals.py` with a public fallback and "
             "a test that fails when it changes (`tests/unit/test_internals.py`). Load average (1 min) "
             f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after: other jobs share the cores, so read the "
             "ratios.", "",
             "| what | with the private API | public path | private (s) | public (s) | saved (s) |",
             "|---|---|---|---:|---:|---:|"]
    for title, private, public, priv, pub in rows:
        lines.append(f"| {title} | {private} | {public} | {priv:.2f} | {pub:.2f} | {pub - priv:+.2f} |")
    lines += ["", "Kept: the first and the last (seconds of every `pipeline train`). Dropped: MLflow's private "
                  "validator (a fraction of a second: `pipeline.pyfunc` loads the logged model back instead). "
                  "The DAG is loaded through the public path (its file imported, then `DAG.test`), which is also "
                  "the fastest: the private parse of the dags folder that `pipeline train` used before "
                  "(`_airflow_parsing_context_manager` + `BundleDagBag`) is gone. The summary of a run reads task "
                  "states and return values from `airflow.sdk`'s task listener and `RuntimeTaskInstance.xcom_pull` "
                  "instead of SQL on the XCom and TaskInstance tables."]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from pipeline_e2e import write_section

        write_section(ROOT / "docs" / "benchmarks.md", "internals-benchmark", text)


if __name__ == "__main__":
    main()
