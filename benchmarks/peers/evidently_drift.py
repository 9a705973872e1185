"""Run Evidently's DataDriftPreset on reference/current Parquet pairs; runs inside ``.venv-evidently``.

    .venv-evidently/bin/python evidently_drift.py JOBS.json OUT.json

``JOBS.json``: a list of ``{"name", "reference", "current", "numeric": [...], "categorical": [...]}``.
``OUT.json``: per job ``{"name", "seconds", "read_seconds", "columns": {col: {"drift", "method", "score",
"threshold"}}, "dataset_drift"}``. ``seconds`` times ``Report.run`` plus ``Snapshot.dict`` on frames already in
memory, the same span that benchmarks/drift.py times for our analysis. Evidently's defaults are kept.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("DO_NOT_TRACK", "1")  # no telemetry from a benchmark

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset


def column_decisions(snapshot: dict) -> tuple[dict, bool]:
    """Per-column decisions from a snapshot: p-value methods drift below the threshold, distances at or above."""
    columns, dataset = {}, False
    for m in snapshot["metrics"]:
        cfg = m.get("config", {})
        if cfg.get("type", "").endswith("ValueDrift"):
            method, score, threshold = cfg["method"], float(m["value"]), float(cfg["threshold"])
            drift = score < threshold if "p_value" in method else score >= threshold
            columns[cfg["column"]] = {
                "drift": drift,
                "method": method,
                "score": score,
                "threshold": threshold,
            }
        elif cfg.get("type", "").endswith("DriftedColumnsCount"):
            dataset = float(m["value"]["share"]) >= float(cfg.get("drift_share", 0.5))
    return columns, dataset


def run_job(job: dict) -> dict:
    t0 = time.perf_counter()
    reference = pd.read_parquet(job["reference"])
    current = pd.read_parquet(job["current"])
    read_seconds = time.perf_counter() - t0
    definition = DataDefinition(numerical_columns=job["numeric"], categorical_columns=job["categorical"])
    t0 = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    doc = snapshot.dict()
    seconds = time.perf_counter() - t0
    columns, dataset = column_decisions(doc)
    return {
        "name": job["name"],
        "seconds": seconds,
        "read_seconds": read_seconds,
        "columns": columns,
        "dataset_drift": dataset,
    }


def main(argv: list[str]) -> int:
    jobs_path, out_path = argv
    with open(jobs_path) as fh:
        jobs = json.load(fh)
    results = []
    for job in jobs:
        results.append(run_job(job))
        with open(out_path, "w") as fh:  # after every job, so a timeout still leaves the finished ones
            json.dump(results, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
