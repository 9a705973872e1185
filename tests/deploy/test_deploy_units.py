"""Unit tests of pipeline.deploy's pure parts: models.config generation, retention, signature compatibility,
alias moves, warmup records, atomic writes and copies; and ``pipeline serve`` finding the generated config."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline import deploy
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
    text = deploy.render_models_config(None, "penguins", "/srv/penguins", aliases, on_disk)
    entry = _entry(text)
    assert entry.policy == "specific" and entry.versions == versions and entry.labels == labels
    assert entry.base_path == Path("/srv/penguins")


def test_models_config_keeps_other_models_and_drops_a_model_with_nothing_on_disk():
    first = deploy.render_models_config(None, "iris", "/srv/iris", {"champion": 4}, {4})
    both = deploy.render_models_config(first, "penguins", "/srv/penguins", {"champion": 1}, {1})
    assert _entry(both, "iris").versions == (4,) and _entry(both, "penguins").versions == (1,)
    gone = deploy.render_models_config(both, "penguins", "/srv/penguins", {"champion": 7}, {1})
    assert _entry(gone, "penguins") is None and _entry(gone, "iris").versions == (4,)
    with pytest.raises(ValueError, match="not a ModelServerConfig"):
        deploy.render_models_config("model_config_list { nonsense", "penguins", "/x", {}, set())


@pytest.mark.parametrize("on_disk, keep, protected, removed", [
    ([1, 2, 3, 4, 5], 2, [], [1, 2, 3]),
    ([1, 2, 3, 4, 5], 2, [1, 3], [2]),  # champion/previous/challenger are never removed
    ([1, 2], 5, [], []),
    ([5, 1, 9], 1, [1], [5]),
    ([], 3, [2], []),
])
def test_retention_keeps_the_newest_and_the_protected(on_disk, keep, protected, removed):
    assert deploy.versions_to_remove(on_disk, keep, protected) == removed


@pytest.mark.parametrize("current, canary, after", [
    ({}, False, {"champion": 1, "challenger": None}),
    ({"champion": 1}, False, {"champion": 2, "previous": 1, "challenger": None}),
    ({"champion": 2, "previous": 1, "challenger": 3}, False, {"champion": 4, "previous": 2, "challenger": None}),
    ({"champion": 1}, True, {"champion": 1, "challenger": 2}),
    ({"champion": 1, "challenger": 2}, True, {"champion": 1, "challenger": 3}),
])
def test_new_aliases(current, canary, after):
    version = max([0, *current.values()]) + 1
    assert deploy.new_aliases(current, version, canary) == after


def test_signature_breaks_name_removed_retyped_and_added_inputs(templates):
    base = deploy.serving_signature(templates["v1"])
    assert base == {"inputs": {"bill_length_mm": "DT_FLOAT", "island": "DT_STRING"},
                    "outputs": {"probabilities": "DT_FLOAT", "classes": "DT_STRING"}}
    assert deploy.signature_breaks(base, deploy.serving_signature(templates["v2"])) == []
    assert deploy.signature_breaks(base, deploy.serving_signature(templates["no_island"])) == [
        "input 'island' (DT_STRING) was removed"]
    assert deploy.signature_breaks(base, deploy.serving_signature(templates["bill_as_text"])) == [
        "input 'bill_length_mm' changed type from DT_FLOAT to DT_STRING"]
    assert deploy.signature_breaks(deploy.serving_signature(templates["no_island"]), base) == [
        "input 'island' (DT_STRING) was added: current requests do not send it"]
    fewer_outputs = {**base, "outputs": {"classes": "DT_STRING", "probabilities": "DT_DOUBLE"}}
    assert deploy.signature_breaks(base, fewer_outputs) == [
        "output 'probabilities' changed type from DT_FLOAT to DT_DOUBLE"]
    assert deploy.signature_breaks(fewer_outputs | {"outputs": {"extra": "DT_FLOAT", **fewer_outputs["outputs"]}},
                                   fewer_outputs) == ["output 'extra' (DT_FLOAT) was removed"]


def test_signature_of_a_corrupt_savedmodel_is_a_clear_error(tmp_path, templates):
    from serving_models import write_broken

    with pytest.raises(deploy.DeployError, match="cannot be read: DecodeError"):
        deploy.serving_signature(write_broken(tmp_path / "broken"))
    with pytest.raises(deploy.DeployError, match="cannot be read"):
        deploy.serving_signature(tmp_path / "missing")


def test_warmup_requests_are_prediction_logs_of_single_rows(tmp_path, templates):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    version_dir = shutil.copytree(templates["v1"], tmp_path / "1")
    inputs = {"bill_length_mm": np.array([39.1, np.nan, 50.0], np.float32), "island": np.array(["Biscoe", "", "Dream"])}
    path = deploy.write_warmup_requests(version_dir, "penguins", inputs, rows=2)
    assert path == version_dir / "assets.extra" / "tf_serving_warmup_requests"
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    assert len(records) == 2
    first = records[0].predict_log.request
    assert first.model_spec.name == "penguins" and first.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(first.inputs["bill_length_mm"]).tolist() == pytest.approx([39.1])
    assert tf.make_ndarray(records[1].predict_log.request.inputs["island"]).tolist() == [b""]
    assert deploy.write_warmup_requests(tmp_path / "none", "penguins", inputs, rows=0) is None


def test_write_atomic_replaces_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "serving" / "models.config"
    deploy.write_atomic(target, "one")
    deploy.write_atomic(target, "two")
    assert target.read_text() == "two" and sorted(p.name for p in target.parent.iterdir()) == ["models.config"]


def test_copy_interrupted_half_way_leaves_nothing(tmp_path, templates, monkeypatch):
    real_copytree = shutil.copytree
    copied = []

    def failing_copy(src, dst, *args, **kwargs):
        if copied:
            raise OSError(28, "No space left on device")
        copied.append(src)
        return shutil.copy2(src, dst)

    def copytree(src, dst, *args, **kwargs):  # copytree recurses through the module attribute
        if not args:
            kwargs.setdefault("copy_function", failing_copy)
        return real_copytree(src, dst, *args, **kwargs)

    monkeypatch.setattr(deploy.shutil, "copytree", copytree)
    model_dir = tmp_path / "penguins"
    with pytest.raises(deploy.DeployError, match="failed part way, nothing was published.*No space left"):
        deploy.copy_to_temp(templates["v1"], model_dir, 3)
    assert copied and list(model_dir.iterdir()) == []


def test_unwritable_serving_directory_is_a_clear_error(tmp_path, templates, monkeypatch):
    model_dir = tmp_path / "penguins"
    model_dir.mkdir()
    if os_is_root():  # root writes anywhere: make the directory refuse the way a read-only mount does
        def refuse(**kwargs):
            raise PermissionError(13, "Permission denied", kwargs.get("dir"))
        monkeypatch.setattr(deploy.tempfile, "mkdtemp", refuse)
    else:
        model_dir.chmod(0o555)
    try:
        with pytest.raises(deploy.DeployError, match=f"serving directory {model_dir} is not writable"):
            deploy.copy_to_temp(templates["v1"], model_dir, 1)
    finally:
        model_dir.chmod(0o755)
    assert list(model_dir.iterdir()) == []


def os_is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def test_publish_never_overwrites_a_version(tmp_path, templates):
    model_dir = tmp_path / "penguins"
    first = deploy.publish(deploy.copy_to_temp(templates["v1"], model_dir, 1), model_dir, 1)
    tmp = deploy.copy_to_temp(templates["v2"], model_dir, 1)
    with pytest.raises(deploy.DeployError, match="never overwritten"):
        deploy.publish(tmp, model_dir, 1)
    assert deploy.version_dirs(model_dir) == {1: first}, "hidden copies are not versions"


@pytest.mark.parametrize("p99_input, p99_ms", [([0.001] * 99 + [0.5], 500.0), ([0.002] * 100, 2.0), ([], 0.0)])
def test_p99_is_the_nearest_rank(p99_input, p99_ms):
    assert deploy.p99(p99_input) == pytest.approx(p99_ms)


def test_serve_without_flags_uses_the_generated_models_config(pipeline_home):
    serving = pipeline_home / "serving"
    (serving / "penguins" / "1").mkdir(parents=True)
    assert parse_args([]).serve_base == serving and parse_args([]).model_config_file is None
    deploy.write_atomic(serving / "models.config", deploy.render_models_config(
        None, "penguins", serving / "penguins", {"champion": 1}, {1}))
    options = parse_args([])
    assert options.model_config_file == serving / "models.config" and options.serve_base is None
    assert options.model_config_poll_s > 0, "a rollback reaches a server started without flags"
    assert [m.labels for m in options.models] == [(("stable", 1),)]
    assert parse_args(["--model_config_file_poll_wait_seconds", "0"]).model_config_poll_s == 0


def test_checks_send_the_test_split_in_bounded_requests():
    import numpy as np

    from pipeline.deploy import _in_chunks

    calls = []

    def predict(part):
        calls.append(len(part["x"]))
        return part["x"] * 2

    inputs = {"x": np.arange(10, dtype=np.float32), "c": np.array(list("abcdefghij"))}
    np.testing.assert_array_equal(_in_chunks(predict, inputs, rows=4), np.arange(10) * 2)
    assert calls == [4, 4, 2]
