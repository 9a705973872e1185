"""End to end: the tuning_pipeline DAG run through Airflow (`pipeline tune`, a `dag.test()` run) on penguins
with a tiny budget: 4 trials in rounds of 2, each a nested MLflow run under the tune run, the study's best
parameters training the final model, registered and served through the same gate as any run."""
from __future__ import annotations

import pytest
import yaml

pytestmark = pytest.mark.e2e


def _line(out: str, prefix: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(prefix + ":")).split(":", 1)[1].strip()


def test_tuning_runs_rounds_of_trials_and_serves_the_best(pipeline_home, tmp_path, run_train):
    from pipeline.paths import DEFAULT_CONFIG

    base = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config = {**base, "training": {**base["training"], "epochs": 3, "early_stopping_patience": 3},
              "gate": {"metric": "accuracy", "thresholds": {"accuracy": 0.3}},
              "tuning": {"n_trials": 4, "trials_per_round": 2, "pruner_warmup_epochs": 1, "startup_trials": 2,
                         "space": {"training.learning_rate": {"type": "log_uniform", "low": 0.003, "high": 0.05},
                                   "model.params.hidden_units": {"type": "choice", "values": [[16], [32, 16]]}}}}
    path = tmp_path / "tuning.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_train(pipeline_home, "--config", str(path), command="tune")
    assert result.returncode == 0, result.stdout[-6000:]
    out = result.stdout
    assert _line(out, "Registered model") == "penguins version 1"
    assert _line(out, "Blessed").startswith("yes")
    dag_run = _line(out, "DAG run").split(" ")[0]

    import optuna

    from pipeline import paths
    from pipeline.config import load_config
    from pipeline.tracking import client
    from pipeline.tuning import study as studies

    study = optuna.load_study(study_name=studies.study_name(load_config(path), dag_run),
                              storage=f"sqlite:///{paths.pipeline_home() / 'tuning' / 'optuna.db'}")
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials)
    assert sorted({t.user_attrs["round"] for t in trials}) == [0, 1]
    assert any(t.state.name == "COMPLETE" for t in trials)

    c = client()
    exp = c.get_experiment_by_name("penguins")
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`airflow.run_id` = '{dag_run}'")
    parent = next(r for r in runs if r.data.tags.get("pipeline.kind") == "dag_run")
    by_parent = lambda pid: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == pid]  # noqa: E731
    stages = {r.data.tags["pipeline.stage"]: r for r in by_parent(parent.info.run_id)}
    assert set(stages) >= {"ingest", "validate", "split", "preprocess", "tune", "train", "evaluate", "export",
                           "register", "deploy"}
    tune = stages["tune"]
    trial_runs = by_parent(tune.info.run_id)
    assert sorted(r.data.tags["optuna.trial"] for r in trial_runs) == ["0", "1", "2", "3"]
    for r in trial_runs:
        assert {"training.learning_rate", "model.params.hidden_units"} <= set(r.data.params)
        assert r.data.tags["optuna.state"] in ("COMPLETE", "PRUNED", "FAIL")
        assert r.data.tags["pruned"] == str(r.data.tags["optuna.state"] == "PRUNED").lower()
        if r.data.tags["optuna.state"] == "COMPLETE":
            assert "objective" in r.data.metrics
            assert len(c.get_metric_history(r.info.run_id, "val_loss")) >= 1  # the per-epoch curve
    best = study.best_trial
    assert tune.data.metrics["best_objective"] == pytest.approx(best.value)
    assert float(tune.data.params["best.training.learning_rate"]) == pytest.approx(
        best.params["training.learning_rate"])
    artifacts = {a.path for a in c.list_artifacts(tune.info.run_id)}
    assert {"optimization_history.png", "best_params.json"} <= artifacts
    # the final training ran with the best parameters, then the same gate and deploy as any run
    assert float(stages["train"].data.params["training_learning_rate"]) == pytest.approx(
        best.params["training.learning_rate"])
    mv = c.get_model_version_by_alias("penguins", "champion")
    assert str(mv.version) == "1" and mv.tags["airflow.dag_id"] == "tuning_pipeline"
