"""The serving directory on disk: version directories, hidden temporary copies, publishing by one rename, the
content digest that makes a published version trustworthy, and retention.

Layout (docs/deployment.md): ``serving/models.config``, ``serving/<model>/<version>/``, and beside the versions
names no server loads: ``.deploy-<version>-*`` (copies being checked), ``.trash-*`` (being deleted) and the
per-model lock file ``.deploy.lock`` (``pipeline.deploy.lock``).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterable, Mapping

from pipeline import paths
from pipeline.atomic import write_text_atomic
from pipeline.deploy.errors import DeployError

TMP_PREFIX = ".deploy-"


models_config_path = paths.models_config_path  # kept here for callers of ``pipeline.deploy.models_config_path``


def version_dirs(model_dir: str | Path) -> dict[int, Path]:
    """The complete version directories of a model base path (hidden temporary directories are not)."""
    from pipeline.serving.servable import version_ready

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return {}
    return {int(p.name): p for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir() and version_ready(p)}


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` atomically (:func:`pipeline.atomic.write_text_atomic`): a reader sees the old file or the
    new one, never half of one."""
    return write_text_atomic(path, text)


def copy_to_temp(src: str | Path, model_dir: str | Path, version: int) -> Path:
    """Copy a SavedModel into a fresh hidden directory of ``model_dir`` (servers ignore non-numeric names).

    Raises:
        DeployError: the directory is not writable, or the copy failed part way (the partial copy is removed).
    """
    model_dir = Path(model_dir)
    for stale in model_dir.glob(f"{TMP_PREFIX}{version}-*") if model_dir.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)  # left by a deploy of this version that was killed
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{version}-", dir=model_dir))
    except OSError as exc:
        raise DeployError(f"serving directory {model_dir} is not writable: {exc}") from exc
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    except (OSError, shutil.Error) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DeployError(f"copying {src} into {model_dir} failed part way, nothing was published: {exc}") from exc
    return tmp


def publish(tmp: str | Path, model_dir: str | Path, version: int) -> Path:
    """Rename a validated temporary copy to ``model_dir/<version>``: one atomic step on one file system.

    Raises:
        DeployError: the version directory exists already (versions are immutable once published).
    """
    target = Path(model_dir) / str(int(version))
    if target.exists():
        raise DeployError(f"{target} exists already; a published version is never overwritten")
    try:
        os.rename(tmp, target)
    except OSError as exc:
        raise DeployError(f"could not publish {target}: {exc}") from exc
    return target


def remove_dir(path: str | Path) -> None:
    """Rename a directory to a hidden name first, then delete it: a server never sees it half-deleted."""
    path = Path(path)
    trash = path.parent / f".trash-{path.name}-{uuid.uuid4().hex}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ------------------------------------------------------------------------------------------- integrity
def content_digest(directory: str | Path) -> str:
    """sha256 over every file of ``directory``: its path relative to ``directory`` and its bytes, in path order.

    Two directories have the same digest when they hold the same files with the same contents; a file added,
    removed, renamed or changed changes it. Symbolic links are followed (a SavedModel has none).
    """
    directory = Path(directory)
    digest = hashlib.sha256()
    files = sorted((p.relative_to(directory).as_posix(), p) for p in directory.rglob("*") if p.is_file())
    for rel, path in files:
        name = rel.encode()
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(path.stat().st_size.to_bytes(8, "big"))
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- retention
def versions_to_remove(on_disk: Iterable[int], keep: int, protected: Iterable[int]) -> list[int]:
    """Retention: every version but the newest ``keep`` and the ``protected`` ones (aliased or configured)."""
    on_disk = sorted(set(on_disk), reverse=True)
    return sorted(set(on_disk[keep:]) - set(protected))


def apply_retention(model_name: str, keep: int, aliases: Mapping[str, int]) -> list[int]:
    """Delete the version directories retention lets go; returns their versions."""
    from pipeline.deploy.models_config import configured_versions, served_versions

    model_dir = paths.serving_dir(model_name)
    config = paths.models_config_path()
    protected = set(served_versions(aliases)) | configured_versions(
        config.read_text() if config.is_file() else None, model_name)
    removed = []
    for version in versions_to_remove(version_dirs(model_dir), keep, protected):
        remove_dir(model_dir / str(version))
        removed.append(version)
    return removed


