"""The tuning study through ask/tell in its SQLite storage under PIPELINE_HOME: rounds asked idempotently, a
retried trial never told twice, a failed or killed trial marked FAIL while the others go on, pruning from the
per-epoch values."""
from __future__ import annotations

import pytest

from pipeline.config import from_dict
from pipeline.tuning import study as studies

RUN = "manual__2026-01-01T00:00:00+00:00"


def _cfg(**tuning):
    return from_dict({"name": "penguins", "source": "a.csv", "label": "y", "task": "classification",
                      "model": {"builder": "mlp"},
                      "tuning": {"space": {"training.learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-1},
                                           "model.params.dropout": {"type": "uniform", "low": 0, "high": 0.5}},
                                 "n_trials": 5, "trials_per_round": 2, **tuning}})


@pytest.fixture
def cfg(pipeline_home):
    return _cfg()


def _result(state, value=None, error=""):
    return {"state": state, "value": value, "error": error}


def test_the_study_lives_under_pipeline_home_and_rounds_spend_the_budget(cfg, pipeline_home):
    study = studies.open_study(cfg, RUN, "accuracy")
    assert study.direction.name == "MAXIMIZE"
    assert (pipeline_home / "tuning" / "optuna.db").is_file()
    assert studies.ask_round(study, cfg.tuning, 0) == [0, 1]
    assert studies.ask_round(study, cfg.tuning, 0) == [0, 1]  # a retried suggest: the same trials, none more
    for n in (0, 1):
        studies.tell_trial(study, n, _result("COMPLETE", 0.5 + n / 10))
    again = studies.open_study(cfg, RUN, "accuracy")  # another process: the study from its storage
    assert studies.ask_round(again, cfg.tuning, 1) == [2, 3]
    assert studies.ask_round(again, cfg.tuning, 2) == [4]  # 5 trials in all
    assert studies.ask_round(again, cfg.tuning, 3) == []
    params = [t.params for t in again.get_trials()]
    assert len({p["training.learning_rate"] for p in params}) == 5  # each round draws anew (the seed moves on)


def test_a_trial_is_told_once_whatever_retries(cfg):
    study = studies.open_study(cfg, RUN, "accuracy")
    studies.ask_round(study, cfg.tuning, 0)
    assert studies.tell_trial(study, 0, _result("COMPLETE", 0.9)) == "COMPLETE"
    # a retried tell task, or a retried trial task's later result, changes nothing
    assert studies.tell_trial(study, 0, _result("COMPLETE", 0.1)) == "COMPLETE"
    assert studies.tell_trial(study, 0, None) == "COMPLETE"
    trial = next(t for t in study.get_trials() if t.number == 0)
    assert trial.value == 0.9 and studies.counts(study)["COMPLETE"] == 1


def test_a_failed_or_killed_trial_is_fail_and_the_others_go_on(cfg):
    study = studies.open_study(cfg, RUN, "accuracy")
    studies.ask_round(study, cfg.tuning, 0)
    assert studies.tell_trial(study, 0, _result("FAIL", error="ValueError: bad activation")) == "FAIL"
    assert studies.tell_trial(study, 1, None) == "FAIL"  # its task never wrote a result: killed
    trials = {t.number: t for t in study.get_trials()}
    assert trials[0].user_attrs["error"] == "ValueError: bad activation"
    assert "never finished" in trials[1].user_attrs["error"]
    assert studies.ask_round(study, cfg.tuning, 1) == [2, 3]  # the study goes on
    studies.tell_trial(study, 2, _result("COMPLETE", 0.8))
    assert studies.fail_unfinished(study) == [3]  # left RUNNING: closed as FAIL
    assert studies.counts(study) == {"FAIL": 3, "COMPLETE": 1}
    assert study.best_trial.number == 2


def test_intermediate_values_prune_a_bad_trial(pipeline_home):
    cfg = _cfg(startup_trials=1, pruner_warmup_epochs=1)
    study = studies.open_study(cfg, RUN, "accuracy")
    first = studies.ask_round(study, cfg.tuning, 0)[0]
    good = studies.trial_handle(study, first)
    for epoch in range(4):
        good.report(0.9, epoch)
    studies.tell_trial(study, first, _result("COMPLETE", 0.9))
    bad = studies.trial_handle(studies.open_study(cfg, RUN, "accuracy"), 1)  # another process's handle
    bad.report(0.2, 0)
    assert not bad.should_prune()  # the warmup epoch
    bad.report(0.2, 1)
    assert bad.should_prune()
    studies.tell_trial(study, 1, _result("PRUNED"))
    assert studies.counts(study) == {"COMPLETE": 1, "PRUNED": 1}


def test_no_pruner_never_prunes(pipeline_home):
    cfg = _cfg(pruner="none", startup_trials=0, pruner_warmup_epochs=0)
    study = studies.open_study(cfg, RUN, "log_loss")
    assert study.direction.name == "MINIMIZE"
    studies.ask_round(study, cfg.tuning, 0)
    studies.tell_trial(study, 0, _result("COMPLETE", 0.1))
    handle = studies.trial_handle(study, 1)
    handle.report(5.0, 3)
    assert not handle.should_prune()


@pytest.mark.parametrize("logs, metric, maximize, value", [
    ({"val_accuracy": 0.8, "val_loss": 0.5}, "accuracy", True, 0.8),
    ({"val_rmse": 2.0, "val_loss": 4.0}, "rmse", False, 2.0),
    ({"val_loss": 0.5}, "f1_macro", True, -0.5),   # no Keras log of it: the loss, in the study's direction
    ({"val_loss": 0.5}, "mae", False, 0.5),
    ({"loss": 0.5}, "accuracy", True, None),       # no validation split: nothing to report
])
def test_the_epoch_value_follows_the_objective_and_direction(logs, metric, maximize, value):
    from pipeline.tuning.trial import epoch_value

    assert epoch_value(logs, metric, maximize) == value


def test_the_pruning_callback_stops_the_fit_when_told(pipeline_home):
    import keras
    import numpy as np

    from pipeline.tuning.trial import pruning_callback

    seen = []

    def report(epoch, value):
        seen.append((epoch, round(value, 6)))
        return epoch == 1

    cb = pruning_callback(report, "log_loss", maximize=False)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.arange(8, dtype="float32").reshape(-1, 1)
    model.fit(x, x, validation_data=(x, x), epochs=5, verbose=0, callbacks=[cb])
    assert [e for e, _ in seen] == [0, 1] and cb.pruned_at == 1


def test_a_raising_trial_is_failed_in_the_study_and_in_mlflow_and_the_round_goes_on(pipeline_home, tmp_path):
    """The real task bodies, without Airflow: one trial draws an activation Keras refuses, the other trains."""
    import yaml

    from pipeline.tasks import RunContext, ingest_task, preprocess_task, split_task, validate_task
    from pipeline.tracking import client
    from pipeline.tuning.tasks import suggest_task, tell_task, trial_task

    from pipeline.paths import DEFAULT_CONFIG

    base = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config = {**base, "training": {**base["training"], "epochs": 2},
              "tuning": {"n_trials": 2, "trials_per_round": 2, "pruner": "none",
                         "space": {"model.params.activation": {"type": "choice", "values": ["relu", "no_such"]}}}}
    path = tmp_path / "tuning.yaml"
    path.write_text(yaml.safe_dump(config))
    params, ctx = {"config": str(path)}, RunContext("tuning_pipeline", RUN)
    ingested = ingest_task(params, ctx)
    validated = validate_task(params, ctx, ingested)
    splits = split_task(params, ctx, ingested, validated)
    preprocessed = preprocess_task(params, ctx, splits, validated)
    asked = suggest_task(params, ctx, splits, validated, round_no=0)["trials"]
    assert [a["number"] for a in asked] == [0, 1]
    bad, good = ({**asked[0], "overrides": {"model.params.activation": "no_such"}},
                 {**asked[1], "overrides": {"model.params.activation": "relu"}})
    failed = trial_task(params, ctx, bad, splits, preprocessed)
    assert failed["state"] == "FAIL" and "no_such" in failed["error"]
    done = trial_task(params, ctx, good, splits, preprocessed)
    assert done["state"] == "COMPLETE" and 0 <= done["value"] <= 1
    again = trial_task(params, ctx, good, splits, preprocessed)  # a retry before tell: its recorded result
    assert (again["state"], again["value"], again["mlflow_run_id"]) == ("COMPLETE", done["value"], done["mlflow_run_id"])
    told = tell_task(params, ctx, splits, [bad, good])["told"]
    assert told == {"0": "FAIL", "1": "COMPLETE"}
    # a retried trial task of a told trial trains nothing and changes nothing; a retried tell neither
    assert trial_task(params, ctx, good, splits, preprocessed)["state"] == "COMPLETE"
    assert tell_task(params, ctx, splits, [bad, good])["told"] == told
    cfg = from_dict(config)
    study = studies.open_study(cfg, RUN, "accuracy")
    assert studies.counts(study) == {"FAIL": 1, "COMPLETE": 1}
    c = client()
    runs = {r: c.get_run(r) for r in (failed["mlflow_run_id"], done["mlflow_run_id"])}
    bad_run, good_run = runs[failed["mlflow_run_id"]], runs[done["mlflow_run_id"]]
    assert bad_run.info.status == "FAILED" and bad_run.data.tags["optuna.state"] == "FAIL"
    assert "no_such" in bad_run.data.tags["pipeline.error"]
    assert good_run.info.status == "FINISHED" and good_run.data.metrics["objective"] == pytest.approx(done["value"])
    assert good_run.data.params["model.params.activation"] == "relu" and good_run.data.tags["pruned"] == "false"
    tune_run = bad_run.data.tags["mlflow.parentRunId"]
    assert good_run.data.tags["mlflow.parentRunId"] == tune_run  # both nested under the tune run
    trial_runs = c.search_runs([bad_run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{tune_run}'")
    assert sorted(r.data.tags["optuna.trial"] for r in trial_runs) == ["0", "1"]  # one run per trial, retries too
    assert "validation_accuracy" in good_run.data.metrics
