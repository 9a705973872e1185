"""One deploy, promotion or rollback of a model at a time: an exclusive ``fcntl.flock`` on
``serving/<model>/.deploy.lock``, held for the whole operation.

The lock is a plain file beside the version directories: servers load only numeric directories and retention
deletes only those, so both ignore it. ``flock`` is released by the kernel when its holder exits, so a killed
deploy never leaves a model locked; the file is never written, so nothing a server reads changes. The lock is
reentrant within a thread (a deploy moves the aliases under the lock it holds); another thread or process
waits. ``models.config``, shared by every model, has its own lock (:func:`config_lock`) for its read-modify-write.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Iterator

from pipeline import paths
from pipeline.deploy.errors import DeployError

LOCK_FILE = ".deploy.lock"
CONFIG_LOCK_FILE = ".models.config.lock"
log = logging.getLogger(__name__)
_held = threading.local()  # path -> depth, per thread


def lock_path(model_name: str) -> Path:
    return paths.serving_dir(model_name) / LOCK_FILE


@contextlib.contextmanager
def file_lock(path: Path, what: str) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block; waits while another holds it.

    Raises:
        DeployError: the lock file cannot be created (the serving directory is not writable).
    """
    depth = getattr(_held, "depth", None)
    if depth is None:
        depth = _held.depth = {}
    key = str(path)
    if depth.get(key):
        depth[key] += 1
        try:
            yield path
        finally:
            depth[key] -= 1
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DeployError(f"serving directory {path.parent} is not writable: cannot create the lock {path}: "
                          f"{exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for %s (%s): another deploy, promotion or rollback holds it", what, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        depth[key] = 1
        try:
            yield path
        finally:
            depth.pop(key, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def model_lock(model_name: str) -> contextlib.AbstractContextManager[Path]:
    """The lock of ``model_name``'s deploys, promotions and rollbacks (see the module docstring)."""
    return file_lock(lock_path(model_name), f"the deploy lock of {model_name}")


def config_lock() -> contextlib.AbstractContextManager[Path]:
    """The lock of ``serving/models.config``'s rewrite (every model's deploys share that file)."""
    return file_lock(paths.serving_base() / CONFIG_LOCK_FILE, "the models.config lock")
