"""End to end: the real training_pipeline DAG run through Airflow (`pipeline train`) on penguins, with a real
MLflow store, then the bad-input cases against the champion it produced."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.e2e

STAGES = {"ingest", "validate", "split", "preprocess", "train", "evaluate", "export", "register", "deploy"}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e") / "pipeline_home"


@pytest.fixture(scope="module")
def first_run(home, run_train):
    result = run_train(home, "--epochs", "60")
    assert result.returncode == 0, result.stdout[-5000:]
    return result


@pytest.fixture
def mlflow_client(home, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from pipeline.tracking import client

    return client()


def _parent_and_children(client, run_id):
    exp = client.get_experiment_by_name("penguins")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`airflow.run_id` = '{run_id}'")
    parents = [r for r in runs if r.data.tags.get("pipeline.kind") == "dag_run"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == (parents[0].info.run_id if parents else None)]
    return exp, parents, children


def _line(out: str, prefix: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(prefix + ":")).split(":", 1)[1].strip()


def test_first_run_trains_registers_and_publishes(first_run, home, mlflow_client):
    out = first_run.stdout
    assert _line(out, "Registered model") == "penguins version 1"
    assert _line(out, "Blessed").startswith("yes")
    run_id = _line(out, "DAG run").split(" ")[0]

    exp, parents, children = _parent_and_children(mlflow_client, run_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert len(parents) == 1, "exactly one parent run per DAG run"
    parent = parents[0]
    assert parent.info.run_id == _line(out, "MLflow run")
    assert parent.data.tags["airflow.dag_id"] == "training_pipeline" and parent.info.status == "FINISHED"
    assert parent.data.tags["mlflow.source.git.commit"]
    assert sorted(c.data.tags["pipeline.stage"] for c in children) == sorted(STAGES), "one child run per stage"
    assert all(c.info.status == "FINISHED" for c in children)
    by_stage = {c.data.tags["pipeline.stage"]: c for c in children}
    assert by_stage["evaluate"].data.metrics["accuracy"] >= 0.90
    assert "val_loss" in by_stage["train"].data.metrics
    artifacts = {a.path for a in mlflow_client.list_artifacts(by_stage["evaluate"].info.run_id)}
    assert "confusion_matrix.png" in artifacts

    mv = mlflow_client.get_model_version_by_alias("penguins", "champion")
    assert str(mv.version) == "1" and mv.tags["airflow.run_id"] == run_id and len(mv.tags["dataset_digest"]) == 64


def test_exported_savedmodel_answers_raw_rows_like_the_trained_model(first_run, home):
    import tensorflow as tf

    from pipeline.export import predict_keras
    from pipeline.preprocess import PreprocessMeta, feature_arrays, label_array
    from pipeline.train import load_model

    version_dir = home / "serving" / "penguins" / "1"
    assert (version_dir / "saved_model.pb").exists() and (version_dir / "variables").is_dir()
    meta_file = json.loads((version_dir / "assets.extra" / "pipeline_metadata.json").read_text())
    assert meta_file["version"] == 1 and meta_file["class_names"] == ["Adelie", "Chinstrap", "Gentoo"]
    run_dir = Path(meta_file["test_split"]).parents[1]
    test = pd.read_parquet(meta_file["test_split"])
    meta = PreprocessMeta.load(run_dir / "preprocess" / "meta.json")
    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    served = fn(**{k: tf.constant(v) for k, v in feature_arrays(test, meta.feature_spec).items()})
    in_memory = predict_keras(load_model(run_dir / "train" / "model.keras", meta), test, meta)
    np.testing.assert_allclose(served["probabilities"].numpy(), in_memory, atol=1e-5)
    accuracy = (served["probabilities"].numpy().argmax(axis=1) == label_array(test, meta)).mean()
    assert accuracy >= 0.90


def test_tracking_has_every_epoch_a_loadable_model_and_the_deploy_report(first_run, home, mlflow_client):
    import mlflow
    import tensorflow as tf

    from pipeline.features import FeatureSpec
    from pipeline.preprocess import feature_arrays

    run_id = _line(first_run.stdout, "DAG run").split(" ")[0]
    _, _, children = _parent_and_children(mlflow_client, run_id)
    by_stage = {c.data.tags["pipeline.stage"]: c for c in children}
    train = by_stage["train"]
    history = mlflow_client.get_metric_history(train.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == list(range(int(train.data.metrics["epochs_run"]))), "one point per epoch"

    # The registered model is an MLflow pyfunc that answers raw rows like the SavedModel being served.
    version_dir = home / "serving" / "penguins" / "1"
    meta = json.loads((version_dir / "assets.extra" / "pipeline_metadata.json").read_text())
    spec = FeatureSpec(tuple(meta["features"]["numeric"]), tuple(meta["features"]["categorical"]), meta["label"],
                       meta["task"])
    rows = pd.read_parquet(meta["test_split"]).head(20)
    pyfunc = mlflow.pyfunc.load_model("models:/penguins@champion")
    assert pyfunc.metadata.signature is not None and pyfunc.metadata.saved_input_example_info is not None
    answer = pyfunc.predict(pd.DataFrame(feature_arrays(rows, spec)))
    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    served = fn(**{k: tf.constant(v) for k, v in feature_arrays(rows, spec).items()})["probabilities"].numpy()
    np.testing.assert_allclose(answer[meta["class_names"]].to_numpy(), served, atol=1e-6)

    # pipeline train validated the candidate in the sandbox it had started ahead, over REST and gRPC.
    report = json.loads(Path(mlflow_client.download_artifacts(by_stage["deploy"].info.run_id, "deploy_report.json")).read_text())
    assert report["server"] == "sandbox (started ahead)"
    assert report["rest_max_abs_diff"] <= 1e-5 and report["grpc_max_abs_diff"] <= 1e-5


def test_second_run_registers_a_new_version_compared_with_the_champion(first_run, home, mlflow_client, run_train):
    result = run_train(home, "--epochs", "60")
    assert result.returncode == 0, result.stdout[-5000:]
    assert _line(result.stdout, "Registered model") == "penguins version 2"
    run_id = _line(result.stdout, "DAG run").split(" ")[0]
    _, _, children = _parent_and_children(mlflow_client, run_id)
    evaluate = next(c for c in children if c.data.tags["pipeline.stage"] == "evaluate")
    assert "champion_accuracy" in evaluate.data.metrics, "the champion was scored on the same split"
    assert "champion v1" in evaluate.data.params["champion"]
    blessed = evaluate.data.tags["blessed"] == "true"
    champion = mlflow_client.get_model_version_by_alias("penguins", "champion")
    assert str(champion.version) == ("2" if blessed else "1")
    if blessed:
        assert str(mlflow_client.get_model_version_by_alias("penguins", "previous").version) == "1"


def _bad_files(tmp: Path, penguins: pd.DataFrame) -> dict[str, tuple[Path, str]]:
    """Each bad input, and what the error must say about it."""
    cases = {}
    cases["nonexistent"] = (tmp / "nope.csv", "file does not exist")
    (tmp / "empty.csv").write_text("")
    cases["empty"] = (tmp / "empty.csv", "file is empty")
    (tmp / "header.csv").write_text(",".join(penguins.columns) + "\n")
    cases["header_only"] = (tmp / "header.csv", "header but no rows")
    penguins.drop(columns="species").to_csv(tmp / "nolabel.csv", index=False)
    cases["missing_label"] = (tmp / "nolabel.csv", "label column 'species' not found")
    text = penguins.astype({"bill_length_mm": object})
    text.loc[5, "bill_length_mm"] = "thirty-nine"
    text.to_csv(tmp / "text.csv", index=False)
    cases["text_in_numeric"] = (tmp / "text.csv", "bill_length_mm: numeric column has text: 1 of 342 values are not numbers, e.g. ['thirty-nine']")
    penguins.assign(species="Adelie").to_csv(tmp / "oneclass.csv", index=False)
    cases["one_class"] = (tmp / "oneclass.csv", "species: label has a single class")
    penguins.assign(flipper_length_mm=np.nan).to_csv(tmp / "allnan.csv", index=False)
    cases["all_nan_feature"] = (tmp / "allnan.csv", "flipper_length_mm: all values are missing")
    return cases


def _serving_state(home: Path) -> dict[str, float]:
    return {str(p.relative_to(home)): p.stat().st_mtime for p in (home / "serving").rglob("*")}


@pytest.mark.parametrize("case", ["nonexistent", "empty", "header_only", "missing_label", "text_in_numeric",
                                  "one_class", "all_nan_feature"])
def test_bad_input_fails_early_and_touches_nothing(case, first_run, home, tmp_path, penguins, mlflow_client, monkeypatch):
    from pipeline.ingest import IngestError
    from pipeline.tasks import RunContext, ingest_task, validate_task
    from pipeline.validate import ValidationError

    path, message = _bad_files(tmp_path, penguins)[case]
    champion_before = mlflow_client.get_model_version_by_alias("penguins", "champion").version
    versions_before = len(mlflow_client.search_model_versions("name = 'penguins'"))
    serving_before = _serving_state(home)

    params = {"source": str(path), "label": "species", "model_name": "penguins"}
    ctx = RunContext("training_pipeline", f"manual__bad_{case}")
    with pytest.raises((IngestError, ValidationError)) as err:
        validate_task(params, ctx, ingest_task(params, ctx))
    assert message in str(err.value)
    assert str(path) in str(err.value), "the error names the file"

    assert mlflow_client.get_model_version_by_alias("penguins", "champion").version == champion_before
    assert len(mlflow_client.search_model_versions("name = 'penguins'")) == versions_before
    assert _serving_state(home) == serving_before
    exp = mlflow_client.get_experiment_by_name("penguins")  # the experiment is named after the model
    failed = mlflow_client.search_runs([exp.experiment_id], filter_string=f"tags.`airflow.run_id` = '{ctx.run_id}'")
    parent = [r for r in failed if r.data.tags.get("pipeline.kind") == "dag_run"]
    assert len(parent) == 1 and parent[0].info.status == "FAILED"
    failed = [r for r in failed if "pipeline.error" in r.data.tags]
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert failed[0].data.tags["pipeline.stage"] in ("ingest", "validate")
    assert message in failed[0].data.tags["pipeline.error"]


def test_bad_input_through_airflow_exits_nonzero(first_run, home, tmp_path, run_train):
    bad = tmp_path / "header.csv"
    bad.write_text("species,island,bill_length_mm\n")
    before = _serving_state(home)
    result = run_train(home, "--source", str(bad), "--label", "species", "--model-name", "penguins")
    assert result.returncode != 0
    assert f"{bad}: file has a header but no rows" in result.stdout
    assert "Failed tasks:     ingest (not run: validate, split, preprocess, train, evaluate, export, register, deploy)" in result.stdout
    assert "MLflow run:       -" not in result.stdout
    assert _serving_state(home) == before
