"""Tests of pipeline.deploy.models_config: the generated models.config serves the aliased versions under their
labels, keeps other models, and is what ``pipeline serve`` without flags finds."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.deploy import layout, models_config
from pipeline.serving.options import parse_args, parse_model_server_config


def _entry(text: str, name: str = "penguins"):
    return {m.name: m for m in parse_model_server_config(text)}.get(name)


@pytest.mark.parametrize("aliases, on_disk, versions, labels", [
    ({"champion": 2, "previous": 1}, {1, 2, 3}, (2, 1), (("stable", 2),)),
    ({"champion": 2, "previous": 1, "challenger": 3}, {1, 2, 3}, (3, 2, 1), (("canary", 3), ("stable", 2))),
    ({"champion": 2, "previous": 1, "challenger": 3}, {2}, (2,), (("stable", 2),)),  # never a version not on disk
    ({"champion": 1}, {1, 2, 3, 4}, (1,), (("stable", 1),)),  # versions on disk without an alias are not served
])
def test_models_config_serves_the_aliased_versions_with_labels(aliases, on_disk, versions, labels):
    text = models_config.render_models_config(None, "penguins", "/srv/penguins", aliases, on_disk)
    entry = _entry(text)
    assert entry.policy == "specific" and entry.versions == versions and entry.labels == labels
    assert entry.base_path == Path("/srv/penguins")


def test_models_config_keeps_other_models_and_drops_a_model_with_nothing_on_disk():
    first = models_config.render_models_config(None, "iris", "/srv/iris", {"champion": 4}, {4})
    both = models_config.render_models_config(first, "penguins", "/srv/penguins", {"champion": 1}, {1})
    assert _entry(both, "iris").versions == (4,) and _entry(both, "penguins").versions == (1,)
    gone = models_config.render_models_config(both, "penguins", "/srv/penguins", {"champion": 7}, {1})
    assert _entry(gone, "penguins") is None and _entry(gone, "iris").versions == (4,)
    with pytest.raises(ValueError, match="not a ModelServerConfig"):
        models_config.render_models_config("model_config_list { nonsense", "penguins", "/x", {}, set())


def test_serve_without_flags_uses_the_generated_models_config(pipeline_home):
    serving = pipeline_home / "serving"
    (serving / "penguins" / "1").mkdir(parents=True)
    assert parse_args([]).serve_base == serving and parse_args([]).model_config_file is None
    layout.write_atomic(serving / "models.config", models_config.render_models_config(
        None, "penguins", serving / "penguins", {"champion": 1}, {1}))
    options = parse_args([])
    assert options.model_config_file == serving / "models.config" and options.serve_base is None
    assert options.model_config_poll_s > 0, "a rollback reaches a server started without flags"
    assert [m.labels for m in options.models] == [(("stable", 1),)]
    assert parse_args(["--model_config_file_poll_wait_seconds", "0"]).model_config_poll_s == 0
