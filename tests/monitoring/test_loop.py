"""The retraining loop's logic without Airflow: window bounds, history from drift events, labelled rows, the
decision task's guards, and the training side (labelled rows appended to the snapshot, the monitor's config)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.monitoring import loop

END = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DAY = timedelta(hours=24)


@pytest.mark.parametrize(
    ("previous_end", "expected_start"),
    [
        (None, END - DAY),  # first run: the lookback
        (END - timedelta(hours=1), END - timedelta(hours=1)),  # since the previous run
        (END - timedelta(days=3), END - DAY),  # after an outage: at most the lookback
        (END, END - DAY),  # a rerun of an older interval
        (datetime(2026, 11, 22, 11, 0), datetime(2026, 11, 22, 11, 0, tzinfo=UTC)),  # naive is UTC
    ],
)
def test_window_bounds(previous_end, expected_start):
    assert loop.window_bounds(END, previous_end, DAY) == (expected_start, END)


def test_window_bounds_accept_pendulum_times():
    import pendulum

    start, end = loop.window_bounds(pendulum.instance(END), pendulum.instance(END - timedelta(hours=2)), DAY)
    assert (start, end) == (END - timedelta(hours=2), END)
    assert type(start) is datetime and start.tzinfo is UTC


def test_history_reads_window_ends_of_this_models_events_and_skips_the_own_run():
    extras = [
        {"model_name": "penguins", "dag_run_id": "r1", "window_end": "2026-11-22T01:00:00+00:00"},
        {"model_name": "other", "dag_run_id": "r2", "window_end": "2026-11-22T02:00:00+00:00"},
        {"timestamp": "2026-11-22T03:00:00+00:00"},  # emitted by hand: counts for every model
        {"model_name": "penguins", "dag_run_id": "me", "window_end": "2026-11-22T04:00:00+00:00"},
        None,
    ]
    events = loop.drift_events(extras, "penguins")
    assert [e.get("dag_run_id") for e in events] == ["r1", None, "me", None]
    history = loop.retraining_history(events, exclude_run_id="me")
    assert history == [datetime(2026, 11, 22, 1, tzinfo=UTC), datetime(2026, 11, 22, 3, tzinfo=UTC)]


def test_labelled_rows_join_late_labels_and_count_the_new_ones():
    window = pd.DataFrame({
        "request_id": ["a", "b", "c", "d"], "row": [0, 0, 0, 0],
        "ts": pd.to_datetime(["2026-11-22T01:00Z", "2026-11-22T02:00Z", "2026-11-22T03:00Z", "2026-11-22T04:00Z"]),
        "x": [1.0, 2.0, 3.0, 4.0], "island": ["A", "B", "A", "B"], "output.probabilities": [[1.0]] * 4,
    })
    labels = pd.DataFrame({"request_id": ["a", "c", "d", "zz"], "species": ["s1", "s2", "", "s9"]})
    rows = loop.labelled_rows(window, labels, "species", ["x", "island", "missing_feature"])
    assert rows["x"].tolist() == [1.0, 3.0]  # "" is no label; "zz" was never served
    assert list(rows.columns) == ["x", "island", "species", "ts"]
    assert loop.count_since(rows, datetime(2026, 11, 22, 2, tzinfo=UTC)) == 1
    assert loop.count_since(rows, None) == 2


def test_labelled_rows_of_a_file_with_its_own_label_column_and_of_nothing():
    frame = pd.DataFrame({"x": [1.0, 2.0, np.nan], "species": ["s1", None, "s2"]})
    assert loop.labelled_rows(frame, None, "species", ["x"])["species"].tolist() == ["s1", "s2"]
    empty = loop.labelled_rows(frame.drop(columns="species"), None, "species", ["x"])
    assert len(empty) == 0 and list(empty.columns) == ["x", "species"]


def test_read_labels_concatenates_the_store_in_name_order(tmp_path):
    store = tmp_path / "labels"
    store.mkdir()
    pd.DataFrame({"request_id": ["a"], "species": ["old"]}).to_csv(store / "1.csv", index=False)
    pd.DataFrame({"request_id": ["a"], "species": ["new"]}).to_parquet(store / "2.parquet")
    (store / "notes.txt").write_text("not labels")
    labels = loop.read_labels(store, "penguins")
    assert labels["species"].tolist() == ["old", "new"]
    assert loop.read_labels(tmp_path / "nowhere", "penguins") is None


def test_labelled_data_paths_keep_this_models_files_once():
    extras = [{"model_name": "penguins", "labelled_data": "/a.parquet"}, {"model_name": "other", "labelled_data": "/b"},
              {"model_name": "penguins", "labelled_data": "/a.parquet"}, {"labelled_data": "/c.parquet"}, None, {}]
    assert loop.labelled_data_paths(extras, "penguins") == ["/a.parquet", "/c.parquet"]


def test_append_labelled_adds_rows_by_column_key_and_changes_the_digest(tmp_path):
    from pipeline.ingest import Snapshot

    snap_path = tmp_path / "snapshot.parquet"
    pd.DataFrame({"bill_length_mm": [39.1, 40.0], "island": ["Biscoe", "Dream"], "species": ["A", "B"],
                  "year": [2007, 2008]}).to_parquet(snap_path)
    snap = Snapshot(str(snap_path), "/src.csv", "d0", 2, {})
    labelled = tmp_path / "labelled.parquet"
    pd.DataFrame({"bill_length_mm": ["50.5"], "island": ["Torgersen"], "species": ["C"], "extra": [1]}).to_parquet(labelled)

    out = loop.append_labelled(snap, [str(labelled)])
    merged = pd.read_parquet(snap_path)
    assert out.rows == 3 and len(merged) == 3 and out.digest != "d0"
    assert merged["bill_length_mm"].tolist() == [39.1, 40.0, 50.5]  # JSON strings from the log become numbers
    assert list(merged.columns) == ["bill_length_mm", "island", "species", "year"]  # "extra" is dropped
    assert np.isnan(merged["year"].iloc[2])
    meta = json.loads((tmp_path / "snapshot.json").read_text())
    assert meta["source_rows"] == 2 and meta["labelled_data"] == [str(labelled)]


def test_append_labelled_names_a_missing_file(tmp_path):
    from pipeline.ingest import IngestError, Snapshot

    pd.DataFrame({"x": [1.0]}).to_parquet(tmp_path / "snapshot.parquet")
    with pytest.raises(IngestError, match="gone.parquet"):
        loop.append_labelled(Snapshot(str(tmp_path / "snapshot.parquet"), "s", "d", 1, {}), [str(tmp_path / "gone.parquet")])


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"config": ""}, "/monitor.yaml"),  # the monitor's config
        ({"config": "/own.yaml"}, "/own.yaml"),  # a config of its own wins
        ({"config": "", "source": "/data.csv"}, ""),  # so does a source given by hand
    ],
)
def test_drift_triggered_training_uses_the_monitors_config(params, expected):
    from pipeline.tasks import drift_run_params

    events = [{"config": "/old.yaml"}, None, {"config": "/monitor.yaml"}]
    assert drift_run_params(params, events)["config"] == expected
    assert drift_run_params({"config": ""}, [])["config"] == ""


# The decide task on a prepared monitor run directory (no Airflow, no MLflow).


@pytest.fixture
def monitor_run(pipeline_home, tmp_path):
    """A resolved window and an analysed result with dataset drift; 120 labelled rows in the label store."""
    version_dir = pipeline_home / "serving" / "penguins" / "1" / "assets.extra"
    version_dir.mkdir(parents=True)
    lineage = {"model_name": "penguins", "version": 1, "task": "classification", "label": "species",
               "features": {"numeric": ["x"], "categorical": []}, "class_names": ["a", "b"]}
    (version_dir / "pipeline_metadata.json").write_text(json.dumps(lineage))
    run_dir = loop.run_dir("penguins", "run-1")
    run_dir.mkdir(parents=True)
    n = 120
    window = pd.DataFrame({"request_id": [f"r{i}" for i in range(n)], "row": 0, "x": np.arange(n, dtype=float),
                           "ts": pd.Timestamp(END - timedelta(minutes=30)), "model_version": 1})
    window.to_parquet(run_dir / "window.parquet")
    store = loop.label_store("penguins")
    store.mkdir(parents=True)
    pd.DataFrame({"request_id": window["request_id"], "species": "a"}).to_csv(store / "labels.csv", index=False)
    drift = {"dataset_drift": True, "skipped": False, "drift_reason": "1 of 1 features drifted", "reason": "",
             "drifted_features": ["x"], "drift_share": 1.0, "n_current": n, "meta": {}}
    (run_dir / "drift.json").write_text(json.dumps(drift))
    resolved = {"model_name": "penguins", "model_version": 1, "window": str(run_dir / "window.parquet"),
                "lineage": str(version_dir / "pipeline_metadata.json"), "window_start": None,
                "window_end": END.isoformat(), "run_dir": str(run_dir), "config": ""}
    config = tmp_path / "conf.yaml"
    config.write_text("serving: {model_name: penguins}\n"
                      "monitoring: {retraining: {cooldown_hours: 6, max_per_day: 2, min_new_labels: 100}}\n")
    params = {"config": str(config), "current": str(run_dir / "window.parquet")}
    return params, resolved, {"drift": str(run_dir / "drift.json")}


def _decide(monitor_run, events=(), in_flight=False, run_id="run-1"):
    from pipeline.monitoring.tasks import decide_task

    params, resolved, analysed = monitor_run
    return decide_task(params, run_id, resolved, analysed, list(events), in_flight)


def test_decide_triggers_on_drift_with_enough_labels_and_writes_them(monitor_run):
    decision = _decide(monitor_run)
    assert decision["retraining_triggered"] and decision["reason"].startswith("retraining triggered")
    extra = decision["event_extra"]
    assert extra["labelled_rows"] == extra["new_labelled_rows"] == 120
    assert len(pd.read_parquet(extra["labelled_data"])) == 120
    assert extra["window_end"] == END.isoformat() and extra["dataset_drift"] and extra["drifted_features"] == ["x"]
    result = json.loads(open(decision["result"]).read())
    assert result["retraining_triggered"] and result["reason"] == decision["reason"]
    assert json.dumps(extra)  # the event extra is plain JSON


@pytest.mark.parametrize(
    ("events", "in_flight", "reason"),
    [
        ([], True, "already in flight"),
        ([{"model_name": "penguins", "dag_run_id": "r0", "window_end": (END - timedelta(hours=1)).isoformat()}],
         False, "cooldown"),
        ([{"model_name": "penguins", "dag_run_id": f"r{i}", "window_end": (END - timedelta(hours=h)).isoformat()}
          for i, h in enumerate((7, 14))], False, "daily cap"),
    ],
)
def test_decide_holds_back(monitor_run, events, in_flight, reason):
    decision = _decide(monitor_run, events, in_flight)
    assert not decision["retraining_triggered"] and reason in decision["reason"]
    assert decision["event_extra"] is None


def test_decide_counts_only_labels_since_the_last_retraining(monitor_run):
    last = {"model_name": "penguins", "dag_run_id": "r0", "window_end": (END - timedelta(hours=7)).isoformat()}
    assert _decide(monitor_run, [last])["retraining_triggered"]  # the 120 rows were served after it
    _, resolved, _ = monitor_run
    window = pd.read_parquet(resolved["window"])
    window["ts"] = pd.Timestamp(END - timedelta(hours=8))  # served before the last retraining
    window.to_parquet(resolved["window"])
    decision = _decide(monitor_run, [last])
    assert not decision["retraining_triggered"] and "0 new labelled rows < 100" in decision["reason"]


def test_decide_run_again_after_emitting_does_not_emit_twice(monitor_run):
    own = {"model_name": "penguins", "dag_run_id": "run-1", "window_end": END.isoformat()}
    decision = _decide(monitor_run, [own])
    assert decision["retraining_triggered"] and decision["already_emitted"]


def test_append_labelled_turns_logged_images_back_into_their_bytes(tmp_path):
    import base64

    from pipeline.ingest import Snapshot

    png = b"\x89PNG\r\n\x1a\n" + bytes(range(40))  # not UTF-8: the request log writes it as {"b64": ...}
    snap_path = tmp_path / "snapshot.parquet"
    pd.DataFrame({"image": [png], "label": ["a"]}).to_parquet(snap_path)
    labelled = tmp_path / "labelled.parquet"
    pd.DataFrame({"image": ["b64:" + base64.b64encode(png[::-1]).decode()], "label": ["b"]}).to_parquet(labelled)
    loop.append_labelled(Snapshot(str(snap_path), "/folder", "d0", 1, {}), [str(labelled)])
    merged = pd.read_parquet(snap_path)
    assert merged["image"].tolist() == [png, png[::-1]]
