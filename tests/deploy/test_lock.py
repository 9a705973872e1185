"""Tests of pipeline.deploy.lock: one deploy, promotion or rollback of a model at a time, across threads and
processes; and a deploy holding the lock for its whole course, so a rollback waits for it and sees its result."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

import pytest
from deploy_helpers import MODEL

from pipeline import paths
from pipeline.deploy import lock

WAIT_S = 120  # only bounds a broken test; nothing is asserted about how long anything takes


class _Waiting(logging.Handler):
    """Sets ``event`` when the lock reports that a caller waits for it (the lock was contended)."""

    def __init__(self):
        super().__init__()
        self.event = threading.Event()

    def emit(self, record):
        if "waiting for" in record.getMessage():
            self.event.set()


@pytest.fixture
def waiting():
    handler = _Waiting()
    logger = logging.getLogger(lock.__name__)
    logger.addHandler(handler)
    try:
        yield handler.event
    finally:
        logger.removeHandler(handler)


def test_a_second_thread_waits_for_the_lock(pipeline_home, waiting):
    order: list[str] = []
    release = threading.Event()
    first_holds = threading.Event()

    def first():
        with lock.model_lock(MODEL):
            order.append("first in")
            first_holds.set()
            release.wait(WAIT_S)
            order.append("first out")

    def second():
        with lock.model_lock(MODEL):
            order.append("second in")

    threads = [threading.Thread(target=first)]
    threads[0].start()
    assert first_holds.wait(WAIT_S)
    threads.append(threading.Thread(target=second))
    threads[1].start()
    assert waiting.wait(WAIT_S), "the second thread found the lock taken"
    assert order == ["first in"], "and waits while the first holds it"
    release.set()
    for t in threads:
        t.join(WAIT_S)
    assert order == ["first in", "first out", "second in"]


def test_the_lock_is_reentrant_in_a_thread_and_other_models_do_not_wait(pipeline_home, waiting):
    with lock.model_lock(MODEL):
        with lock.model_lock(MODEL):  # a deploy moving the aliases under the lock it holds
            with lock.model_lock("iris"):
                pass
    assert not waiting.is_set()
    assert (paths.serving_dir(MODEL) / lock.LOCK_FILE).read_bytes() == b"", "the lock file is never written"


def test_another_process_holding_the_lock_makes_this_one_wait(pipeline_home, waiting):
    code = ("import sys\nfrom pipeline.deploy import lock\n"
            f"with lock.model_lock({MODEL!r}):\n    print('held', flush=True)\n    sys.stdin.readline()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=paths.child_environ(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    acquired, done = threading.Event(), threading.Event()

    def take():
        with lock.model_lock(MODEL):
            acquired.set()
            done.wait(WAIT_S)

    thread = threading.Thread(target=take)
    try:
        assert proc.stdout.readline().strip() == "held"
        thread.start()
        assert waiting.wait(WAIT_S) and not acquired.is_set()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert acquired.wait(WAIT_S), "acquired once the other process let go"
    finally:
        done.set()
        if thread.is_alive():
            thread.join(WAIT_S)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_rollback_waits_for_a_deploy_in_progress_and_sees_its_result(reg, pipeline_home, templates, monkeypatch,
                                                                      waiting):
    """The deploy holds the lock from its first look at the disk to its last alias move: a rollback started while
    the candidate is being checked runs after it, and rolls back from the new champion."""
    from pipeline.config import DeployConfig
    from pipeline.deploy import rollback, stage

    v1 = reg.place(templates["v1"], champion=-1)
    v2, staging, _ = reg.export(templates["v2"], answers=2)
    checking, release = threading.Event(), threading.Event()

    def slow_checks(*args, **kwargs):  # the sandbox checks, replaced: this test is about the lock
        checking.set()
        release.wait(WAIT_S)
        return {"server": "test"}

    monkeypatch.setattr(stage, "validate_serving", slow_checks)
    results: dict[str, object] = {}

    def run(name, fn):
        try:
            results[name] = fn()
        except Exception as exc:  # recorded, asserted below
            results[name] = exc

    deploying = threading.Thread(target=run, args=("deploy", lambda: stage.deploy_version(
        stage.candidate_from_export(MODEL, v2, staging), DeployConfig(), blessed=True, by="test:deploy")))
    deploying.start()
    assert checking.wait(WAIT_S)
    rolling = threading.Thread(target=run, args=("rollback", lambda: rollback(MODEL, DeployConfig(), by="test:rb")))
    rolling.start()
    assert waiting.wait(WAIT_S), "the rollback found the model locked by the deploy"
    assert "rollback" not in results and reg.aliases() == {"champion": v1}
    release.set()
    deploying.join(WAIT_S)
    rolling.join(WAIT_S)
    assert not isinstance(results["deploy"], Exception), results["deploy"]
    assert not isinstance(results["rollback"], Exception), results["rollback"]
    assert results["deploy"]["aliases"] == {"champion": v2, "previous": v1}
    assert reg.aliases() == {"champion": v1, "previous": v2}, "rolled back from the version the deploy published"
