"""The ``served_model`` Asset of ``training_pipeline``: emitted by the deploy task when it published a version,
never by register, and not when the gate refused the candidate (the task body run with a stand-in deploy)."""
from __future__ import annotations

import json
import subprocess
import sys

from pipeline import airflow_env

CODE = """
import json
from airflow.dag_processing.dagbag import DagBag

bag = DagBag()
dag = bag.dags['training_pipeline']
outlets = {t.task_id: [f"{type(a).__name__}:{a.name}" for a in t.outlets] for t in dag.tasks}
body = dag.get_task('deploy').python_callable
emitted = []

class Events:
    def __getitem__(self, alias):
        class Accessor:
            def add(self, asset, extra=None):
                emitted.append([alias.name, asset.name, extra])
        return Accessor()

import pipeline.tasks
body.__globals__['_ctx'] = lambda: ({}, None)
body.__globals__['get_current_context'] = lambda: {'outlet_events': Events()}
results = []
for deployed in (True, False):
    result = {'model_name': 'penguins', 'version': 3, 'deployed': deployed, 'label': 'stable',
              'published': '/srv/penguins/3', 'parent_run_id': 'r'}
    pipeline.tasks.deploy_task = lambda params, ctx, exported, registered, result=result: result
    results.append(body({}, {}))
print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()}, 'outlets': outlets,
                  'emitted': emitted, 'returned': [r['deployed'] for r in results]}))
"""


def test_served_model_is_emitted_when_a_version_is_published(pipeline_home):
    out = subprocess.run([sys.executable, "-c", CODE], env=airflow_env.airflow_environ(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert result["outlets"]["register"] == [], "registering publishes nothing"
    assert result["outlets"]["deploy"] == ["AssetAlias:served_model_published"]
    assert [o for task, o in result["outlets"].items() if task != "deploy"] == [[]] * (len(result["outlets"]) - 1)
    assert result["emitted"] == [["served_model_published", "served_model", {
        "model_name": "penguins", "version": 3, "label": "stable", "published": "/srv/penguins/3"}]], \
        "one event, for the published version only"
    assert result["returned"] == [True, False]
