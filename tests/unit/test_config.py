from __future__ import annotations

import dataclasses

import pytest

from pipeline.config import (GATE_METRICS, ConfigError, DeployConfig, LabelsConfig, ServingConfig, SplitConfig,
                             TrainingConfig, from_dict, load_config)


def _raw(**sections):
    return {"source": "a.csv", "label": "y", **sections}


def test_default_config_is_penguins():
    cfg = load_config()
    assert cfg.name == "penguins" and cfg.label == "species" and cfg.serving.model_name == "penguins"
    assert cfg.features.exclude == ("year",)
    assert cfg.gate.thresholds["accuracy"] == 0.9


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.label = "island"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.epochs = 3  # type: ignore[misc]


def test_sections_without_mappings_stay_hashable():
    cfg = load_config()
    for section in (cfg.split, cfg.training, cfg.labels, cfg.serving, cfg.deploy):
        assert hash(section) == hash(dataclasses.replace(section))
    assert {SplitConfig(), SplitConfig()} == {SplitConfig()}


def test_overrides_make_a_new_config():
    cfg = load_config()
    new = cfg.with_overrides({"training.epochs": 3, "gate.thresholds.accuracy": 0.5, "source": "x.csv"})
    assert (new.training.epochs, new.gate.thresholds["accuracy"], new.source) == (3, 0.5, "x.csv")
    assert cfg.training.epochs != 3  # the original is untouched


def test_overrides_are_checked_like_the_file():
    with pytest.raises(ConfigError, match=r"training\.learning_rate: must be > 0, got -1"):
        load_config().with_overrides({"training.learning_rate": -1})


def test_minimal_config_gets_defaults_and_name_from_source():
    cfg = from_dict({"source": "/data/churn.csv", "label": "churned"})
    assert cfg.name == "churn" and cfg.serving.model_name == "churn" and cfg.task is None


def test_a_name_derived_from_a_file_is_made_valid():
    cfg = from_dict({"source": "/data/My Data (v2).csv", "label": "y"})
    assert cfg.name == cfg.serving.model_name == "My_Data_v2_"


@pytest.mark.parametrize("raw, message", [
    ({"label": "y"}, "source: required, and missing"),
    (_raw(bogus=1), "unknown key 'bogus' at the top level (known: name, source"),
    (_raw(labells={}), "unknown key 'labells' at the top level; did you mean 'labels'?"),
    (_raw(task="ranking"), "task: must be one of classification or regression, got 'ranking'"),
    (_raw(split={"train": 0.9, "val": 0.2, "test": 0.1}), "split: ratios must sum to 1"),
    (_raw(split={"strategy": "time"}), "split.time_column: required by strategy 'time'"),
    (_raw(split={"strategy": "hash", "key_column": "y"}), "split.key_column: 'y' is the label"),
    (_raw(split={"seed": -1}), "split.seed: must be >= 0, got -1"),
    (_raw(training={"optimizer": "lbfgs"}), "training.optimizer: must be one of adam, adamw, sgd or rmsprop, got 'lbfgs'"),
    (_raw(training={"epochs": 0}), "training.epochs: must be >= 1, got 0"),
    (_raw(training={"epochs": 2.5}), "training.epochs: must be a whole number, got 2.5"),
    (_raw(training={"epochs": True}), "training.epochs: must be a whole number, got the boolean True"),
    (_raw(training={"learning_rate": "fast"}), "training.learning_rate: must be a number, got 'fast'"),
    (_raw(training={"learning_rate": float("nan")}), "training.learning_rate: must be a finite number"),
    (_raw(training={"learning_rate": "inf"}), "training.learning_rate: must be a finite number"),
    (_raw(training={"seed": 2**40}), "training.seed: must be <= 4294967295"),
    (_raw(training={"min_epochs": 50, "max_epochs": 20}), "training.min_epochs: 50 is more than max_epochs (20)"),
    (_raw(training={"mixed_precision": "false"}), "training.mixed_precision: must be true or false"),
    (_raw(training={"mixed_precision": 1}), "training.mixed_precision: must be true or false"),
    (_raw(deploy={"canary": "yes"}), "deploy.canary: must be true or false"),
    (_raw(deploy={"tf_serving_rest_url": "http://h:8501"}), "deploy.tf_serving_rest_url: goes together with tf_serving_model_base_path"),
    (_raw(training=5), "training: must be a mapping, got 5"),
    (_raw(features={"numeric": ["a"], "categorical": ["a"]}), "listed as both numeric and categorical"),
    (_raw(features={"zip": "cathegorical"}), "features.zip: kind must be one of"),
    (_raw(features={"max_vocabulary": "lots"}), "features.max_vocabulary: must be a whole number, got 'lots'"),
    (_raw(features={"max_vocab": 50}), "unknown key 'max_vocab' in features; did you mean 'max_vocabulary'?"),
    (_raw(features={"id_unique_ratio": 1.5}), "features.id_unique_ratio: must be <= 1, got 1.5"),
    (_raw(features={"categorical": [True]}), "features.categorical: a column name must be a string, got True (YAML"),
    (_raw(labels={"rare_classes": "keep"}), "labels.rare_classes: must be one of error, merge or drop, got 'keep'"),
    (_raw(labels={"merged_class": False}), "labels.merged_class: must be a string (YAML reads unquoted yes/no"),
    (_raw(training={"class_weight": "heavy"}), "training.class_weight: must be one of auto, balanced or none"),
    (_raw(training={"max_minutes": 0}), "training.max_minutes: must be > 0, got 0"),
    (_raw(gate={"metric": "acc"}), "gate.metric: unknown metric 'acc'; did you mean 'accuracy'?"),
    (_raw(task="classification", gate={"metric": "rmse"}), "gate.metric: 'rmse' is a regression metric and the task is classification"),
    (_raw(task="regression", gate={"thresholds": {"accuracy": 0.9}}), "gate.thresholds.accuracy: 'accuracy' is a classification metric"),
    (_raw(gate={"thresholds": {"accuracy": "high"}}), "gate.thresholds.accuracy: must be a number, got 'high'"),
    (_raw(gate={"max_regression": -0.1}), "gate.max_regression: must be >= 0"),
    (_raw(serving={"model_name": "a/b"}), "serving.model_name: invalid model name 'a/b': it contains '/'"),
    (_raw(serving={"model_name": ".."}), "serving.model_name: invalid model name '..'"),
    (_raw(name="my model"), "name: invalid model name 'my model': it contains ' '"),
    (_raw(model={"builder": "tabular", "params": {"widht": 64}}), "model.params.widht: builder 'tabular' has no parameter 'widht'"),
    (_raw(model={"builder": "mlp", "params": {"hidden": [8]}}), "did you mean 'hidden_units'"),
    (_raw(model={"builder": "xgboost"}), "model.builder: unknown model builder 'xgboost'"),
    (_raw(model={"module": "no/such/file.py"}), "file not found"),
    (_raw(model={"module": "no_such_package.model"}), "cannot import"),
    (_raw(model={"modul": "x.py"}), "unknown key 'modul' in model; did you mean 'module'?"),
    (_raw(features={"numeric": ["y"]}), "also listed as a feature"),
    (_raw(training={"epoch": 3}), "unknown key 'epoch' in training; did you mean 'epochs'?"),
])
def test_invalid_configs_name_the_problem(raw, message):
    with pytest.raises(ConfigError) as info:
        from_dict(raw)
    assert message in str(info.value)


def test_every_invalid_key_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        from_dict(_raw(training={"epochs": 0, "learning_rate": "x"}))
    assert "training.epochs" in str(info.value) and "training.learning_rate" in str(info.value)


def test_yaml_1_1_numbers_and_booleans(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-3 without a dot as the string '1e-3'; it is a number here, params included.
    (tmp_path / "c.yaml").write_text("source: a.csv\nlabel: y\ntraining:\n  learning_rate: 1e-3\n  epochs: 1e2\n"
                                     "  mixed_precision: no\nmodel:\n  builder: mlp\n  params: {dropout: 5e-2}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.training.learning_rate == 0.001 and cfg.training.epochs == 100
    assert cfg.training.mixed_precision is False and cfg.model.params["dropout"] == 0.05
    # the same from plain data (Airflow params, JSON): a numeric string is a number, a word is an error
    assert from_dict(_raw(training={"learning_rate": "1e-3"})).training.learning_rate == 0.001
    (tmp_path / "d.yaml").write_text("source: a.csv\nlabel: y\ntraining:\n  mixed_precision: 'false'\n")
    with pytest.raises(ConfigError, match=r"d\.yaml: training\.mixed_precision: must be true or false"):
        load_config(tmp_path / "d.yaml")


def test_direct_construction_is_validated_too():
    with pytest.raises(ValueError, match="min_epochs"):
        TrainingConfig(min_epochs=300)
    with pytest.raises(ValueError):
        LabelsConfig(rare_classes="keep")  # type: ignore[arg-type]
    assert dataclasses.replace(DeployConfig(), canary=True).canary is True
    assert ServingConfig().model_name == "model"


def test_training_seed_is_separate_from_the_split_seed():
    cfg = from_dict(_raw(split={"seed": 7}))
    assert (cfg.split.seed, cfg.training.seed) == (7, 42)
    assert from_dict(_raw(training={"seed": 3})).training.seed == 3


def test_gate_metrics_are_what_evaluate_computes():
    import numpy as np

    from pipeline import evaluate

    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.6, 0.4]])
    computed = set(evaluate.classification_metrics(y, proba, ["a", "b"]))
    assert computed == set(GATE_METRICS["classification"]) | {f"{m}_{c}" for m in ("precision", "recall", "f1")
                                                             for c in "ab"}
    assert set(evaluate.regression_metrics(np.array([1.0, 2.0]), np.array([1.5, 2.0]))) == set(GATE_METRICS["regression"])
    assert from_dict(_raw(gate={"thresholds": {"recall_Adelie": 0.8}})).gate.thresholds == {"recall_Adelie": 0.8}


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_errors_name_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("source: a.csv\nlabel: y\ntraining:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"config file .*c\.yaml: unknown key 'epoch' in training"):
        load_config(tmp_path / "c.yaml")


def test_unknown_override_key():
    with pytest.raises(ConfigError, match="unknown config key 'training.nope'"):
        load_config().with_overrides({"training.nope": 1})
    with pytest.raises(ConfigError, match="did you mean 'training.epochs'"):
        load_config().with_overrides({"training.epoch": 1})


def test_features_by_column_and_by_list():
    cfg = from_dict({"source": "a.csv", "label": "y", "features": {"zip": "categorical", "text": ["notes"],
                                                                   "exclude": ["id"], "max_vocabulary": 50}})
    assert cfg.features.kinds == {"zip": "categorical", "notes": "text", "id": "exclude"}
    assert cfg.features.max_vocabulary == 50 and cfg.features.exclude == ("id",)
    assert from_dict(cfg.to_dict()) == cfg  # the YAML layout round-trips


def test_the_whole_config_round_trips():
    cfg = load_config().with_overrides({"training.seed": 5, "deploy.canary": True})
    assert from_dict(cfg.to_dict()) == cfg


def test_defaults_follow_the_data():
    cfg = from_dict({"source": "a.csv", "label": "y"})
    t = cfg.training
    assert (t.epochs, t.batch_size, t.early_stopping_patience) == (None, None, None)
    assert (cfg.model.builder, t.optimizer, t.lr_schedule, t.class_weight) == ("tabular", "adamw", "warmup_cosine", "auto")


def test_empty_sections_are_defaults():
    assert from_dict(_raw(training=None, features=None)).training == TrainingConfig()


def test_module_is_found_beside_the_config(tmp_path):
    (tmp_path / "mine.py").write_text("def build(inputs, spec, *, units=8):\n    raise NotImplementedError\n")
    (tmp_path / "c.yaml").write_text("source: a.csv\nlabel: y\nmodel:\n  module: mine.py\n  params: {units: 4}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.model.module == str(tmp_path / "mine.py")
    (tmp_path / "d.yaml").write_text("source: a.csv\nlabel: y\nmodel:\n  module: mine.py\n  params: {unit: 4}\n")
    with pytest.raises(ConfigError, match="model.params.unit: builder module .*mine.py' has no parameter 'unit'"):
        load_config(tmp_path / "d.yaml")


def test_a_module_file_runs_once_per_version(tmp_path):
    (tmp_path / "counted.py").write_text("RUNS = []\nRUNS.append(1)\n\ndef build(inputs, spec):\n    pass\n")
    (tmp_path / "c.yaml").write_text("source: a.csv\nlabel: y\nmodel:\n  module: counted.py\n")
    first = load_config(tmp_path / "c.yaml").model.build_fn()
    second = load_config(tmp_path / "c.yaml").model.build_fn()
    assert first is second and first.__globals__["RUNS"] == [1]


def test_execution_and_deploy_check_rows_are_checked_by_key():
    cfg = load_config()
    assert cfg.execution.task_processes == "shared" and cfg.deploy.check_rows == 10_000
    assert cfg.with_overrides({"execution.task_processes": "own"}).execution.task_processes == "own"
    assert cfg.with_overrides({"deploy.check_rows": 0}).deploy.check_rows == 0  # every test row
    with pytest.raises(ConfigError, match=r"execution\.task_processes"):
        cfg.with_overrides({"execution.task_processes": "separate"})
    with pytest.raises(ConfigError, match=r"deploy\.check_rows"):
        cfg.with_overrides({"deploy.check_rows": -1})
