"""pipeline.tasks without Airflow or MLflow: how a run's config is resolved and read."""
from __future__ import annotations

import pytest

from pipeline.config import ConfigError
from pipeline.tasks import CONFIG_SNAPSHOT, RunContext, load_run_config

YAML = "name: churn\nsource: data.csv\nlabel: y\ntraining:\n  epochs: {epochs}\nsplit:\n  seed: 7\n"


def test_the_config_is_resolved_once_per_run(pipeline_home, tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text(YAML.format(epochs=5))
    params = {"config": str(conf), "learning_rate": 0.01}
    ctx = RunContext("training_pipeline", "manual__2026-01-01T00:00:00+00:00")

    first = load_run_config(params, ctx)  # the first task resolves it
    assert (ctx.data_dir / CONFIG_SNAPSHOT).is_file()
    conf.write_text(YAML.format(epochs=50))  # edited mid-run
    later = load_run_config(params, ctx)  # a later task of the same run
    assert later == first and later.training.epochs == 5 and later.training.learning_rate == 0.01

    other = RunContext("training_pipeline", "manual__2026-01-02T00:00:00+00:00")
    assert load_run_config(params, other).training.epochs == 50  # the next run reads the file
    assert load_run_config(params).training.epochs == 50  # without a run: read now


def test_a_run_id_used_again_with_other_params_resolves_again(pipeline_home, tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text(YAML.format(epochs=5))
    ctx = RunContext("training_pipeline", "manual__r1")
    assert load_run_config({"config": str(conf)}, ctx).training.epochs == 5
    assert load_run_config({"config": str(conf), "epochs": 9}, ctx).training.epochs == 9


def test_the_training_seed_is_not_the_split_seed(pipeline_home, tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text(YAML.format(epochs=5))
    cfg = load_run_config({"config": str(conf), "seed": 3})  # the trigger form's seed is the split's
    assert (cfg.split.seed, cfg.training.seed) == (3, 42)


def test_a_source_without_config_is_named_after_the_file(pipeline_home):
    cfg = load_run_config({"source": "/data/My Data.csv", "label": "y"})
    assert cfg.name == cfg.serving.model_name == "My_Data"
    assert load_run_config({"source": "/data/a.csv", "label": "y", "model_name": "churn"}).serving.model_name == "churn"


@pytest.mark.parametrize("params, message", [
    ({"source": "a.csv", "label": "y", "model_name": "a/b"}, "invalid model name 'a/b'"),
    ({"source": "a.csv", "label": "y", "learning_rate": -1}, "training.learning_rate: must be > 0"),
])
def test_bad_params_are_config_errors(pipeline_home, params, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(params, RunContext("training_pipeline", "manual__bad"))
