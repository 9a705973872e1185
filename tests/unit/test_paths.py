"""Tests of pipeline.paths: the serving paths are built by one helper, which checks the model name."""
from __future__ import annotations

import pytest


def test_serving_paths_come_from_one_helper(pipeline_home):
    from pipeline import paths

    assert paths.serving_dir("penguins") == pipeline_home.resolve() / "serving" / "penguins"
    assert paths.models_config_path() == pipeline_home.resolve() / "serving" / "models.config"
    assert paths.DEFAULT_CONFIG.name == "penguins.yaml" and paths.DEFAULT_CONFIG.is_file()
    with pytest.raises(ValueError, match=r"--model-name: invalid model name '\.\./etc'"):
        paths.serving_dir("../etc", "--model-name")
