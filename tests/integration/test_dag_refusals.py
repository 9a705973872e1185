"""A refusal a retry cannot change fails the task at once: every task of training_pipeline turns a ConfigError
(and its stage's own refusal) into AirflowFailException. Runs the task callables in a fresh interpreter with
the stage functions replaced, so no data, MLflow or model is involved."""
from __future__ import annotations

import json
import subprocess
import sys

from pipeline import airflow_env

CODE = r'''
import json
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import AirflowFailException

import pipeline.tasks as T
from pipeline.config import ConfigError

dag = DagBag().dags["training_pipeline"]
out = {}
for task in dag.tasks:
    fn = task.python_callable
    fn.__globals__["_ctx"] = lambda: ({}, None)
    fn.__globals__["get_current_context"] = lambda: {"triggering_asset_events": {}}

    def refuse(*args, **kwargs):
        raise ConfigError("training.epochs: must be >= 1, got 0")

    setattr(T, f"{task.task_id}_task", refuse)
    n_args = fn.__code__.co_argcount
    try:
        fn(*([{}] * n_args))
        out[task.task_id] = "returned"
    except AirflowFailException as exc:
        out[task.task_id] = "fail: " + str(exc)
    except Exception as exc:
        out[task.task_id] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
'''


def test_config_errors_fail_every_task_without_retry(pipeline_home):
    env = airflow_env.airflow_environ()
    run = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(outcome) == {"ingest", "validate", "split", "preprocess", "train", "evaluate", "export", "register",
                            "deploy"}
    assert outcome == {t: "fail: training.epochs: must be >= 1, got 0" for t in outcome}
