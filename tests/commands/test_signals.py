"""SIGINT and SIGTERM stop the command line (issue 15): ``pipeline train`` at three points (ingest, the middle of
the fit, deploy), a second Ctrl-C at once, and ``pipeline airflow`` with every Airflow component.

Each run is ``pipeline train`` in a session of its own, as a user runs it; the signal goes to its process only,
as ``kill``, ``timeout``, a CI job's cancel or a container stop send it. Asserted: the exit status (130, 143), the
time to exit after the signal (a deadline, not a benchmark), that no process it started is left, and that what
is served (``models.config``, the version directories) and the registry's aliases are what they were. The runs
share one PIPELINE_HOME, trained once first so that a champion is served; each later run, after interrupted
ones, runs its stages normally up to its signal.
"""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
DEADLINE_S = 60  # to exit after the signal; measured 0.4-5 s on 2 shared cores (docs/command_line.md)
MODEL = "penguins"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PIPELINE_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}
    for var in ("AIRFLOW_HOME", "MLFLOW_TRACKING_URI", "PIPELINE_SERVING_BASE"):
        env.pop(var, None)
    return env


class Command:
    """A ``pipeline`` command in its own session: its output read line by line, every process under it
    remembered while it runs (processes in sessions of their own included), always stopped at the end."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None):
        self.home = home
        self.proc = subprocess.Popen([str(BIN / "pipeline"), *args], env=env or _env(home), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.sent_at: float | None = None
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._seen: dict[int, float] = {}  # pid -> create time: the processes it started
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def _watch(self) -> None:
        while self.proc.poll() is None:
            try:
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    self._seen.setdefault(child.pid, child.create_time())
            except psutil.Error:
                pass
            time.sleep(0.1)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def until(self, pattern: str, timeout: float = 600) -> str:
        """Read until a line matches ``pattern``; fails if the command ends or the timeout passes first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} within {timeout} s:\n{self.output[-5000:]}")
            if line is None:
                pytest.fail(f"the command ended (status {self.proc.wait()}) before {pattern!r}:\n{self.output[-5000:]}")
            if re.search(pattern, line):
                return line

    def children(self) -> list[int]:
        return list(self._seen)

    def send(self, sig: int) -> None:
        self.sent_at = self.sent_at or time.monotonic()
        os.kill(self.proc.pid, sig)

    def wait(self) -> tuple[int, float]:
        """The exit status, and the seconds from the first signal to the exit."""
        try:
            code = self.proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {DEADLINE_S} s after the signal:\n{self.output[-5000:]}\n{self.log_tail()}")
        took = time.monotonic() - self.sent_at
        self._drain()
        return code, took

    def log_tail(self, chars: int = 12000) -> str:
        """The end of the command's log file (a stop that hangs writes every thread's stack there after
        ``pipeline.commands.stopping.SLOW_STOP_S``)."""
        match = re.search(r"^logs:\s+(\S+)", self.output, re.MULTILINE)
        path = Path(match.group(1)) if match else None
        if path is None or not path.is_file():
            return "(no log file)"
        return f"the log's end ({path}):\n{path.read_text(errors='replace')[-chars:]}"

    def finish(self, timeout: float) -> int:
        """Wait for the command to end by itself; its exit status."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after {timeout} s:\n{self.output[-5000:]}")
        self._drain()
        return code

    def _drain(self) -> None:
        """Wait for the end of the output (a process left holding it open is reported by :meth:`left`)."""
        deadline = time.monotonic() + 10
        try:
            while self._queue.get(timeout=max(0.0, deadline - time.monotonic())) is not None:
                pass
        except queue.Empty:
            pass

    def left(self) -> list[str]:
        """The processes it started that still run, and any other process with its PIPELINE_HOME."""
        left = []
        mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}  # this test's own environment says it too
        for proc in psutil.process_iter(["pid", "create_time", "status", "cmdline", "environ"]):
            info = proc.info
            if info["status"] == psutil.STATUS_ZOMBIE or info["pid"] in mine:  # a zombie has exited
                continue
            ours = self._seen.get(info["pid"]) == info["create_time"]
            if ours or (info["environ"] or {}).get("PIPELINE_HOME") == str(self.home):
                left.append(f"{info['pid']} {' '.join(info['cmdline'] or [])[:200]}")
        return left

    def close(self) -> None:
        for pid, created in list(self._seen.items()) + [(self.proc.pid, None)]:
            try:
                proc = psutil.Process(pid)
                if created is None or proc.create_time() == created:
                    proc.kill()
            except psutil.Error:
                pass
        self.proc.wait()


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory):
    """A PIPELINE_HOME where one full ``pipeline train`` published penguins version 1 as the champion."""
    home = tmp_path_factory.mktemp("signals") / "home"
    run = Command(home, "train")
    try:
        code = run.finish(timeout=900)
    finally:
        run.close()
    assert code == 0 and "Champion:         version 1" in run.output, run.output[-5000:]
    return home


def served(home: Path, monkeypatch) -> dict:
    """What a server of this home serves, and what the registry says should be: ``models.config``, the version
    directories and their files, and the model's aliases."""
    import mlflow

    from pipeline import paths

    serving = home / "serving"
    model_dir = serving / MODEL
    versions = {p.name: sorted(str(f.relative_to(p)) for f in p.rglob("*"))
                for p in model_dir.iterdir() if p.name.isdigit()} if model_dir.is_dir() else {}
    config = serving / "models.config"
    monkeypatch.setenv("PIPELINE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    aliases = dict(mlflow.MlflowClient(paths.mlflow_tracking_uri()).get_registered_model(MODEL).aliases)
    return {"models.config": config.read_text() if config.exists() else None, "versions": versions,
            "aliases": aliases}


def _half_written(home: Path) -> list[str]:
    """The deploy stage's temporary copies left beside the version directories (a retry's staging copy of the
    export is not one: it is kept on purpose, and no server looks at hidden directories)."""
    model_dir = home / "serving" / MODEL
    return sorted(p.name for p in model_dir.glob(".deploy-*")) if model_dir.is_dir() else []


def _dag_run(home: Path, output: str) -> tuple[str, str, dict[str, str], str | None]:
    """The interrupted DAG run as Airflow's database has it: run id, state, task states (in the DAG's order), its
    note."""
    from pipeline.tasks import STAGES

    match = re.search(r"^DAG run:\s+(\S+) \((.*)\)$", output, re.MULTILINE)
    assert match, output[-3000:]
    run_id = match.group(1)
    with sqlite3.connect(home / "airflow" / "airflow.db") as db:
        (state, run_pk), = db.execute("select state, id from dag_run where run_id = ?", (run_id,)).fetchall()
        states = dict(db.execute("select task_id, state from task_instance where run_id = ?", (run_id,)).fetchall())
        note = db.execute("select content from dag_run_note where dag_run_id = ?", (run_pk,)).fetchone()
    return run_id, state, {t: states[t] for t in STAGES}, note[0] if note else None


# where the signal is sent: the first line of the plain view at that point of the run
POINTS = {
    "ingest": r"^… ingest\s+running",
    "fit": r"^  train: epoch 2/",  # two epochs done, 78 planned
    "deploy": r"^… deploy\s+running",
}


@pytest.mark.parametrize("point,sig", [(p, s) for p in POINTS for s in (signal.SIGINT, signal.SIGTERM)],
                         ids=lambda v: v.name if isinstance(v, signal.Signals) else v)
def test_a_signal_stops_pipeline_train(point, sig, trained_home, monkeypatch):
    before = served(trained_home, monkeypatch)
    run = Command(trained_home, "train")
    try:
        run.until(POINTS[point])
        run.send(sig)
        code, took = run.wait()
        out = run.output
        assert code == 128 + sig, out[-5000:]
        assert took < DEADLINE_S
        print(f"{point} {sig.name}: exited {took:.1f} s after the signal")
        assert run.left() == [], f"left running: {run.left()}"
    finally:
        run.close()

    task = "train" if point == "fit" else point
    assert f"(failed, interrupted by {sig.name})" in out
    assert f"Interrupted:      by {sig.name} during {task}; the DAG run ended failed" in out
    run_id, state, tasks, note = _dag_run(trained_home, out)
    assert state == "failed" and tasks[task] == "failed", tasks
    assert note and f"interrupted by {sig.name} during {task}" in note
    stages = list(tasks)
    assert all(tasks[t] == "success" for t in stages[:stages.index(task)]), tasks  # as a normal run, up to there
    assert all(tasks[t] == "upstream_failed" for t in stages[stages.index(task) + 1:]), tasks

    assert served(trained_home, monkeypatch) == before, "the champion and the served versions are unchanged"
    assert _half_written(trained_home) == []
    if point == "deploy":
        assert "Champion:         version 1" in out and "Deployed:" not in out, out[-3000:]
    if point == "fit" and sig == signal.SIGTERM:
        _resumes_from_checkpoint(trained_home, run_id)


def _resumes_from_checkpoint(home: Path, run_id: str) -> None:
    """A retry of the interrupted train task resumes from the epochs its attempt completed: the train stage run
    again on the run's splits and encodings, in the run's training directory, as the retried task runs it."""
    import pandas as pd

    from pipeline import paths
    from pipeline.config import from_dict
    from pipeline.preprocess import PreprocessMeta
    from pipeline.train import train

    work = home / "runs" / paths.safe_key(run_id)
    done = json.loads((work / "train" / "backup" / "training_metadata.json").read_text())["epoch"]
    assert done >= 2, "the epochs completed before the signal are in the checkpoint"
    snapshot = json.loads((home / "data" / paths.safe_key(run_id) / "config.json").read_text())
    cfg = from_dict(snapshot["config"]).with_overrides({"training.epochs": done + 1})  # one epoch more
    result = train(pd.read_parquet(work / "split" / "train.parquet"), pd.read_parquet(work / "split" / "val.parquet"),
                   PreprocessMeta.load(work / "preprocess" / "meta.json"), cfg.model, cfg.training, work / "train",
                   seed=cfg.training.seed)
    assert result.resumed_from_epoch == done and result.epochs_run == done + 1


def test_a_second_ctrl_c_exits_at_once(trained_home, monkeypatch):
    before = served(trained_home, monkeypatch)
    run = Command(trained_home, "train")
    try:
        run.until(POINTS["fit"])
        run.send(signal.SIGINT)
        time.sleep(0.05)  # the first one is being handled: stopping the task, ending the DAG run
        run.send(signal.SIGINT)
        code, took = run.wait()
        assert code == 130, run.output[-5000:]
        print(f"second SIGINT: exited {took:.1f} s after the first")
        assert took < DEADLINE_S
        assert run.left() == [], f"left running: {run.left()}"
    finally:
        run.close()
    assert served(trained_home, monkeypatch) == before
    assert _half_written(trained_home) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_pipeline_airflow_stops_every_component(trained_home):
    """SIGTERM stops the scheduler, DAG processor, triggerer and UI it started; SIGINT while they stop kills
    them at once (issue 15: SIGTERM and then SIGINT were both ignored)."""
    env = _env(trained_home, AIRFLOW__API__PORT=str(_free_port()), PIPELINE_MONITOR_SCHEDULE="none",
               AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(_free_port()),
               AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(_free_port()))
    run = Command(trained_home, "airflow", env=env)
    try:
        deadline = time.monotonic() + 300
        while not {"scheduler", "triggerer", "dag-processor"} <= {
                word for pid in run.children() for word in _cmdline(pid)}:
            assert run.proc.poll() is None and time.monotonic() < deadline, run.output[-5000:]
            time.sleep(0.5)
        run.send(signal.SIGTERM)
        run.until(r"pipeline airflow: SIGTERM received: stopping Airflow", timeout=DEADLINE_S)
        run.send(signal.SIGINT)
        code, took = run.wait()
        assert code == 130, run.output[-5000:]
        print(f"pipeline airflow: exited {took:.1f} s after SIGTERM ({len(run.children())} processes under it)")
        assert run.left() == [], f"left running: {run.left()}"
    finally:
        run.close()


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []
