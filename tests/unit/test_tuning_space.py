"""The `tuning:` section: the search space parsed and checked at config load (every bad input names its key),
Optuna's distributions of it, and a draw applied to the config as overrides."""
from __future__ import annotations

import pytest

from pipeline.config import ConfigError, from_dict, load_config


def _raw(space=None, **tuning):
    return {"name": "penguins", "source": "a.csv", "label": "y", "task": "classification",
            "model": {"builder": "mlp", "params": {"hidden_units": [8]}},
            "tuning": {"space": space if space is not None else {
                "training.learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}}, **tuning}}


SPACE = {
    "training.learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2},
    "training.epochs": {"type": "int", "low": 2, "high": 8, "step": 2},
    "model.params.dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
    "model.params.hidden_units": {"type": "choice", "values": [[16], [32, 16]]},
    "training.optimizer": {"type": "choice", "values": ["adam", "adamw"]},
}


def test_a_space_loads_with_defaults_and_survives_the_snapshot():
    cfg = from_dict(_raw(SPACE))
    t = cfg.tuning
    assert (t.n_trials, t.trials_per_round, t.pruner, t.objective) == (20, 2, "median", None)
    assert t.space["training.epochs"].step == 2 and t.space["model.params.hidden_units"].values == [[16], [32, 16]]
    assert from_dict(cfg.to_dict()) == cfg  # the run's config.json snapshot reads back the same


def test_no_tuning_section_is_none_and_the_example_loads():
    assert load_config().tuning is None
    from pipeline.paths import REPO_ROOT

    cfg = load_config(REPO_ROOT / "conf" / "examples" / "penguins_tuning.yaml")
    assert cfg.tuning.n_trials == 12 and "model.params.dropout" in cfg.tuning.space


@pytest.mark.parametrize("space, message", [
    ({"training.lr": {"type": "uniform", "low": 0.1, "high": 1}},
     "tuning.space.training.lr: unknown parameter 'training.lr'"),
    ({"model.params.units": {"type": "int", "low": 8, "high": 64}},
     "tuning.space.model.params.units: unknown parameter 'model.params.units'; did you mean 'model.params.hidden_units'?"),
    ({"serving.model_name": {"type": "choice", "values": ["a", "b"]}}, "tuning.space.serving.model_name: unknown parameter"),
    ({"model.params.hidden_units": {"type": "choice", "values": []}},
     "tuning.space.model.params.hidden_units.values: a choice needs at least one value"),
    ({"training.learning_rate": {"type": "uniform", "low": 0.1, "high": 0.01}},
     "tuning.space.training.learning_rate.low: 0.1 is above high (0.01)"),
    ({"training.learning_rate": {"type": "log_uniform", "low": 0, "high": 0.01}},
     "tuning.space.training.learning_rate.low: must be > 0 for log_uniform"),
    ({"training.learning_rate": {"type": "uniform", "high": 0.01}},
     "tuning.space.training.learning_rate.low: required by uniform"),
    ({"training.learning_rate": {"type": "normal", "low": 0.1, "high": 1}},
     "tuning.space.training.learning_rate.type: must be one of log_uniform, uniform, int or choice"),
    ({"training.learning_rate": {"type": "uniform", "low": 0.1, "hi": 1}},
     "unknown key 'hi' in tuning.space.training.learning_rate; did you mean 'high'?"),
    ({"training.epochs": {"type": "int", "low": 1.5, "high": 4}}, "tuning.space.training.epochs.low: must be a whole number"),
    ({"training.learning_rate": {"type": "uniform", "low": 0.1, "high": 20}},
     "tuning.space.training.learning_rate: 20.0 is not a valid value: training.learning_rate: must be <= 10"),
    ({"model.params.dropout": {"type": "uniform", "low": 0, "high": 1}},
     "tuning.space.model.params.dropout: 1.0 is not a valid value: model.params.dropout: must be < 1"),
    ({"training.optimizer": {"type": "choice", "values": ["adam", "lion"]}},
     "tuning.space.training.optimizer: 'lion' is not a valid value"),
    ({}, "tuning.space: at least one parameter to tune"),
])
def test_a_bad_space_is_refused_at_load_naming_the_key(space, message):
    with pytest.raises(ConfigError) as err:
        from_dict(_raw(space))
    assert message in str(err.value)


@pytest.mark.parametrize("tuning, message", [
    ({"n_trials": 100}, "tuning.n_trials: 100 trials at 2 per round need 50 rounds"),
    ({"objective": "rmse"}, "tuning.objective: 'rmse' is a regression metric"),
    ({"pruner": "hyperband"}, "tuning.pruner: must be one of median or none"),
    ({"trials_per_round": 0}, "tuning.trials_per_round: must be >= 1"),
    ({"trial": 3}, "unknown key 'trial' in tuning"),
])
def test_bad_tuning_settings_name_their_key(tuning, message):
    with pytest.raises(ConfigError) as err:
        from_dict(_raw(**tuning))
    assert message in str(err.value)


def test_tuning_needs_a_validation_split():
    raw = {**_raw(), "split": {"train": 0.8, "val": 0, "test": 0.2}}
    with pytest.raises(ConfigError, match="tuning: needs a validation split"):
        from_dict(raw)


def test_distributions_and_a_draw_applied_to_the_config():
    import optuna

    from pipeline.tuning.space import distributions, to_overrides

    cfg = from_dict(_raw(SPACE))
    dists = distributions(cfg.tuning.space)
    assert dists["training.learning_rate"].log and dists["training.epochs"].step == 2
    assert dists["model.params.hidden_units"].choices == ("[16]", "[32, 16]")  # lists drawn as their JSON text
    assert dists["training.optimizer"].choices == ("adam", "adamw")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = study.ask(dists).params
    overrides = to_overrides(drawn, cfg.tuning.space)
    assert overrides["model.params.hidden_units"] in ([16], [32, 16])
    tuned = cfg.with_overrides(overrides)
    assert tuned.training.learning_rate == pytest.approx(drawn["training.learning_rate"])
    assert tuned.training.epochs in (2, 4, 6, 8) and tuned.training.optimizer in ("adam", "adamw")
    assert list(tuned.model.params["hidden_units"]) == overrides["model.params.hidden_units"]
    assert tuned.model.params["dropout"] == pytest.approx(drawn["model.params.dropout"])


def test_the_overrides_param_applies_dotted_keys_and_refuses_unknown_ones(tmp_path, monkeypatch):
    from pipeline.tasks import RunContext, load_run_config, resolve_run_config

    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    params = {"config": "", "overrides": {"model.params.dropout": 0.3, "training.learning_rate": 0.004}}
    cfg = resolve_run_config(params)
    assert cfg.model.params["dropout"] == 0.3 and cfg.training.learning_rate == 0.004
    ctx = RunContext("tuning_pipeline", "manual__1")
    assert load_run_config({"config": ""}, ctx).training.learning_rate == 0.01  # the snapshot: without them
    assert load_run_config(params, ctx) == cfg  # over the same snapshot
    with pytest.raises(ConfigError, match="overrides: unknown config key 'training.lr'"):
        resolve_run_config({"overrides": {"training.lr": 0.1}})
    with pytest.raises(ConfigError, match="overrides: must be a mapping"):
        resolve_run_config({"overrides": ["training.epochs"]})
