"""Tests of pipeline.deploy.layout: retention, atomic writes, temporary copies that fail part way, publishing
that never overwrites, and the content digest of a version directory."""
from __future__ import annotations

import shutil

import pytest

from pipeline.deploy import DeployError, layout


@pytest.mark.parametrize("on_disk, keep, protected, removed", [
    ([1, 2, 3, 4, 5], 2, [], [1, 2, 3]),
    ([1, 2, 3, 4, 5], 2, [1, 3], [2]),  # champion/previous/challenger are never removed
    ([1, 2], 5, [], []),
    ([5, 1, 9], 1, [1], [5]),
    ([], 3, [2], []),
])
def test_retention_keeps_the_newest_and_the_protected(on_disk, keep, protected, removed):
    assert layout.versions_to_remove(on_disk, keep, protected) == removed


def test_write_atomic_replaces_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "serving" / "models.config"
    layout.write_atomic(target, "one")
    layout.write_atomic(target, "two")
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

    monkeypatch.setattr(layout.shutil, "copytree", copytree)
    model_dir = tmp_path / "penguins"
    with pytest.raises(DeployError, match="failed part way, nothing was published.*No space left"):
        layout.copy_to_temp(templates["v1"], model_dir, 3)
    assert copied and list(model_dir.iterdir()) == []


def test_unwritable_serving_directory_is_a_clear_error(tmp_path, templates, monkeypatch):
    model_dir = tmp_path / "penguins"
    model_dir.mkdir()
    if os_is_root():  # root writes anywhere: make the directory refuse the way a read-only mount does
        def refuse(**kwargs):
            raise PermissionError(13, "Permission denied", kwargs.get("dir"))
        monkeypatch.setattr(layout.tempfile, "mkdtemp", refuse)
    else:
        model_dir.chmod(0o555)
    try:
        with pytest.raises(DeployError, match=f"serving directory {model_dir} is not writable"):
            layout.copy_to_temp(templates["v1"], model_dir, 1)
    finally:
        model_dir.chmod(0o755)
    assert list(model_dir.iterdir()) == []


def os_is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def test_publish_never_overwrites_a_version(tmp_path, templates):
    model_dir = tmp_path / "penguins"
    first = layout.publish(layout.copy_to_temp(templates["v1"], model_dir, 1), model_dir, 1)
    tmp = layout.copy_to_temp(templates["v2"], model_dir, 1)
    with pytest.raises(DeployError, match="never overwritten"):
        layout.publish(tmp, model_dir, 1)
    assert layout.version_dirs(model_dir) == {1: first}, "hidden copies are not versions"


def test_content_digest_changes_with_any_file_and_only_then(tmp_path, templates):
    a = shutil.copytree(templates["v1"], tmp_path / "a")
    b = shutil.copytree(templates["v1"], tmp_path / "b")
    digest = layout.content_digest(a)
    assert len(digest) == 64 and layout.content_digest(b) == digest, "the same files give the same digest"
    variables = next((b / "variables").glob("variables.data-*"))
    variables.write_bytes(variables.read_bytes()[:-1] + bytes([variables.read_bytes()[-1] ^ 1]))
    assert layout.content_digest(b) != digest, "one bit of one file"
    c = shutil.copytree(templates["v1"], tmp_path / "c")
    (c / "assets.extra").mkdir(exist_ok=True)
    (c / "assets.extra" / "extra.txt").write_text("")
    assert layout.content_digest(c) != digest, "an added (even empty) file"
    d = shutil.copytree(templates["v1"], tmp_path / "d")
    (d / "saved_model.pb").rename(d / "saved_model.pb.bak")
    assert layout.content_digest(d) != digest, "a renamed file"


def test_retention_and_version_dirs_ignore_the_lock_file(pipeline_home, templates):
    from pipeline import paths
    from pipeline.deploy import lock

    model_dir = paths.serving_dir("penguins")
    for version in (1, 2, 3):
        shutil.copytree(templates["v1"], model_dir / str(version))
    with lock.model_lock("penguins"):
        assert (model_dir / lock.LOCK_FILE).is_file()
        assert sorted(layout.version_dirs(model_dir)) == [1, 2, 3]
        assert layout.apply_retention("penguins", 1, {}) == [1, 2]
    assert (model_dir / lock.LOCK_FILE).is_file() and sorted(layout.version_dirs(model_dir)) == [3]
