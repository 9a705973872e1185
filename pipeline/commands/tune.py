"""``pipeline tune``: run the ``tuning_pipeline`` DAG through Airflow on the embedded defaults.

It runs as ``pipeline train`` runs ``training_pipeline``, with the same machinery (:mod:`pipeline.commands.train`).

The trials of a round run one after another here (``dag.test`` runs one task at a time); on an Airflow with a
LocalExecutor or Celery workers the mapped trial tasks run in parallel. Exit status 0 only if the DAG run
succeeded; 2 when the config is refused before Airflow starts (no ``tuning:`` section, a bad search space).
"""
from __future__ import annotations

import argparse
import json
import sys

DAG_ID = "tuning_pipeline"


def parse_args(argv: list[str]) -> argparse.Namespace:
    from pipeline.commands.train import add_run_arguments

    p = argparse.ArgumentParser(prog="pipeline tune", description=__doc__.splitlines()[0])
    add_run_arguments(p, "YAML pipeline config with a tuning: section (conf/examples/penguins_tuning.yaml)")
    return p.parse_args(argv)


def tune_problem(conf: dict) -> str | None:
    """Why the run of ``conf`` would fail at once (``pipeline.preflight.train_problem``, and a config without a
    ``tuning:`` section), or None."""
    from pipeline.preflight import train_problem
    from pipeline.tasks import resolve_run_config

    problem = train_problem(conf)
    if problem is None and resolve_run_config(conf).tuning is None:
        problem = "the config has no tuning: section (see conf/examples/penguins_tuning.yaml)"
    return problem


def main(argv: list[str] | None = None) -> int:
    """``pipeline tune``: 0 when the DAG run succeeded, 1 when it failed, 2 when the config or the source is
    refused before Airflow starts, 130 or 143 when SIGINT or SIGTERM stopped it (as ``pipeline train``)."""
    from pipeline.commands.train import run_command

    return run_command("tune", DAG_ID, parse_args(list(argv or [])), tune_problem, before_report=print_study)


def print_study(dag_run) -> None:
    """The study's outcome (the ``best`` task's result), before the lines ``pipeline train`` prints."""
    from pipeline.commands.train import summarize

    best = summarize(dag_run).get("best") or {}
    if best:
        print(f"\nStudy:            {best['trials']}")
        print(f"Best trial:       {best['best_trial']} ({best['objective']} {best['best_value']:.4f} on validation)")
        print(f"Best parameters:  {json.dumps(best['overrides'])}")


if __name__ == "__main__":
    from pipeline.cli import exit_now

    exit_now(main(sys.argv[1:]))
