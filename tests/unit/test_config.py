from __future__ import annotations

import pytest

from pipeline.config import ConfigError, from_dict, load_config


def test_default_config_is_penguins():
    cfg = load_config()
    assert cfg.name == "penguins" and cfg.label == "species" and cfg.serving.model_name == "penguins"
    assert cfg.features.exclude == ("year",)
    assert cfg.gate.thresholds["accuracy"] == 0.9


def test_config_is_frozen():
    cfg = load_config()
    with pytest.raises(Exception):
        cfg.label = "island"  # type: ignore[misc]


def test_overrides_make_a_new_config():
    cfg = load_config()
    new = cfg.with_overrides({"training.epochs": 3, "gate.thresholds.accuracy": 0.5, "source": "x.csv"})
    assert (new.training.epochs, new.gate.thresholds["accuracy"], new.source) == (3, 0.5, "x.csv")
    assert cfg.training.epochs != 3  # the original is untouched


def test_minimal_config_gets_defaults_and_name_from_source():
    cfg = from_dict({"source": "/data/churn.csv", "label": "churned"})
    assert cfg.name == "churn" and cfg.serving.model_name == "churn" and cfg.task is None


@pytest.mark.parametrize("raw, message", [
    ({"label": "y"}, "'source' is required"),
    ({"source": "a.csv", "label": "y", "bogus": 1}, "unknown top-level"),
    ({"source": "a.csv", "label": "y", "task": "ranking"}, "task must be one of"),
    ({"source": "a.csv", "label": "y", "split": {"train": 0.9, "val": 0.2, "test": 0.1}}, "sum to 1"),
    ({"source": "a.csv", "label": "y", "split": {"strategy": "hash"}}, "key_column"),
    ({"source": "a.csv", "label": "y", "training": {"optimizer": "lbfgs"}}, "optimizer"),
    ({"source": "a.csv", "label": "y", "training": {"epochs": 0}}, "epochs"),
    ({"source": "a.csv", "label": "y", "features": {"numeric": ["a"], "categorical": ["a"]}}, "listed as both numeric and categorical"),
    ({"source": "a.csv", "label": "y", "features": {"zip": "cathegorical"}}, "features.zip: kind must be one of"),
    ({"source": "a.csv", "label": "y", "features": {"max_vocabulary": "lots"}}, "features.max_vocabulary must be"),
    ({"source": "a.csv", "label": "y", "labels": {"rare_classes": "keep"}}, "labels.rare_classes must be one of"),
    ({"source": "a.csv", "label": "y", "training": {"class_weight": "heavy"}}, "training.class_weight must be one of"),
    ({"source": "a.csv", "label": "y", "training": {"max_minutes": 0}}, "training.max_minutes must be > 0"),
    ({"source": "a.csv", "label": "y", "model": {"builder": "tabular", "params": {"widht": 64}}},
     "model.params.widht: builder 'tabular' has no parameter 'widht'"),
    ({"source": "a.csv", "label": "y", "model": {"builder": "mlp", "params": {"hidden": [8]}}},
     "did you mean 'hidden_units'"),
    ({"source": "a.csv", "label": "y", "model": {"builder": "xgboost"}}, "unknown model builder 'xgboost'"),
    ({"source": "a.csv", "label": "y", "model": {"module": "no/such/file.py"}}, "file not found"),
    ({"source": "a.csv", "label": "y", "model": {"module": "no_such_package.model"}}, "cannot import"),
    ({"source": "a.csv", "label": "y", "features": {"numeric": ["y"]}}, "also listed as a feature"),
    ({"source": "a.csv", "label": "y", "training": {"epoch": 3}}, "unknown key(s) in 'training': epoch"),
])
def test_invalid_configs_name_the_problem(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_dict(raw)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_override_key():
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config().with_overrides({"training.nope": 1})


def test_features_by_column_and_by_list():
    cfg = from_dict({"source": "a.csv", "label": "y", "features": {"zip": "categorical", "text": ["notes"],
                                                                   "exclude": ["id"], "max_vocabulary": 50}})
    assert cfg.features.kinds == {"zip": "categorical", "notes": "text", "id": "exclude"}
    assert cfg.features.max_vocabulary == 50 and cfg.features.exclude == ("id",)
    assert from_dict(cfg.to_dict()) == cfg  # the YAML layout round-trips


def test_defaults_follow_the_data():
    cfg = from_dict({"source": "a.csv", "label": "y"})
    t = cfg.training
    assert (t.epochs, t.batch_size, t.early_stopping_patience) == (None, None, None)
    assert (cfg.model.builder, t.optimizer, t.lr_schedule, t.class_weight) == ("tabular", "adamw", "warmup_cosine", "auto")


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
