"""DAG integrity: the dags folder parses without errors, has the expected tasks and edges, and imports
nothing heavy. Each check runs in a fresh interpreter with the embedded Airflow environment."""
from __future__ import annotations

import json
import subprocess
import sys

from pipeline import airflow_env

TRAINING_EDGES = {
    ("ingest", "validate"), ("ingest", "split"), ("validate", "split"), ("split", "preprocess"),
    ("validate", "preprocess"), ("split", "train"), ("preprocess", "train"), ("split", "evaluate"),
    ("preprocess", "evaluate"), ("train", "evaluate"), ("evaluate", "export"), ("train", "export"),
    ("preprocess", "export"), ("split", "export"), ("validate", "export"), ("ingest", "export"),
    ("export", "register"), ("evaluate", "register"), ("ingest", "register"),
    ("export", "deploy"), ("register", "deploy"),
}


def _run(code: str, pipeline_home) -> dict:
    env = airflow_env.airflow_environ()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_dagbag_has_no_import_errors_and_expected_graph(pipeline_home):
    result = _run(
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag()\n"
        "dag = bag.dags.get('training_pipeline')\n"
        "edges = sorted([u, d] for t in dag.tasks for u, d in [(t.task_id, x) for x in t.downstream_task_ids]) if dag else []\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()}, 'dags': sorted(bag.dag_ids),"
        " 'tasks': sorted(t.task_id for t in dag.tasks) if dag else [], 'edges': edges,"
        " 'retries': {t.task_id: t.retries for t in dag.tasks} if dag else {}, 'params': sorted(dag.params) if dag else []}))",
        pipeline_home)
    assert result["errors"] == {}
    assert "training_pipeline" in result["dags"]
    assert result["tasks"] == sorted(["ingest", "validate", "split", "preprocess", "train", "evaluate", "export", "register",
                                       "deploy"])
    assert {tuple(e) for e in result["edges"]} == TRAINING_EDGES
    assert result["retries"]["train"] == 2
    assert {"config", "source", "label", "model_name", "epochs"} <= set(result["params"])


def test_importing_dags_imports_nothing_heavy(pipeline_home):
    result = _run(
        "import json, sys, runpy, glob\n"
        "for f in sorted(glob.glob('dags/*.py')): runpy.run_path(f)\n"
        "print(json.dumps(sorted(m for m in ('tensorflow', 'keras', 'pandas', 'mlflow', 'numpy', 'sklearn') if m in sys.modules)))",
        pipeline_home)
    assert result == []


def test_tuning_dag_unrolls_rounds_of_mapped_trials_then_the_training_tasks(pipeline_home):
    from pipeline.tuning import MAX_PARALLEL_TRIALS, MAX_ROUNDS

    result = _run(
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag()\n"
        "dag = bag.dags['tuning_pipeline']\n"
        "t = {x.task_id: x for x in dag.tasks}\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()}, 'tasks': sorted(t),"
        " 'mapped': sorted(k for k, x in t.items() if 'MappedOperator' in type(x).__name__),"
        " 'rules': {k: getattr(x.trigger_rule, 'value', x.trigger_rule) for k, x in t.items()},"
        " 'up': {k: sorted(x.upstream_task_ids) for k, x in t.items()},"
        " 'parallel': t['round_0.trial'].max_active_tis_per_dagrun,"
        " 'params': sorted(dag.params)}))",
        pipeline_home)
    assert result["errors"] == {}
    rounds = [f"round_{k}.{step}" for k in range(MAX_ROUNDS) for step in ("suggest", "trial", "tell")]
    assert set(result["tasks"]) == {"ingest", "validate", "split", "preprocess", "best", "train", "evaluate", "export",
                                    "register", "deploy", *rounds}
    assert result["mapped"] == sorted(f"round_{k}.trial" for k in range(MAX_ROUNDS))
    assert result["parallel"] == MAX_PARALLEL_TRIALS
    assert "round_0.tell" in result["up"]["round_1.suggest"] and "round_1.trial" in result["up"]["round_1.tell"]
    assert result["rules"]["round_0.tell"] == "all_done_min_one_success"
    assert result["rules"]["best"] == "none_failed_min_one_success"
    assert {f"round_{k}.tell" for k in range(MAX_ROUNDS)} <= set(result["up"]["best"])
    assert "best" in result["up"]["train"] and {"config", "source", "label", "epochs"} <= set(result["params"])
