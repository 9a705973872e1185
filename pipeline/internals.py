"""The only place this project reaches into private parts of Airflow, Optuna and Python: two uses whose saving
is measured (docs/benchmarks.md, "Private APIs"), each with a fallback to the public path when the internal is not
what it was, and one that Optuna offers no public way to do. ``tests/unit/test_internals.py`` fails loudly when
one of them changes upstream, so an upgrade is noticed by a red test, not by a slow or silent fallback in production.

- :func:`newest_execution_api_only`: Airflow's in-process task execution API built for the newest API version
  only (Cadwyn internals); 4.0 s -> 0.6 s of every ``pipeline train``. Fallback: every version is built.
- :func:`exit_without_teardown`: ends a command after the atexit handlers, without finalizing every module
  TensorFlow, Airflow and MLflow loaded (``atexit._run_exitfuncs`` + ``os._exit``); 3-4 s after ``pipeline
  train`` has printed its summary. Fallback: ``sys.exit``.
- :func:`optuna_trial`: a live Optuna trial of a study opened in another process (a tuning DAG's trial task),
  from the study's storage and id (``Study._storage``, ``Study._study_id``): Optuna's public ``Trial(study,
  trial_id)`` needs the trial's id, which only the storage maps from its number. No fallback: without it a
  trial task cannot report its epochs to the pruner.

Everything else goes through public APIs: the DAG is imported from its file and run with ``DAG.test``, task
states and return values come from ``airflow.sdk``'s listener and ``RuntimeTaskInstance.xcom_pull``, and the
logged MLflow model is loaded back to check it answers (MLflow's private validator would have saved 0.13 s).
"""
from __future__ import annotations

import sys


def newest_execution_api_only() -> bool:
    """Make the task execution API that ``dag.test`` serves in this process build the routes of the newest API
    version only, the one its in-process client speaks; returns whether it applied.

    Airflow builds the routes and schemas of every API version it still supports (Cadwyn; 9 versions and 364
    routes in 3.3) on the first request, for clients of older Airflow releases that an in-process run never
    has: 4.0 s of every ``pipeline train`` against 0.6 s for the newest version alone (2-core machine). The
    newest version's routes are the current code's, unchanged; the routes kept only for older clients (marked
    ``only_exists_in_older_versions``) are left out. Applied only when the client's version is the newest one
    and nothing differs between it and the code's head version, and only in this process: the API server of a
    deployment (scheduler, workers) is not touched.
    """
    try:
        from cadwyn import HeadVersion, Version, VersionBundle
        from cadwyn.route_generation import _DELETED_ROUTE_TAG

        from airflow.api_fastapi.execution_api import routes, versions
        from airflow.sdk.api.datamodels._generated import API_VERSION

        bundle = versions.bundle
        newest = bundle.versions[0].value
        if str(newest) != API_VERSION or bundle.head_version.changes:
            return False
        router = routes.execution_api_router
        kept = [r for r in router.routes if _DELETED_ROUTE_TAG not in (getattr(r, "tags", None) or ())]
        versions.bundle = VersionBundle(HeadVersion(), Version(newest))
        router.routes[:] = kept
        return True
    except (ImportError, AttributeError, IndexError, TypeError, ValueError):
        return False


def exit_without_teardown(code: int) -> None:
    """End the process now, without finalizing every module TensorFlow, Airflow and MLflow loaded.

    That teardown took 3-4 s after ``pipeline train`` had printed its summary, and 1 s after the server had
    stopped (measured on a 2-core machine). By then everything is committed (Airflow's and MLflow's databases,
    model directories, the request log); the atexit handlers (log handlers, database pools) still run.
    """
    import atexit
    import os

    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if run_exitfuncs is None:
        sys.exit(code)
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def optuna_trial(study: "optuna.Study", number: int) -> "optuna.Trial":
    """The live trial ``number`` of ``study``, asked by another process: to report intermediate values to it
    and ask its pruner (``pipeline.tuning.study.trial_handle``)."""
    import optuna

    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)
