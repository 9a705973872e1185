"""MLflow helpers: one parent run per DAG run, one nested run per stage, reused when a task is retried.

The embedded default is a SQLite store with local artifacts under ``PIPELINE_HOME/mlflow``; set
``MLFLOW_TRACKING_URI`` to use a tracking server. ``python -m pipeline.tracking ui`` opens the UI on that store.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from pipeline import paths

if TYPE_CHECKING:
    import mlflow

TAG_DAG_ID, TAG_RUN_ID, TAG_LOGICAL_DATE = "airflow.dag_id", "airflow.run_id", "airflow.logical_date"
TAG_STAGE, TAG_PARENT = "pipeline.stage", "mlflow.parentRunId"
# Without this tag the MLflow 3 UI opens a new experiment on its GenAI pages instead of the runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def configure() -> str:
    """Point MLflow at the configured store (creating the embedded one's directory) and return its URI."""
    import mlflow

    uri = paths.mlflow_tracking_uri()
    if uri.startswith("sqlite:///"):
        paths.mlflow_dir().mkdir(parents=True, exist_ok=True)
    # mlflow.set_*_uri also write MLFLOW_*_URI into os.environ; left there, the first store a process used
    # would look like the user's override forever after (a later PIPELINE_HOME would be ignored).
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return uri


def start_store_init() -> subprocess.Popen | None:
    """Create the embedded store (SQLite tables, MLflow's migrations) in a background process when it does
    not exist yet; None otherwise, or when an empty store was copied from its template
    (``pipeline.db_templates``). ``pipeline train`` runs it beside Airflow's own database migration, so that
    a first run pays for both at once; :func:`finish_store_init` waits for it."""
    from pipeline import db_templates

    uri = paths.mlflow_tracking_uri()
    db = paths.mlflow_dir() / "mlflow.db"
    if uri != f"sqlite:///{db}" or db.exists() or db_templates.restore("mlflow", db):
        return None
    paths.mlflow_dir().mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", "from pipeline import tracking; tracking.client().search_experiments()"],
                            env=paths.child_environ(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish_store_init(proc: subprocess.Popen | None) -> None:
    """Wait for :func:`start_store_init` and keep the new store as the template. Its failure is not raised:
    the tasks open (and if need be create) the store themselves, and report what goes wrong."""
    from pipeline import db_templates

    if proc is not None and proc.wait() == 0:
        db_templates.save("mlflow", paths.mlflow_dir() / "mlflow.db")


def client() -> "mlflow.MlflowClient":
    import mlflow

    configure()
    return mlflow.MlflowClient()


def experiment_id(name: str) -> str:
    """The id of experiment ``name``, created (with local artifacts and the UI tag) if missing."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is None:
        location = None
        if paths.mlflow_tracking_uri().startswith("sqlite:///"):
            location = f"{paths.mlflow_artifact_root()}/{name}"
        try:
            return c.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except Exception:  # created concurrently by another task: use it
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND["mlflow.experimentKind"]:
        c.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", EXPERIMENT_KIND["mlflow.experimentKind"])
    return exp.experiment_id


def _find_run(exp_id: str, filters: Mapping[str, str]) -> str | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in filters.items())
    runs = client().search_runs([exp_id], filter_string=query, max_results=1, order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def parent_run(exp_name: str, dag_id: str, run_id: str, logical_date: str | None = None,
               params: Mapping[str, Any] | None = None) -> str:
    """The MLflow run of this DAG run: found by its tags, or created. Idempotent across task retries."""
    exp_id = experiment_id(exp_name)
    found = _find_run(exp_id, {TAG_DAG_ID: dag_id, TAG_RUN_ID: run_id, "pipeline.kind": "dag_run"})
    if found:
        return found
    tags = {TAG_DAG_ID: dag_id, TAG_RUN_ID: run_id, "pipeline.kind": "dag_run",
            TAG_LOGICAL_DATE: logical_date or "", "mlflow.source.git.commit": git_commit() or ""}
    run = client().create_run(exp_id, run_name=f"{dag_id} {run_id}", tags=tags)
    if params:
        from mlflow.entities import Param

        client().log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


@contextlib.contextmanager
def stage_run(parent_id: str, stage: str) -> Iterator["mlflow.ActiveRun"]:
    """Activate the nested run of ``stage`` under ``parent_id`` (the same run again when a task is retried).

    A failure marks the stage run and the parent run FAILED; the exception propagates so the task fails.
    """
    import mlflow

    c = client()
    parent = c.get_run(parent_id)
    exp_id = parent.info.experiment_id
    child = _find_run(exp_id, {TAG_PARENT: parent_id, TAG_STAGE: stage})
    if child is None:
        tags = {TAG_PARENT: parent_id, TAG_STAGE: stage, TAG_DAG_ID: parent.data.tags.get(TAG_DAG_ID, ""),
                TAG_RUN_ID: parent.data.tags.get(TAG_RUN_ID, "")}
        child = c.create_run(exp_id, run_name=stage, tags=tags).info.run_id
    if parent.info.status != "RUNNING":
        c.update_run(parent_id, status="RUNNING")
    try:
        with mlflow.start_run(run_id=child) as run:
            try:
                yield run
            except BaseException as exc:
                # The reason is kept on the stage run, where a user looking at the failed run finds it.
                mlflow.set_tag("pipeline.error", f"{type(exc).__name__}: {exc}"[:5000])
                raise
    except BaseException:
        c.set_terminated(parent_id, "FAILED")
        raise


def finish_parent(parent_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(parent_id, status)


def stage_run_id(parent_id: str, stage: str) -> str | None:
    """The nested run of ``stage`` under the DAG run's run ``parent_id``, if that stage has run."""
    return _find_run(client().get_run(parent_id).info.experiment_id, {TAG_PARENT: parent_id, TAG_STAGE: stage})


def stage_seconds(parent_id: str, stage: str) -> float | None:
    """How long the (finished) nested run of ``stage`` took, in seconds: for the train stage, the training
    time shown on the DAG run's run."""
    run_id = stage_run_id(parent_id, stage)
    info = client().get_run(run_id).info if run_id else None
    if info is None or not info.end_time or not info.start_time:
        return None
    return (info.end_time - info.start_time) / 1000


# ------------------------------------------------------------------------------ comparing models in the UI
# docs/mlflow_ui.md: the Models tab compares logged models by the metrics logged with their model_id on a
# dataset; the runs table compares DAG runs by what their parent run carries.
TEST_CONTEXT = "test"  # the dataset input context of the test split on the evaluate run
GATE_TAGS = ("blessed", "gate.decision", "gate.metric", "gate.reason")
# An experiment tag with this prefix is a saved view of the runs table (the UI's "Views" menu); the link
# ``?viewStateShareKey=<key>`` opens it.
SAVED_VIEW_PREFIX = "mlflow.sharedViewState."
RUNS_VIEW_KEY = "pipeline-dag-runs"


def logged_model_name(model_name: str, version: int | None = None) -> str:
    """The name of the logged model of a candidate of ``model_name``, with the version it is registered as.

    MLflow refuses ``/ : . % " '`` in logged model names; a served model name may contain ``.``."""
    base = "".join("_" if c in '/:.%"\'' else c for c in model_name)
    return f"{base}-v{version}" if version is not None else base


def test_dataset(frame: "Any", source: str, name: str, label: str | None, rows: int | None = None) -> "Any":
    """The test split as an MLflow dataset: the same rows give the same digest, so the candidate's and the
    champion's metrics on them share a column group in the Models tab. ``frame`` may be the split's first rows
    only (MLflow's digest reads no more than 10,000) with ``rows`` the split's size: the digest is then MLflow's
    digest of the whole split."""
    import mlflow

    digest = None
    if rows is not None and rows != len(frame):
        digest = split_digest(frame, rows)
    return mlflow.data.from_pandas(frame, source=source, name=f"{name}-test", digest=digest,
                                   targets=label if label in frame.columns else None)


def split_digest(head: "Any", rows: int) -> str:
    """MLflow's pandas digest (``mlflow.data.digest_utils.compute_pandas_digest``) of a table of ``rows`` rows
    whose first rows (at least 10,000 of them, or all) are ``head``."""
    import numpy as np
    import pandas as pd
    from mlflow.data.digest_utils import MAX_ROWS, get_normalized_md5_digest

    trimmed = head.head(MAX_ROWS)
    strings = trimmed.columns[(trimmed.map(type) == str).all(0)]
    trimmed = trimmed[strings.union(trimmed.select_dtypes(include=[np.number]).columns)]
    return get_normalized_md5_digest([pd.util.hash_pandas_object(trimmed).values, np.int64(rows)]
                                     + [str(x).encode() for x in head.columns])


def run_dataset(run_id: str, context: str = TEST_CONTEXT) -> "Any":
    """The dataset logged as an input of ``run_id`` with ``context`` (an ``mlflow.entities.Dataset``), or None."""
    run = client().get_run(run_id)
    for item in (run.inputs.dataset_inputs if run.inputs else []):
        if any(t.key == "mlflow.data.context" and t.value == context for t in item.tags):
            return item.dataset
    return None


def log_model_metrics(model_id: str, run_id: str, dataset: "Any", metrics: Mapping[str, float],
                      champion_metrics: Mapping[str, float] | None = None) -> None:
    """Log the evaluation ``metrics`` on the logged model ``model_id`` and the test ``dataset``, from the run
    that computed them (``run_id``: the evaluate stage), with the champion's scores on the same rows beside them
    as ``champion_<metric>``: these are the Models tab's metric columns and charts."""
    import mlflow

    values = {**metrics, **{f"champion_{k}": v for k, v in (champion_metrics or {}).items()}}
    mlflow.log_metrics({k: float(v) for k, v in values.items()}, run_id=run_id, model_id=model_id, dataset=dataset,
                       synchronous=True)


def log_run_summary(parent_id: str, metrics: Mapping[str, float | None] | None = None,
                    tags: Mapping[str, str] | None = None) -> None:
    """Put headline ``metrics`` (None ones left out) and ``tags`` on the DAG run's run, where the runs table
    shows them one row per DAG run."""
    from mlflow.entities import Metric, RunTag
    from mlflow.utils.time import get_current_time_millis

    now = get_current_time_millis()
    client().log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()
                                           if v is not None],
                       tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()])


def runs_view_state(metric_keys: Sequence[str], tag_keys: Sequence[str]) -> dict[str, Any]:
    """The runs table's state of the pipeline's saved view: the dataset and model columns, then the headline
    metrics and the gate's tags of each DAG run's run (column keys as the UI writes them)."""
    columns = ["attributes.`Dataset`", "attributes.`Models`"]
    columns += [f"metrics.`{k}`" for k in metric_keys] + [f"tags.`{k}`" for k in tag_keys]
    return {"selectedColumns": columns}


def save_runs_view(experiment: str, metric_keys: list[str], tag_keys: Sequence[str] = GATE_TAGS) -> str:
    """Save the runs table view that shows the DAG runs' headline columns in experiment ``experiment`` (an id);
    returns its key for ``?viewStateShareKey=``. Written again only when its columns change."""
    import json
    import time

    state = json.dumps(runs_view_state(metric_keys, tag_keys))
    key = SAVED_VIEW_PREFIX + RUNS_VIEW_KEY
    c = client()
    old = c.get_experiment(experiment).tags.get(key)
    try:
        if old and json.loads(old).get("state") == state:
            return RUNS_VIEW_KEY
    except ValueError:
        pass
    now = int(time.time() * 1000)
    c.set_experiment_tag(experiment, key, json.dumps({"name": "DAG runs: gate metric and decision",
                                                      "createdAt": now, "updatedAt": now, "state": state}))
    return RUNS_VIEW_KEY


def run_link(experiment: str, run_id: str) -> str:
    """The UI route of a run, relative to the UI's root (markdown in the UI links it in place)."""
    return f"#/experiments/{experiment}/runs/{run_id}"


def logged_model_link(experiment: str, model_id: str) -> str:
    return f"#/experiments/{experiment}/models/{model_id}"


def model_version_link(model_name: str, version: int | str) -> str:
    return f"#/models/{model_name}/versions/{version}"


def log_figure(fig, name: str, save_to: "os.PathLike | str | None" = None) -> None:
    """Log ``fig`` as the artifact ``name`` of the active run (and write it to ``save_to``: the model card
    embeds it), then close it."""
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_figure(fig, name)
    if save_to is not None:
        fig.savefig(save_to)
    plt.close(fig)


class EpochLogger:
    """Factory for a Keras callback that logs every epoch's metrics to the active MLflow run (step = epoch).

    The epochs are sent in batches, at most every ``flush_s`` seconds and when training ends (or on
    ``flush()``), not one database write per epoch: a 60-epoch run on penguins spent longer logging than
    training its epochs."""

    def __new__(cls, flush_s: float = 5.0):
        import time

        import keras
        import mlflow
        from mlflow.entities import Metric

        class _EpochLogger(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                run = mlflow.active_run()
                self.run_id = run.info.run_id if run else None
                self.pending: list[Metric] = []
                self.last = time.monotonic()

            def on_epoch_end(self, epoch, logs=None):
                now_ms = int(time.time() * 1000)
                self.pending += [Metric(k, float(v), now_ms, epoch) for k, v in (logs or {}).items()]
                if time.monotonic() - self.last >= flush_s:
                    self.flush()

            def on_train_end(self, logs=None):
                self.flush()

            def flush(self):
                if self.pending and self.run_id:
                    for start in range(0, len(self.pending), 1000):  # MLflow's limit per batch
                        client().log_batch(self.run_id, metrics=self.pending[start:start + 1000])
                self.pending = []
                self.last = time.monotonic()

        return _EpochLogger()


def training_curve_figure(history: Mapping[str, list[float]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k.removeprefix("val_") for k in history})
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for key, style in ((name, "-"), (f"val_{name}", "--")):
            if key in history:
                ax.plot(range(1, len(history[key]) + 1), history[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    return fig


def ui_url(base: str, experiment_name: str | None = None) -> str:
    """A link that opens the runs table, in the pipeline's saved view when the experiment has it (the DAG runs'
    headline metrics and gate decision as columns). The MLflow 3 UI starts in its GenAI view unless the link asks
    for ``workflowType=machine_learning`` (the experiment tag alone is ignored while the GenAI/ML toggle is shown)."""
    exp = client().get_experiment_by_name(experiment_name) if experiment_name else None
    path = f"#/experiments/{exp.experiment_id}/runs" if exp else "#/experiments"
    view = f"&viewStateShareKey={RUNS_VIEW_KEY}" if exp and SAVED_VIEW_PREFIX + RUNS_VIEW_KEY in exp.tags else ""
    return f"{base.rstrip('/')}/{path}?workflowType=machine_learning{view}"


def ui(argv: list[str] | None = None) -> int:
    """Start ``mlflow ui`` on the configured store (default http://127.0.0.1:5000)."""
    uri = paths.mlflow_tracking_uri()
    if uri.startswith("sqlite:///"):
        paths.mlflow_dir().mkdir(parents=True, exist_ok=True)
    argv = argv or ["--host", "127.0.0.1", "--port", "5000"]
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--default-artifact-root", paths.mlflow_artifact_root(), *argv]
    host = argv[argv.index("--host") + 1] if "--host" in argv else "127.0.0.1"
    port = argv[argv.index("--port") + 1] if "--port" in argv else "5000"
    names = [e.name for e in client().search_experiments() if e.name != "Default"]
    print(" ".join(cmd), flush=True)
    print(f"\nOpen {ui_url(f'http://{host}:{port}', names[0] if len(names) == 1 else None)}\n", flush=True)
    os.execv(sys.executable, cmd)
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "ui":
        sys.exit(ui(sys.argv[2:] or None))
    print("usage: python -m pipeline.tracking ui [mlflow ui options]", file=sys.stderr)
    sys.exit(2)
