"""Fixtures of the end-to-end tests: `pipeline train` run as a user would, in a subprocess of its own
process group that is always stopped."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _run_train(home: Path, *args: str, timeout: int = 900, command: str = "train") -> subprocess.CompletedProcess:
    env = {**os.environ, "PIPELINE_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for var in ("AIRFLOW_HOME", "MLFLOW_TRACKING_URI", "PIPELINE_SERVING_BASE"):
        env.pop(var, None)
    proc = subprocess.Popen([str(BIN / "pipeline"), command, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # stop the whole group we started, Airflow's children included
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


@pytest.fixture(scope="session")
def run_train():
    """``run_train(home, *args)``: `pipeline train *args` with PIPELINE_HOME=home, as a CompletedProcess
    (``command="tune"``: `pipeline tune *args`)."""
    return _run_train
