"""Windows read batch by batch (``monitoring.batches``, ``request_log.iter_request_log``): Parquet shards, CSV,
JSONL and the request-log directories give the whole frame's result; unreadable files are named."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.monitoring.batches import WindowReadError, table_batches, with_predictions
from pipeline.monitoring.drift import analyse_drift
from pipeline.monitoring.monitor import MonitorConfig, run_monitor
from pipeline.monitoring.reference import FeatureTypes, build_reference
from pipeline.monitoring.request_log import (
    iter_request_log,
    parse_lines,
    prediction_columns,
    read_request_log,
    request_log_versions,
)
from pipeline.monitoring.window import summarise_window

FEATURES = FeatureTypes(("x", "y"), ("c",))
CLASSES = ["no", "yes"]
START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def _drift(ref, batches) -> dict:
    return analyse_drift(ref, summarise_window(batches, ref)).to_dict()


def test_parquet_shards_a_glob_and_a_csv_give_the_frame_result(tmp_path, frames):
    ref = build_reference(frames(3000, seed=1), FEATURES)
    cur = frames(2500, seed=2, shift=0.3)
    cur.loc[cur.index[::50], "x"] = np.nan
    (tmp_path / "shards").mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(cur)), 3)):
        cur.iloc[part].to_parquet(tmp_path / "shards" / f"part-{i}.parquet", index=False)
    cur.to_csv(tmp_path / "w.csv", index=False)
    whole = analyse_drift(ref, cur).to_dict()
    assert _drift(ref, table_batches(tmp_path / "shards", batch_rows=300)) == whole
    assert _drift(ref, table_batches(str(tmp_path / "shards" / "part-*.parquet"), batch_rows=1000)) == whole
    assert _drift(ref, table_batches(tmp_path / "w.csv", batch_rows=333)) == whole


def _log_line(i: int, x: float, c: str, p: float, version: int = 1, minutes: int = 0) -> str:
    ts = (START + timedelta(minutes=minutes, seconds=i % 60)).isoformat()
    return json.dumps({"request_id": f"r{i}", "row": 0, "ts": ts, "model_name": "m", "model_version": version,
                       "features": {"x": x, "c": c}, "outputs": {"probabilities": [1 - p, p]}})


def test_a_jsonl_request_log_gives_the_frame_result_with_its_predictions(tmp_path):
    rng = np.random.default_rng(0)
    n = 1200
    xs, cs, ps = rng.normal(size=n), rng.choice(["a", "b"], n), rng.uniform(size=n)
    lines = [_log_line(i, float(xs[i]), str(cs[i]), float(ps[i])) for i in range(n)]
    lines.insert(17, '{"broken')  # a line cut by a crash: skipped, in a chunk or whole
    path = tmp_path / "w.jsonl"
    path.write_text("\n".join(lines) + "\n")
    ref_frame = pd.DataFrame({"x": rng.normal(size=2000), "c": rng.choice(["a", "b"], 2000)})
    ref_frame = pd.concat([ref_frame, pd.DataFrame({"prediction.class": rng.choice(CLASSES, 2000),
                                                    "prediction.proba.yes": rng.uniform(size=2000)})], axis=1)
    ref = build_reference(ref_frame, FeatureTypes(("x",), ("c",), ("prediction.proba.yes",), ("prediction.class",)))
    whole = parse_lines(path.read_text().splitlines())
    whole = pd.concat([whole, prediction_columns(whole, "classification", CLASSES)], axis=1)
    ignore = ["request_id", "row", "ts", "model_name", "model_version", "signature_name", "api",
              "output.probabilities", "prediction.proba.no"]
    expected = analyse_drift(ref, whole, ignore_columns=ignore).to_dict()
    streamed = summarise_window(with_predictions(table_batches(path, batch_rows=100), "classification", CLASSES), ref)
    assert streamed.rows == n
    assert analyse_drift(ref, streamed, ignore_columns=ignore).to_dict() == expected


def test_the_request_log_directory_read_in_chunks_keeps_the_same_rows(tmp_path):
    folder = tmp_path / "logs" / "m" / START.strftime("%Y-%m-%d")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    lines = [_log_line(i, float(rng.normal()), "a", 0.5, version=1 + (i % 3 == 0), minutes=(i % 180))
             for i in range(900)]
    (folder / "10-1.jsonl").write_text("\n".join(lines[:450]) + "\n")
    (folder / "11-2.jsonl").write_text("\n".join(lines[450:]) + "\n")
    end = START + timedelta(hours=2)
    whole = read_request_log("m", START, end, base_dir=tmp_path / "logs", model_version=1)
    chunks = list(iter_request_log("m", START, end, base_dir=tmp_path / "logs", model_version=1, batch_rows=64))
    streamed = pd.concat(chunks, ignore_index=True).sort_values("ts", kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(streamed.sort_values(["ts", "request_id"]).reset_index(drop=True),
                                  whole.sort_values(["ts", "request_id"]).reset_index(drop=True))
    versions = request_log_versions("m", START, end, base_dir=tmp_path / "logs")
    assert versions == whole_versions(tmp_path, end)


def whole_versions(tmp_path, end) -> dict:
    frame = read_request_log("m", START, end, base_dir=tmp_path / "logs")
    return {int(k): int(v) for k, v in frame["model_version"].value_counts().items()}


def test_a_truncated_parquet_shard_is_named(tmp_path, frames):
    (tmp_path / "shards").mkdir()
    frames(100, seed=1).to_parquet(tmp_path / "shards" / "part-0.parquet", index=False)
    good = (tmp_path / "shards" / "part-0.parquet").read_bytes()
    (tmp_path / "shards" / "part-1.parquet").write_bytes(good[: len(good) // 2])
    with pytest.raises(WindowReadError, match="part-1.parquet"):
        list(table_batches(tmp_path / "shards"))


def test_a_csv_with_a_bad_row_is_named_with_its_line(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("x,y,c\n1,2,a\n3,4,b\n5,6,c,extra\n7,8,d\n")
    with pytest.raises(WindowReadError, match=r"w\.csv.*line 4"):
        list(table_batches(path, batch_rows=2))


def test_run_monitor_on_shards_equals_run_monitor_on_the_frame(tmp_path, monkeypatch, frames):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    frames(3000, seed=1).to_parquet(tmp_path / "train.parquet", index=False)
    lineage = tmp_path / "serving" / "m" / "1" / "assets.extra" / "pipeline_metadata.json"
    lineage.parent.mkdir(parents=True)
    lineage.write_text(json.dumps({
        "model_name": "m", "version": 1, "task": "regression", "label": "target",
        "features": {"numeric": ["x", "y"], "categorical": ["c"]},
        "train_split": str(tmp_path / "train.parquet"), "dataset": {"digest": "d"},
    }))
    cur = frames(2000, seed=2, shift=0.4)
    cur.insert(0, "request_id", [f"r{i}" for i in range(len(cur))])
    cur["prediction_input"] = 1.0  # an unknown column, reported as new in both
    (tmp_path / "w").mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(cur)), 4)):
        cur.iloc[part].to_parquet(tmp_path / "w" / f"p{i}.parquet", index=False)
    config = MonitorConfig(model_name="m")
    a = run_monitor(config, cur, lineage, log_mlflow=False, predict_reference=False).to_dict()
    b = run_monitor(config, tmp_path / "w", lineage, log_mlflow=False, predict_reference=False).to_dict()
    a["meta"].pop("reference_from_cache"), b["meta"].pop("reference_from_cache")
    assert a == b and a["features"]["x"]["drift"] and a["new_columns"] == ["prediction_input"]


def test_the_cli_preflight_takes_a_directory_or_a_glob_of_shards(tmp_path, frames):
    from pipeline.preflight import monitor_problem

    (tmp_path / "w").mkdir()
    assert "no *.parquet" in monitor_problem({"config": "", "current": str(tmp_path / "w")})
    frames(10, seed=1).to_parquet(tmp_path / "w" / "p0.parquet", index=False)
    assert monitor_problem({"config": "", "current": str(tmp_path / "w")}) is None
    assert monitor_problem({"config": "", "current": str(tmp_path / "w" / "p*.parquet")}) is None
    assert "matches no file" in monitor_problem({"config": "", "current": str(tmp_path / "x*.parquet")})


def test_run_monitor_with_outputs_and_late_labels_on_shards_equals_the_frame(tmp_path, monkeypatch):
    from tests.monitoring.test_monitor import _outputs, _penguins, _window

    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    version_dir = tmp_path / "serving" / "penguins" / "3"
    (version_dir / "assets.extra").mkdir(parents=True)
    _penguins(2000, seed=1).to_parquet(tmp_path / "train.parquet", index=False)
    lineage = version_dir / "assets.extra" / "pipeline_metadata.json"
    lineage.write_text(json.dumps({
        "model_name": "penguins", "version": 3, "task": "classification", "label": "species",
        "features": {"numeric": ["bill_length_mm"], "categorical": ["island"]}, "class_names": ["Adelie", "Gentoo"],
        "dataset": {"digest": "sha-1"}, "train_split": str(tmp_path / "train.parquet"),
        "metrics": {"test_accuracy": 0.99},
    }))
    window, labels = _window(1500, seed=2, shift=4.0)
    labels = labels.iloc[::3]  # labels for a third of the rows
    (tmp_path / "w").mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(window)), 3)):
        window.iloc[part].to_parquet(tmp_path / "w" / f"p{i}.parquet", index=False)
    config = MonitorConfig(model_name="penguins")
    kwargs = {"labels": labels, "predict_reference": _outputs, "log_mlflow": False}
    a = run_monitor(config, window, lineage, cache_dir=tmp_path / "c1", **kwargs).to_dict()
    b = run_monitor(config, tmp_path / "w", lineage, cache_dir=tmp_path / "c2", **kwargs).to_dict()
    assert a == b
    assert a["performance"]["evaluated"] and a["performance"]["n_labelled"] == 500 and a["prediction_drift"]


def test_the_labelled_rows_keep_only_label_and_predictions_and_are_capped(frames):
    ref = build_reference(frames(500, seed=1), FEATURES)
    cur = frames(3000, seed=2).assign(label=lambda f: np.where(np.arange(len(f)) % 2 == 0, "yes", None),
                                      **{"prediction.class": "yes"})
    full = summarise_window([cur.iloc[:1000], cur.iloc[1000:]], ref, label="label", label_columns=["prediction.class"])
    assert list(full.labelled.columns) == ["label", "prediction.class"] and len(full.labelled) == 1500
    capped = summarise_window([cur], ref, label="label", label_columns=["prediction.class"], max_labelled=100)
    assert len(capped.labelled) == 100
