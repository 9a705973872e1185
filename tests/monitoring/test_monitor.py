"""``run_monitor`` end to end on a fake model version: lineage, cached reference, window, labels, report, MLflow."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from pipeline.monitoring.drift import DriftConfig
from pipeline.monitoring.monitor import MonitorConfig, run_monitor

CLASSES = ["Adelie", "Gentoo"]
END = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _penguins(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    bill = rng.normal(45 + shift, 5, n)
    return pd.DataFrame(
        {
            "bill_length_mm": bill,
            "island": rng.choice(["Biscoe", "Dream"], n),
            "species": np.where(bill > 45, "Gentoo", "Adelie"),
        }
    )


def _outputs(frame: pd.DataFrame) -> pd.DataFrame:
    """A stand-in model: P(Gentoo) rises with the bill length."""
    p = 1 / (1 + np.exp(-(frame["bill_length_mm"].to_numpy() - 45)))
    return pd.DataFrame({"output.probabilities": list(np.column_stack([1 - p, p]))}, index=frame.index)


@pytest.fixture
def lineage_path(tmp_path):
    version_dir = tmp_path / "serving" / "penguins" / "3"
    (version_dir / "assets.extra").mkdir(parents=True)
    _penguins(2000, seed=1).to_csv(tmp_path / "train.csv", index=False)
    meta = {
        "model_name": "penguins",
        "version": 3,
        "task": "classification",
        "label": "species",
        "features": {"numeric": ["bill_length_mm"], "categorical": ["island"]},
        "class_names": CLASSES,
        "dataset": {"snapshot": str(tmp_path / "train.csv"), "digest": "sha-1", "rows": 2000},
        "train_split": str(tmp_path / "train.csv"),
        "metrics": {"test_accuracy": 0.99},
        "blessed": True,
    }
    path = version_dir / "assets.extra" / "pipeline_metadata.json"
    path.write_text(json.dumps(meta))
    return path


def _window(n: int, seed: int, shift: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = _penguins(n, seed, shift)
    window = pd.concat([frame.drop(columns=["species"]), _outputs(frame)], axis=1)
    window.insert(0, "request_id", [f"r{i}" for i in range(n)])
    window.insert(1, "row", 0)
    labels = pd.DataFrame({"request_id": window["request_id"], "species": frame["species"]})
    return window, labels


def test_run_monitor_end_to_end(tmp_path, lineage_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    config = MonitorConfig(model_name="penguins", drift=DriftConfig(drift_share=0.5))
    window, labels = _window(1500, seed=2, shift=4.0)
    labels.loc[labels.index[::2], "species"] = "Adelie"  # the model is wrong on many of them
    result = run_monitor(
        config,
        window,
        lineage_path,
        labels=labels,
        window_end=END,
        predict_reference=_outputs,
        report_dir=tmp_path / "report",
        tracking_uri=uri,
    )
    doc = json.loads(result.to_json())
    assert doc["dataset_drift"] and doc["features"]["bill_length_mm"]["drift"]
    assert not doc["features"]["island"]["drift"]
    assert doc["prediction_drift"] and doc["predictions"]["prediction.class"]["drift"]
    assert doc["performance"]["evaluated"] and doc["performance"]["degraded"]
    assert doc["performance"]["baseline"] == {"accuracy": 0.99}
    assert doc["new_columns"] == [] and doc["meta"]["model_version"] == 3
    assert doc["meta"]["reference_from_cache"] is False and doc["meta"]["mlflow_run_id"]
    assert (tmp_path / "report" / "report.html").exists()
    assert (tmp_path / "home" / "monitoring" / "reference" / "penguins" / "3" / "reference.json").exists()

    again = run_monitor(
        config, _window(1500, seed=3)[0], lineage_path, predict_reference=_outputs, log_mlflow=False
    )
    assert again.meta["reference_from_cache"] is True
    assert not again.dataset_drift and not again.prediction_drift


def test_run_monitor_on_a_csv_without_outputs(tmp_path, lineage_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    path = tmp_path / "current.csv"
    _penguins(500, seed=5).drop(columns=["species"]).assign(new_col=1).to_csv(path, index=False)
    result = run_monitor(MonitorConfig(model_name="penguins"), path, lineage_path, log_mlflow=False)
    assert not result.dataset_drift and result.predictions == {} and result.new_columns == ["new_col"]
    assert result.performance is None


def test_monitor_config_from_yaml(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: penguins\nserving: {model_name: pengs}\nmonitoring:\n  drift: {drift_share: 0.5, "
        "key_features: [island]}\n  retraining: {cooldown_hours: 2, max_per_day: 3}\n"
    )
    config = MonitorConfig.from_yaml(path)
    assert config.model_name == "pengs" and config.drift.key_features == ("island",)
    assert config.cooldown.total_seconds() == 7200 and config.max_retrains_per_day == 3
    path.write_text("monitoring: {drfit: {}}\n")
    with pytest.raises(ValueError, match="unknown monitoring settings"):
        MonitorConfig.from_yaml(path)


def test_a_bad_monitoring_section_is_a_refusal_naming_the_file(tmp_path):
    """The drift monitor's first task turns MonitorInputError into an immediate failure (no retry): a bad section
    must arrive as one, naming the file."""
    from pipeline.monitoring.tasks import MonitorInputError, load_config

    path = tmp_path / "p.yaml"
    path.write_text("serving: {model_name: pengs}\nmonitoring: {retraining: {cooldown_hourz: 2}}\n")
    with pytest.raises(MonitorInputError, match=f"{path}: monitoring: unknown monitoring settings"):
        load_config({"config": str(path)})
    path.write_text("serving: {model_name: pengs}\nmonitoring: {performance: {min_labels: lots}}\n")
    with pytest.raises(MonitorInputError, match="monitoring: invalid literal"):
        load_config({"config": str(path)})


def test_cli_monitor_json_on_a_file_and_on_the_request_log(tmp_path, lineage_path, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIPELINE_SERVING_BASE", str(tmp_path / "serving"))
    current = tmp_path / "current.parquet"
    _penguins(800, seed=7, shift=5.0).drop(columns=["species"]).to_parquet(current)
    assert (
        main(["monitor", "--direct", "--model-name", "penguins", "--current", str(current), "--json", "--no-mlflow"])
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["features"]["bill_length_mm"]["drift"] and doc["retraining_triggered"] is False
    assert doc["meta"]["model_version"] == 3

    now = datetime.now(UTC) - pd.Timedelta(minutes=5)
    log_dir = tmp_path / "home" / "request_logs" / "penguins" / now.strftime("%Y-%m-%d")
    log_dir.mkdir(parents=True)
    rows = _penguins(300, seed=8)
    lines = [
        json.dumps(
            {
                "request_id": f"r{i}",
                "row": 0,
                "ts": now.isoformat(),
                "model_name": "penguins",
                "model_version": 3,
                "features": {"bill_length_mm": b, "island": s},
                "outputs": {"probabilities": [0.5, 0.5]},
            }
        )
        for i, (b, s) in enumerate(zip(rows["bill_length_mm"], rows["island"]))
    ]
    (log_dir / f"{now:%H}-1.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["monitor", "--direct", "--model-name", "penguins", "--json", "--no-mlflow"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_current"] == 300 and not doc["dataset_drift"] and doc["new_columns"] == []
    assert (tmp_path / "home" / "monitoring" / "state" / "penguins.json").exists()
    # the next run starts where this one ended: nothing new, skipped
    assert main(["monitor", "--direct", "--model-name", "penguins", "--json", "--no-mlflow"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] is True


def test_cli_monitor_bad_input(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIPELINE_SERVING_BASE", str(tmp_path / "serving"))
    assert main(["monitor", "--direct", "--model-name", "nope", "--current", str(tmp_path / "missing.csv")]) == 2
    (tmp_path / "c.csv").write_text("x\n1\n")
    assert main(["monitor", "--direct", "--model-name", "nope", "--current", str(tmp_path / "c.csv")]) == 2
    assert "no exported version" in capsys.readouterr().err
