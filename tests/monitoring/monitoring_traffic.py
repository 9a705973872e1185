"""Helpers of the tests that drive the monitor through Airflow: served traffic written as the serving server
writes its request log (docs/contracts.md), late labels, a fake exported version, the CLI as a subprocess in its
own process group, and reads of Airflow's metadata database."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

BIN = Path(sys.executable).parent
FEATURES = {"numeric": ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"],
            "categorical": ["island", "sex"]}


def drifted(frame: pd.DataFrame) -> pd.DataFrame:
    """Penguins from a colder sea: longer bills and flippers, heavier (3 of 6 features move by > 1 sd)."""
    return frame.assign(bill_length_mm=frame["bill_length_mm"] + 10, flipper_length_mm=frame["flipper_length_mm"] + 20,
                        body_mass_g=frame["body_mass_g"] + 800)


def write_requests(home: Path, model: str, frame: pd.DataFrame, version: int, ts: datetime | None = None) -> list[str]:
    """One single-row request per row of ``frame`` in the request log, as the server writes it; returns the ids."""
    ts = ts or datetime.now(UTC)
    folder = home / "request_logs" / model / ts.strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)
    ids, lines = [], []
    for row in frame[FEATURES["numeric"] + FEATURES["categorical"]].to_dict("records"):
        rid = uuid.uuid4().hex
        features = {k: (None if pd.isna(v) else (float(v) if isinstance(v, (int, float, np.number)) else v))
                    for k, v in row.items()}
        lines.append(json.dumps({"request_id": rid, "row": 0, "ts": ts.isoformat(), "model_name": model,
                                 "model_version": version, "signature_name": "serving_default", "api": "rest",
                                 "features": features, "outputs": {}}))
        ids.append(rid)
    with open(folder / f"{ts:%H}-{os.getpid()}.jsonl", "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return ids


def write_labels(home: Path, model: str, ids: list[str], labels, label: str = "species") -> Path:
    """Late labels for served requests, as a new file of the label store."""
    store = home / "labels" / model
    store.mkdir(parents=True, exist_ok=True)
    path = store / f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}.csv"
    pd.DataFrame({"request_id": ids, label: list(labels)}).to_csv(path, index=False)
    return path


def fake_version(home: Path, model: str, version: int, train: pd.DataFrame) -> Path:
    """An exported version's lineage without a SavedModel (the monitor needs only the lineage and its data)."""
    folder = home / "serving" / model / str(version) / "assets.extra"
    folder.mkdir(parents=True, exist_ok=True)
    train_path = home / f"train-v{version}.parquet"
    train.to_parquet(train_path)
    lineage = {"model_name": model, "version": version, "task": "classification", "label": "species",
               "features": FEATURES, "class_names": ["Adelie", "Chinstrap", "Gentoo"],
               "dataset": {"snapshot": str(train_path), "digest": f"digest-{version}", "rows": len(train)},
               "train_split": str(train_path), "metrics": {"accuracy": 0.97}, "blessed": True}
    path = folder / "pipeline_metadata.json"
    path.write_text(json.dumps(lineage))
    return path


def pipeline_env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PIPELINE_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for var in ("AIRFLOW_HOME", "MLFLOW_TRACKING_URI", "PIPELINE_SERVING_BASE"):
        env.pop(var, None)
    return {**env, **extra}


def run_pipeline(env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``pipeline <args>`` in its own process group, which is killed whatever happens."""
    proc = subprocess.Popen([str(BIN / "pipeline"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def monitor_json(env: dict[str, str], *args: str) -> dict:
    """``pipeline monitor --json``: stdout must be exactly one JSON object."""
    result = run_pipeline(env, "monitor", "--json", *args)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-5000:])
    return json.loads(result.stdout)


def query(home: Path, sql: str, *args) -> list[tuple]:
    """Rows of Airflow's metadata database (the embedded SQLite one)."""
    with sqlite3.connect(home / "airflow" / "airflow.db", timeout=30) as db:
        return db.execute(sql, args).fetchall()


def drift_events(home: Path, asset: str = "training_data_drift") -> list[dict]:
    rows = query(home, "select e.extra, e.source_dag_id from asset_event e join asset a on a.id = e.asset_id "
                       "where a.name = ? order by e.id", asset)
    return [{**json.loads(extra or "{}"), "_source_dag_id": source} for extra, source in rows]
