"""pipeline.tracking: the store it points at, and what the MLflow UI compares models and DAG runs by."""
from __future__ import annotations

import json
import os

import pytest

from pipeline import paths, tracking


def test_configure_follows_pipeline_home_and_leaves_the_environment_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "a"))
    first = tracking.configure()
    assert "MLFLOW_TRACKING_URI" not in os.environ  # mlflow.set_tracking_uri would have left it set
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "b"))
    second = tracking.configure()
    assert first != second and second == f"sqlite:///{tmp_path / 'b' / 'mlflow' / 'mlflow.db'}"
    assert tracking.client().tracking_uri == second


def test_an_explicit_tracking_uri_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.configure() == "http://127.0.0.1:5999" == paths.mlflow_tracking_uri()
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5999"


# ------------------------------------------------------------------------------ comparing models in the UI
@pytest.mark.parametrize("model_name, version, expected", [
    ("penguins", 3, "penguins-v3"),
    ("my.model", 1, "my_model-v1"),   # MLflow refuses "." in a logged model's name; a served model may have it
    ("churn", None, "churn"),
])
def test_the_logged_model_is_named_after_the_served_model_and_its_version(model_name, version, expected):
    assert tracking.logged_model_name(model_name, version) == expected


@pytest.fixture
def stage_runs(pipeline_home):
    """A DAG run's MLflow run with a finished evaluate stage that logged the test split as its dataset."""
    import mlflow
    import pandas as pd

    parent = tracking.parent_run("cmp", "training_pipeline", "manual__1")
    test = pd.DataFrame({"x": [0.1, 0.2, 2.1, 2.2], "label": ["a", "a", "b", "b"]})
    dataset = tracking.test_dataset(test, "/data/test.parquet", "cmp", "label")
    with tracking.stage_run(parent, "evaluate") as run:
        mlflow.log_input(dataset, context=tracking.TEST_CONTEXT)
        mlflow.log_metrics({"accuracy": 1.0}, dataset=dataset)
    return parent, run.info.run_id, dataset


def test_metrics_logged_with_the_model_id_are_the_logged_models_on_the_test_dataset(stage_runs):
    import mlflow

    parent, evaluate, dataset = stage_runs
    c = tracking.client()
    exp = c.get_run(parent).info.experiment_id
    assert tracking.stage_run_id(parent, "evaluate") == evaluate and tracking.stage_run_id(parent, "export") is None
    assert tracking.stage_seconds(parent, "evaluate") >= 0
    found = tracking.run_dataset(evaluate)
    assert (found.name, found.digest) == ("cmp-test", dataset.digest)

    model = c.create_logged_model(exp, name=tracking.logged_model_name("cmp", 1), source_run_id=evaluate)
    tracking.log_model_metrics(model.model_id, evaluate, found, {"accuracy": 0.9, "f1_macro": 0.8}, {"accuracy": 0.7})

    [logged] = mlflow.search_logged_models(experiment_ids=[exp], output_format="list")
    assert logged.name == "cmp-v1"
    by_key = {m.key: m for m in logged.metrics}
    assert {k: m.value for k, m in by_key.items()} == {"accuracy": 0.9, "f1_macro": 0.8, "champion_accuracy": 0.7}
    assert {(m.dataset_name, m.dataset_digest, m.run_id) for m in by_key.values()} == {("cmp-test", dataset.digest,
                                                                                        evaluate)}
    # The evaluate run now names the model it scored; its dataset is not logged twice.
    run = c.get_run(evaluate)
    assert [m.model_id for m in run.inputs.model_inputs] == [model.model_id]
    assert len(run.inputs.dataset_inputs) == 1


def test_the_dag_runs_run_carries_the_headline_and_the_saved_view_shows_it(stage_runs):
    parent, _, _ = stage_runs
    c = tracking.client()
    tracking.log_run_summary(parent, metrics={"test_accuracy": 0.9, "champion_accuracy": None, "rows": 344},
                             tags={"gate.decision": "blessed", "blessed": "true"})
    run = c.get_run(parent)
    assert run.data.metrics == {"test_accuracy": 0.9, "rows": 344.0}, "a missing champion is no metric"
    assert run.data.tags["gate.decision"] == "blessed"

    exp = run.info.experiment_id
    assert "viewStateShareKey" not in tracking.ui_url("http://127.0.0.1:5000", "cmp")
    key = tracking.save_runs_view(exp, ["test_accuracy", "rows"])
    envelope = json.loads(c.get_experiment(exp).tags[tracking.SAVED_VIEW_PREFIX + key])
    assert envelope["name"] and isinstance(envelope["createdAt"], int)
    assert json.loads(envelope["state"])["selectedColumns"] == [
        "attributes.`Dataset`", "attributes.`Models`", "metrics.`test_accuracy`", "metrics.`rows`",
        *(f"tags.`{t}`" for t in tracking.GATE_TAGS)]
    tracking.save_runs_view(exp, ["test_accuracy", "rows"])  # the same columns: left as it was
    assert json.loads(c.get_experiment(exp).tags[tracking.SAVED_VIEW_PREFIX + key]) == envelope
    assert tracking.ui_url("http://127.0.0.1:5000", "cmp") == (
        f"http://127.0.0.1:5000/#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey={key}")
