"""The ``pipeline`` command: ``pipeline train``, ``pipeline serve``, ...

Each sub-command lives in the module that owns it; this file only dispatches, so that ``pipeline serve``
does not pay for importing Airflow and ``pipeline train`` does not pay for the server.
"""
from __future__ import annotations

import importlib
import sys

# sub-command -> (module, function taking argv and returning an exit code, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("pipeline.commands.train", "main", "run the training_pipeline DAG through Airflow"),
    "tune": ("pipeline.commands.tune", "main", "run the tuning_pipeline DAG: an Optuna study, then the best model"),
    "trigger": ("pipeline.commands.trigger", "main", "run training_pipeline on a running Airflow over its REST API"),
    "serve": ("pipeline.serving.__main__", "main", "TensorFlow Serving-compatible model server"),
    "monitor": ("pipeline.commands.monitor", "main", "drift of served traffic against the training data"),
    "airflow": ("pipeline.commands.airflow_ui", "main", "Airflow scheduler and UI on the embedded defaults"),
    "deploy": ("pipeline.commands.deploy", "deploy_main", "validate a blessed version in a sandbox and publish it"),
    "promote": ("pipeline.commands.deploy", "promote_main", "promote the canary (challenger) to stable (champion)"),
    "rollback": ("pipeline.commands.deploy", "rollback_main", "move the champion back to the previous version"),
    "lineage": ("pipeline.commands.deploy", "lineage_main", "where a served version comes from"),
    "tensorboard": ("pipeline.commands.tensorboard", "main", "TensorBoard on a run's training logs (127.0.0.1)"),
    "retention": ("pipeline.retention", "main", "remove the directories of old runs that no served version needs"),
    "generate": ("pipeline.generate", "main", "write a synthetic table of mixed feature kinds (CSV, Parquet or shards)"),
}

# Commands whose process ends without interpreter teardown once they return (see exit_now).
FAST_EXIT = {"train", "tune", "serve"}
# The exit statuses of a command that SIGINT or SIGTERM stopped (128 + the signal): it ends as fast, whichever it is.
INTERRUPTED = {130, 143}


def exit_now(code: int) -> None:
    """End the process now, without interpreter teardown (``pipeline.internals.exit_without_teardown``)."""
    from pipeline.internals import exit_without_teardown

    exit_without_teardown(code)


def _usage() -> str:
    lines = ["usage: pipeline <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"pipeline: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    code = int(getattr(importlib.import_module(module), func)(rest) or 0)
    if from_command_line and (name in FAST_EXIT or code in INTERRUPTED):
        exit_now(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
