"""A SIGINT or SIGTERM that lands in database code is held until that code returns (``pipeline.commands.stopping``).

Raised between a transaction's statements and its commit, the interrupt left SQLite's write lock held while its
traceback kept the connection, and every later MLflow write (the stage's run ended FAILED, the epochs flushed)
waited out MLflow's 20 s busy timeout and failed: the interrupted ``pipeline train`` ran on for over a minute.
Here the signal is sent from inside MLflow's own write, on a real SQLite store, at the point it hit.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import time

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from pipeline.commands import stopping as command


@pytest.fixture
def store(tmp_path):
    import mlflow

    db = tmp_path / "mlflow.db"
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    run = client.create_run(client.create_experiment("held"))
    return db, client, run.info.run_id


def _signal_inside_the_metrics_insert(sig: int):
    """A SQLAlchemy listener sending ``sig`` to this process right after the metrics INSERT ran, before its
    commit: the transaction holds SQLite's write lock then."""
    sent = []

    def after_execute(conn, cursor, statement, parameters, context, executemany):
        if not sent and statement.lstrip().upper().startswith("INSERT INTO METRICS"):
            sent.append(statement)
            os.kill(os.getpid(), sig)

    event.listen(Engine, "after_cursor_execute", after_execute)
    return sent, lambda: event.remove(Engine, "after_cursor_execute", after_execute)


def _locked(db) -> bool:
    """Whether another connection would have to wait for SQLite's write lock (no waiting here: timeout 0)."""
    conn = sqlite3.connect(db, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.rollback()
        return False
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return True
    finally:
        conn.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_an_interrupt_inside_an_mlflow_write_is_raised_after_its_commit(store, sig):
    from mlflow.entities import Metric

    db, client, run_id = store
    sent, stop_listening = _signal_inside_the_metrics_insert(sig)
    try:
        with command.stop_on_signals():
            with pytest.raises(command.Interrupted) as interrupted:  # kept, as Airflow keeps a task's error
                client.log_batch(run_id, metrics=[Metric("loss", 0.5, 0, step) for step in range(3)])
                for _ in range(1000):  # the held interrupt comes within RECHECK_S of the write's end
                    time.sleep(0.01)
    finally:
        stop_listening()
    assert sent, "the listener saw the metrics INSERT"
    assert interrupted.value.signum == sig
    assert not _locked(db), "the write lock was released"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0, 1, 2]  # the write committed
    client.set_terminated(run_id, "FAILED")  # as a task's clean-up does next
    assert client.get_run(run_id).info.status == "FAILED"


def test_an_interrupt_outside_held_code_is_raised_where_it_lands():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}  # SIG_IGN for
    # SIGINT in a job a non-interactive shell started in the background
    with command.stop_on_signals():
        with pytest.raises(command.Interrupted) as interrupted:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                time.sleep(0.01)
    assert interrupted.value.signum == signal.SIGINT
    assert {s: signal.getsignal(s) for s in before} == before  # the previous handlers are back


def test_a_held_interrupt_waits_for_the_held_code_and_a_slow_stop_dumps_the_stacks(monkeypatch, capfd):
    """Held code (here a module named as held) finishes its work, the interrupt comes right after; a stop still
    going after ``SLOW_STOP_S`` writes every thread's stack to stderr, which is the log file of a command."""
    import threading

    region = {"__name__": "held_region_for_test"}
    exec("def work(seconds, done):\n    import time\n    time.sleep(seconds)\n    done.append(True)\n", region)
    monkeypatch.setattr(command, "_HELD_MODULES", (*command._HELD_MODULES, "held_region_for_test"))
    monkeypatch.setattr(command, "SLOW_STOP_S", 0.2)
    done: list[bool] = []
    with command.stop_on_signals():
        with pytest.raises(command.Interrupted):
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
            region["work"](1.0, done)  # pokes every RECHECK_S meanwhile: the sleep goes on through each
            assert done == [True]
            for _ in range(1000):
                time.sleep(0.01)
    assert done == [True], "the held work ran to its end"
    err = capfd.readouterr().err
    assert "Timeout (0:00:00.2" in err and "in work" in err, err[-3000:]  # faulthandler's dump, the held frame
