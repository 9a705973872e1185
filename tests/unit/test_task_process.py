"""pipeline.task_process: a task called in a child process gives back its result, its exception (the same
type), its progress events; a child killed from outside fails the task by name; the parent's interruption stops
the child. Real child processes (`python -m pipeline.task_process`), with task functions from a module written
here."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from pipeline import progress, task_process
from pipeline.tasks import RunContext

TASKS = '''
import os, signal, time
from pipeline import progress
from pipeline.config import ConfigError


def ok(params, ctx, *upstream, **kw):
    progress.emit("epoch", epoch=1, logs={"loss": 0.5})
    return {"pid": os.getpid(), "params": params, "run_id": ctx.run_id, "upstream": list(upstream), "kw": kw,
            "child": os.environ.get("PIPELINE_TASK_PROCESS")}


def bad(params, ctx, *upstream, **kw):
    raise ConfigError("training.epochs: must be >= 1, got 0")


def killed(params, ctx, *upstream, **kw):
    os.kill(os.getpid(), signal.SIGKILL)


def slow(params, ctx, *upstream, **kw):
    with open(params["started"], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(300)
    with open(params["started"] + ".finished", "w") as f:
        f.write("ran to the end")
'''


@pytest.fixture
def tasks_module(tmp_path, monkeypatch):
    (tmp_path / "tp_tasks.py").write_text(TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    import importlib

    sys.modules.pop("tp_tasks", None)
    return importlib.import_module("tp_tasks")


CTX = RunContext("training_pipeline", "manual__2026-12-03", None)


def test_the_result_comes_back_from_another_process_with_its_events(tasks_module):
    events = []
    with progress.attached(events.append):
        out = task_process.run(tasks_module.ok, {"config": "x.yaml"}, CTX, ({"parent_run_id": "p"},), {"k": 1})
    assert out["pid"] != os.getpid() and out["child"] == "1"
    assert out["params"] == {"config": "x.yaml"} and out["run_id"] == CTX.run_id
    assert out["upstream"] == [{"parent_run_id": "p"}] and out["kw"] == {"k": 1}
    assert [(e["kind"], e["epoch"], e["logs"]) for e in events] == [("epoch", 1, {"loss": 0.5})]


def test_the_exception_is_raised_again_with_its_type(tasks_module):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="training.epochs: must be >= 1"):
        task_process.run(tasks_module.bad, {}, CTX, (), {})


def test_a_killed_child_fails_the_task_by_name(tasks_module):
    with pytest.raises(task_process.TaskProcessError, match="killed by SIGKILL .*out-of-memory"):
        task_process.run(tasks_module.killed, {}, CTX, (), {})


def test_an_interrupted_parent_stops_the_child(tasks_module, tmp_path):
    started = tmp_path / "started"
    main = threading.main_thread()
    assert threading.current_thread() is main
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever an earlier test left in place

    def interrupt():
        deadline = time.monotonic() + 240
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        signal.pthread_kill(main.ident, signal.SIGINT)  # a real SIGINT, to the thread waiting for the child

    threading.Thread(target=interrupt, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            task_process.run(tasks_module.slow, {"started": str(started)}, CTX, (), {})
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not (tmp_path / "started.finished").exists(), "the child was stopped, not waited for"
    pid = int(started.read_text())
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(pid, 0)


@pytest.mark.parametrize("mode, shared, expected", [("own", True, True), ("own", False, False),
                                                ("shared", True, False)])
def test_which_stages_go_to_a_process_of_their_own(monkeypatch, mode, shared, expected):
    monkeypatch.delenv(task_process.CHILD_ENV, raising=False)
    if shared:
        monkeypatch.setenv(task_process.SHARED_ENV, "1")
    else:  # an Airflow worker's process per task
        monkeypatch.delenv(task_process.SHARED_ENV, raising=False)
    assert task_process.wanted("train", mode) is expected
    assert task_process.wanted("ingest", mode) is False  # no TensorFlow there
    monkeypatch.setenv(task_process.CHILD_ENV, "1")
    assert task_process.wanted("train", mode) is False  # never a grandchild
