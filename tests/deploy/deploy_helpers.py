"""Helpers of the deploy tests: small SavedModels laid out as the export stage leaves them (lineage file, test
split, the evaluation's predictions), registered in a real MLflow store, and servers started with the serving
tests' own helpers (``tests/serving/conftest.py``), each in its own process group and always stopped."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SERVING_TESTS = Path(__file__).resolve().parents[1] / "serving"
sys.path.insert(0, str(SERVING_TESTS))  # serving_models, under any --import-mode
import serving_models as models  # noqa: E402


def _serving_conftest():
    spec = importlib.util.spec_from_file_location("serving_conftest", SERVING_TESTS / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


serving = _serving_conftest()
ServerProcess = serving.ServerProcess


def config_following_server(pipeline_home: Path) -> "ServerProcess":
    """A started server following the generated models.config (and the version directories) every 0.2 s."""
    from pipeline import deploy

    server = ServerProcess(pipeline_home, ["--model_config_file", str(deploy.models_config_path()),
                                           "--model_config_file_poll_wait_seconds", "0.2",
                                           "--file_system_poll_wait_seconds", "0.2"],
                           env={"PIPELINE_HOME": str(pipeline_home)})
    return server.start()
MODEL = "penguins"
BIN = Path(sys.executable).parent
# The test split of the small models: NaN and a missing island included, every label a known class.
TEST_ROWS = pd.DataFrame({"bill_length_mm": [39.1, np.nan, 50.0, 46.5, 35.0],
                          "island": ["Biscoe", "Dream", None, "Torgersen", "Biscoe"],
                          "species": ["Adelie", "Chinstrap", "Gentoo", "Adelie", "Gentoo"]})


def penguins_variant(path: Path, *, drop: str | None = None, retype: str | None = None) -> Path:
    """A penguins-like model whose signature breaks the contract: an input removed, or one retyped to string."""
    import tensorflow as tf

    specs = {"bill_length_mm": tf.TensorSpec([None], tf.float32, name="bill_length_mm"),
             "island": tf.TensorSpec([None], tf.string, name="island")}
    if retype:
        specs[retype] = tf.TensorSpec([None], tf.string, name=retype)
    specs.pop(drop, None)

    class Variant(tf.Module):
        @tf.function(input_signature=[specs])
        def serve(self, features):
            n = tf.shape(next(iter(features.values())))[0]
            return {"probabilities": tf.fill([n, 3], 1.0 / 3), "classes": tf.fill([n, 3], "x")}

    module = Variant()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def build_templates(root: Path) -> dict[str, Path]:
    return {
        **{f"v{v}": models.write_penguins(root / f"penguins_{v}", v) for v in (1, 2, 3)},
        "no_island": penguins_variant(root / "no_island", drop="island"),
        "bill_as_text": penguins_variant(root / "bill_as_text", retype="bill_length_mm"),
    }


def expected(version: int) -> np.ndarray:
    """What version ``version`` of the small penguins model answers on TEST_ROWS."""
    island = ["" if v is None else v for v in TEST_ROWS["island"]]
    return models.penguins_expected(TEST_ROWS["bill_length_mm"].tolist(), island, version)


def answered_version(probabilities, island: list[str], bill: list[float]) -> int | None:
    """Which version of the small penguins model produced ``probabilities`` (None: none of 1-3)."""
    for version in (1, 2, 3):
        if np.allclose(probabilities, models.penguins_expected(bill, island, version), atol=1e-5):
            return version
    return None


class Registry:
    """The state the training DAG leaves behind, built directly: a parent run per 'DAG run', the export's
    staging copy with its lineage file, the test split and predictions, and a registered, tagged version."""

    def __init__(self, home: Path):
        from pipeline import paths, tracking

        self.home = home
        self.paths = paths
        self.tracking = tracking
        self.client = tracking.client()

    @property
    def model_dir(self) -> Path:
        return self.paths.serving_dir(MODEL)

    def export(self, template: Path, *, answers: int | np.ndarray = 1, blessed: bool = True) -> tuple[int, Path, str]:
        """Register ``template`` as a new version; returns (version, staging dir, parent run id)."""
        run_key = f"manual__test_{len(self.client.search_model_versions(f'name = {MODEL!r}')) + 1}"
        parent = self.tracking.parent_run(MODEL, "training_pipeline", run_key)
        run_dir = self.paths.run_dir(run_key)
        (run_dir / "split").mkdir(parents=True, exist_ok=True)
        (run_dir / "evaluate").mkdir(parents=True, exist_ok=True)
        TEST_ROWS.to_parquet(run_dir / "split" / "test.parquet")
        np.save(run_dir / "evaluate" / "predictions.npy", expected(answers) if isinstance(answers, int) else answers)
        staging = self.model_dir / f".staging-{run_key}"
        shutil.copytree(template, staging)
        (staging / "assets.extra").mkdir(exist_ok=True)
        (staging / "assets.extra" / "pipeline_metadata.json").write_text(json.dumps({
            "model_name": MODEL, "task": "classification", "label": "species",
            "features": {"numeric": ["bill_length_mm"], "categorical": ["island"]},
            "class_names": models.CLASS_NAMES, "dag_id": "training_pipeline", "dag_run_id": run_key,
            "mlflow_run_id": parent, "dataset": {"snapshot": f"/data/{run_key}.parquet", "digest": "d" * 64,
                                                 "rows": 5, "source": "test"},
            "test_split": str(run_dir / "split" / "test.parquet"), "metrics": {"accuracy": 0.97}, "blessed": blessed}))
        try:
            self.client.create_registered_model(MODEL)
        except Exception:
            pass  # exists
        mv = self.client.create_model_version(MODEL, str(staging), tags={
            "blessed": str(blessed).lower(), "mlflow_parent_run_id": parent, "airflow.dag_id": "training_pipeline",
            "airflow.run_id": run_key, "dataset_digest": "d" * 64})
        return int(mv.version), staging, parent

    def place(self, template: Path, **aliases: int) -> int:
        """Register ``template`` and put it on disk as published, without validation (test set-up)."""
        from pipeline import deploy

        version, staging, _ = self.export(template)
        shutil.copytree(staging, self.model_dir / str(version))
        shutil.rmtree(staging)
        if aliases:
            deploy.move_aliases(MODEL, {a: (version if v == -1 else v) for a, v in aliases.items()},
                                action="deploy", reason="test set-up")
        return version

    def aliases(self) -> dict[str, int]:
        from pipeline import registry

        return registry.served_aliases(MODEL)

    def deploy_run(self, parent: str):
        runs = self.client.search_runs([self.client.get_run(parent).info.experiment_id],
                                       filter_string=f"tags.`mlflow.parentRunId` = '{parent}' "
                                                     f"and tags.`pipeline.stage` = 'deploy'")
        assert len(runs) == 1
        return runs[0]


def served_state(home: Path) -> dict[str, object]:
    """Everything a server could read: every file under serving/ with its size and mtime (the deploy locks are
    not read by servers)."""
    base = home / "serving"
    return {str(p.relative_to(base)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in base.rglob("*") if p.is_file() and ".staging-" not in str(p) and not p.name.endswith(".lock")}


def run_pipeline(home: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``pipeline *args`` as a user runs it, with PIPELINE_HOME=home, in its own process group."""
    env = {**os.environ, "PIPELINE_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for var in ("AIRFLOW_HOME", "MLFLOW_TRACKING_URI", "PIPELINE_SERVING_BASE"):
        env.pop(var, None)
    proc = subprocess.Popen([str(BIN / "pipeline"), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
