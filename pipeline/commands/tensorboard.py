"""``pipeline tensorboard``: TensorBoard on the training logs that ``training.tensorboard: true`` writes.

    pipeline tensorboard [RUN] [--port PORT] [--print-logdir]

``RUN`` is a directory of logs, an Airflow run id (the logs of its training, under the run's directory), or an
MLflow run id: the train stage's run, or the DAG run's run (its train stage is found), whose ``tensorboard``
artifact directory is downloaded under ``PIPELINE_HOME/tensorboard/<run id>`` first. Without ``RUN`` every run
under ``PIPELINE_HOME/runs`` is shown, side by side. TensorBoard listens on 127.0.0.1 only. Exit status 0 when
TensorBoard stopped normally, 1 when there are no logs or TensorBoard is not installed, 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

from pipeline import paths

HOST = "127.0.0.1"
DEFAULT_PORT = 6006


class NoLogs(LookupError):
    """No TensorBoard logs where ``RUN`` points."""


def _has_events(path: Path) -> bool:
    return path.is_dir() and any(path.rglob("events.out.tfevents.*"))


def _mlflow_logs(run_id: str) -> Path | None:
    """The ``tensorboard`` artifacts of MLflow run ``run_id`` (or of the train stage under it), downloaded."""
    from mlflow.exceptions import MlflowException

    from pipeline import tracking
    from pipeline.train import TENSORBOARD_DIR

    tracking.configure()
    client = tracking.client()
    try:
        client.get_run(run_id)
    except MlflowException:
        return None
    for candidate in (run_id, tracking.stage_run_id(run_id, "train")):
        if candidate and client.list_artifacts(candidate, TENSORBOARD_DIR):
            dst = paths.pipeline_home() / "tensorboard" / paths.safe_key(candidate)
            dst.mkdir(parents=True, exist_ok=True)
            import mlflow

            return Path(mlflow.artifacts.download_artifacts(run_id=candidate, artifact_path=TENSORBOARD_DIR,
                                                            dst_path=str(dst)))
    raise NoLogs(f"MLflow run {run_id!r} has no {TENSORBOARD_DIR!r} artifacts (was it trained with "
                 f"training.tensorboard: true?)")


def find_logdir(run: str | None) -> Path:
    """Where the logs of ``run`` are (see the module's docstring).

    Raises:
        NoLogs: nothing with TensorBoard event files was found for ``run``.
    """
    from pipeline.train import TENSORBOARD_DIR

    if run is None:
        root = paths.pipeline_home() / "runs"
        if not _has_events(root):
            raise NoLogs(f"no TensorBoard logs under {root} (train with training.tensorboard: true)")
        return root
    given = Path(run).expanduser()
    if given.is_dir():
        if not _has_events(given):
            raise NoLogs(f"no TensorBoard event files under {given}")
        return given
    in_run_dir = paths.run_dir(run) / "train" / TENSORBOARD_DIR
    if _has_events(in_run_dir):
        return in_run_dir
    downloaded = _mlflow_logs(run)
    if downloaded is None:
        raise NoLogs(f"{run!r} is neither a directory, nor a run under {paths.pipeline_home() / 'runs'} with "
                     f"TensorBoard logs, nor an MLflow run")
    return downloaded


def command(logdir: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", HOST, "--port", str(port)]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pipeline tensorboard", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", help="a log directory, an Airflow run id or an MLflow run id (default: all runs)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on {HOST} (default {DEFAULT_PORT})")
    ap.add_argument("--print-logdir", action="store_true", help="print the log directory and exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"pipeline tensorboard: --port must be 1..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        logdir = find_logdir(args.run)
    except NoLogs as exc:
        print(f"pipeline tensorboard: {exc}", file=sys.stderr)
        return 1
    if args.print_logdir:
        print(logdir)
        return 0
    if importlib.util.find_spec("tensorboard") is None:
        print(f"pipeline tensorboard: the tensorboard package is not installed in this environment "
              f"(pip install tensorboard); the logs are in {logdir}", file=sys.stderr)
        return 1
    print(f"TensorBoard on {logdir}: http://{HOST}:{args.port}", flush=True)
    try:
        return subprocess.call(command(logdir, args.port))
    except KeyboardInterrupt:
        return 130
