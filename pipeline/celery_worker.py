"""The Celery workers' configuration (``[celery] celery_config_options = pipeline.celery_worker.CELERY_CONFIG``):
Airflow's default Celery settings, unchanged, and what the stage tasks import loaded once per worker.

Every task a Celery worker runs is a process forked from it (Airflow's task supervisor forks the task runner).
A stage task imports TensorFlow, Keras, MLflow, pandas and pyarrow, which a fresh interpreter takes 6-13 s to do
on a 2-core machine: nine times per run when each task process imports them anew. Imported in the worker before
it forks, they are inherited ready (copy-on-write). Airflow's Celery integration does the same for its own heavy
modules, on the same Celery signal (``import_modules``, in the worker's main process before its pool starts).
Only imports: no TensorFlow op runs in the worker, so no thread pool or device state is created before the fork
(a forked child trains normally; tests/unit/test_celery_worker.py checks it). benchmarks/scheduled.py measures
the gain (docs/benchmarks.md).
"""
from __future__ import annotations

import contextlib
import time

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import import_modules

CELERY_CONFIG = DEFAULT_CELERY_CONFIG  # the same object: Airflow's settings, nothing overridden

STAGE_IMPORTS = ("tensorflow", "keras", "mlflow", "pandas", "pyarrow.parquet", "pipeline.tasks")


def preload() -> float:
    """Import what the stage tasks import; returns the seconds it took."""
    import importlib

    started = time.perf_counter()
    for name in STAGE_IMPORTS:
        with contextlib.suppress(ImportError):  # a worker without the ML stack still runs other DAGs' tasks
            importlib.import_module(name)
    return time.perf_counter() - started


@import_modules.connect
def _preload_stage_imports(*args, **kwargs) -> None:
    seconds = preload()
    print(f"pipeline.celery_worker: the stage tasks' imports loaded in {seconds:.1f} s", flush=True)
