"""The HTML report, the per-feature plots, and the MLflow monitor run (in a temporary SQLite store)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from pipeline.monitoring.drift import analyse_drift
from pipeline.monitoring.reference import FeatureTypes, build_reference
from pipeline.monitoring.report import drift_metrics, log_monitor_run, plot_feature, write_report

PNG = b"\x89PNG\r\n\x1a\n"
END = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
def drifted(frames):
    ref = frames(3000, seed=1)
    cur = frames(
        3000,
        seed=2,
        shift=0.8,
        shares=np.array([0.4, 0.3, 0.15, 0.05, 0.1]),
        categories=np.array(["a", "b", "c", "d", "brand-new"]),
    )
    stats = build_reference(ref, FeatureTypes(("x", "y"), ("c",)))
    result = analyse_drift(stats, cur.assign(extra=1), meta={"model_name": "penguins", "model_version": 3})
    return stats, cur, result


def test_plots_are_png_for_both_kinds(drifted):
    stats, cur, result = drifted
    for col, sketch in (("x", stats.numeric["x"]), ("c", stats.categorical["c"])):
        assert plot_feature(col, sketch, cur[col], result.features[col]).startswith(PNG)
    assert plot_feature("x", stats.numeric["x"], None).startswith(PNG)  # column absent from the window


def test_report_is_self_contained_and_names_the_drift(tmp_path, drifted):
    stats, cur, result = drifted
    path = write_report(result, stats, cur, tmp_path / "report")
    html = path.read_text()
    assert html.count("data:image/png;base64,") == 3 and "<img" in html and "src='http" not in html
    assert "DATASET DRIFT" in html and "brand-new" in html and "extra" in html
    assert sorted(p.name for p in (tmp_path / "report" / "plots").iterdir()) == ["c.png", "x.png", "y.png"]
    assert json.loads((tmp_path / "report" / "drift.json").read_text())["dataset_drift"] is True


def test_report_of_a_skipped_window(tmp_path, frames):
    stats = build_reference(frames(100, seed=1), FeatureTypes(("x",), ("c",)))
    result = analyse_drift(stats, frames(0, seed=2))
    html = write_report(result, stats, frames(0, seed=2), tmp_path / "r").read_text()
    assert "SKIPPED" in html and "empty window" in html


def test_metrics_are_per_feature(drifted):
    metrics = drift_metrics(drifted[2])
    assert metrics["dataset_drift"] == 1.0
    assert metrics["drift/x/drift"] == 1.0 and metrics["drift/y/drift"] == 0.0
    assert metrics["drift/x/effect_size"] > 0.5
    assert all(np.isfinite(v) for v in metrics.values())


def test_monitor_runs_logged_to_mlflow(tmp_path, drifted, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    stats, cur, result = drifted
    report_dir = tmp_path / "report"
    write_report(result, stats, cur, report_dir)
    first = log_monitor_run(
        result,
        report_dir,
        model_name="penguins",
        window_end=END,
        window_start=END - timedelta(hours=1),
        tracking_uri=uri,
    )
    again = log_monitor_run(result, report_dir, model_name="penguins", window_end=END, tracking_uri=uri)
    second = log_monitor_run(
        result, None, model_name="penguins", window_end=END + timedelta(hours=1), tracking_uri=uri
    )
    assert first == again != second

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("penguins-monitoring")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    run = client.get_run(first)
    assert run.data.metrics["drift/x/drift"] == 1.0 and run.data.tags["drift.dataset"] == "true"
    assert run.data.tags["monitor.step"] == "0" and client.get_run(second).data.tags["monitor.step"] == "1"
    artifacts = {a.path for a in client.list_artifacts(first)} | {
        a.path for a in client.list_artifacts(first, "report")
    }
    assert {"drift.json", "report", "report/report.html", "report/plots"} <= artifacts
    history = client.search_runs([exp.experiment_id], "tags.`pipeline.kind` = 'monitor_history'")
    assert len(history) == 1
    points = client.get_metric_history(history[0].info.run_id, "drift/x/effect_size")
    assert sorted({p.step for p in points}) == [0, 1]
    assert {p.timestamp for p in points} >= {int(END.timestamp() * 1000)}
