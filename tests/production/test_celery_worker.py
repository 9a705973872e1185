"""The Celery workers' preload (pipeline/celery_worker.py): Airflow's settings kept, the stage imports loaded on
the worker's ``import_modules`` signal, and a process forked after them trains as a fresh one would (each task is
such a fork). Needs the production extras (celery, Airflow's Celery provider): run by ``make test-production``."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("airflow.providers.celery", reason="the production extras (docker/requirements-prod.txt)")


def test_the_config_is_airflows_own_and_the_preload_is_connected():
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
    from celery.signals import import_modules

    from pipeline import celery_worker

    assert celery_worker.CELERY_CONFIG is DEFAULT_CELERY_CONFIG
    receivers = [ref() for _, ref in import_modules.receivers]
    assert celery_worker._preload_stage_imports in receivers


def test_a_task_forked_after_the_preload_trains():
    # A fresh interpreter: this one may have run TensorFlow ops already, and forking after those is not the case
    # under test (the worker never runs any).
    code = textwrap.dedent("""
        import os, sys
        from celery.signals import import_modules
        import pipeline.celery_worker
        import_modules.send(sender=None)  # what the worker does at its start
        assert {"tensorflow", "keras", "mlflow", "pipeline.tasks"} <= set(sys.modules)
        pid = os.fork()
        if pid == 0:
            import keras, numpy as np
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
            model.compile("adam", "mse")
            history = model.fit(np.random.rand(128, 4), np.random.rand(128, 1), epochs=3, verbose=0)
            os._exit(0 if len(history.history["loss"]) == 3 else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "the stage tasks' imports loaded in" in proc.stdout
