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
    ({"source": "a.csv", "label": "y", "features": {"numeric": ["a"], "categorical": ["a"]}}, "both numeric"),
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
