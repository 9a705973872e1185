"""The ``drift_monitor`` task bodies (``pipeline.monitoring.tasks``) on windows read batch by batch: a request log
of several files and a window of several Parquet shards give the ``drift.json`` / ``result.json`` that the whole
window read as one frame gives; no task reads the window whole; a broken file is an error naming it and leaves no
half-written ``window.parquet``. No Airflow, no MLflow, no TensorFlow (a fake exported version: lineage and data)."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for monitoring_traffic, under any --import-mode
import monitoring_traffic as traffic  # noqa: E402

from pipeline.monitoring import loop, tasks  # noqa: E402

END = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
BATCH = 40  # rows per batch in these tests: every window below is several batches


@pytest.fixture
def home(pipeline_home, penguins, tmp_path, monkeypatch):
    """Version 1 exported (lineage and training data); a config without MLflow, retraining from 10 new labels."""
    monkeypatch.setattr(tasks, "BATCH_ROWS", BATCH)
    traffic.fake_version(pipeline_home, "penguins", 1, penguins)
    traffic.fake_version(pipeline_home, "penguins", 2, penguins)
    config = tmp_path / "monitor.yaml"
    config.write_text("serving: {model_name: penguins}\n"
                      "monitoring: {mlflow: false, report: false,\n"
                      "             retraining: {cooldown_hours: 6, max_per_day: 2, min_new_labels: 10}}\n")
    return pipeline_home, config


@pytest.fixture
def served(home, penguins):
    """A drifted request log in four files (two hours, two writer processes): 200 rows of version 1 and 60 of
    version 2, half of version 1's labelled late; their ts interleave across files."""
    pipeline_home, config = home
    ids, species = [], []
    for i, (hours, version, seed) in enumerate([(3, 1, 0), (2, 1, 1), (2, 2, 2), (1, 1, 3)]):
        rows = traffic.drifted(penguins.sample(60 if version == 2 else 67 - (i == 3), replace=True,
                                               random_state=seed))
        ts = END - timedelta(hours=hours, minutes=10 * i)
        new = traffic.write_requests(pipeline_home, "penguins", rows, version=version, ts=ts)
        # as if each chunk came from another server process: a file of its own, named <HH>-<pid>.jsonl
        written = pipeline_home / "request_logs" / "penguins" / f"{ts:%Y-%m-%d}" / f"{ts:%H}-{os.getpid()}.jsonl"
        written.rename(written.with_name(f"{ts:%H}-{1000 + i}.jsonl"))
        if version == 1:
            ids += new
            species += list(rows["species"])
    traffic.write_labels(pipeline_home, "penguins", ids[::2], species[::2])
    params = {"config": str(config), "mlflow": False, "lookback_hours": 24, "labels_lookback_hours": 24}
    return params


def _run(params, run_id="run-1"):
    resolved = tasks.resolve_task(params, run_id, END, None)
    analysed = tasks.analyse_task(params, "drift_monitor", run_id, resolved)
    decided = tasks.decide_task(params, run_id, resolved, analysed, [], False)
    return resolved, analysed, decided


def _without_cache_flag(doc):
    """A result dict without what differs between a first run and a second (the reference cache hit)."""
    return {**doc, "meta": {k: v for k, v in doc["meta"].items() if k != "reference_from_cache"}}


def _expected_drift(params, window, model_version=1):
    """What ``analyse_task`` wrote before the tasks streamed: ``run_monitor`` on the whole window as one frame."""
    from pipeline.monitoring.monitor import run_monitor

    config, name = tasks.load_config(params)
    lineage = Path(tasks.paths.serving_dir(name)) / str(model_version) / "assets.extra" / "pipeline_metadata.json"
    labels = loop.read_labels(params.get("labels"), name)
    if labels is not None and "request_id" not in window.columns:
        labels = None
    result = run_monitor(config, window, lineage, labels=labels, window_start=END - timedelta(hours=24),
                         window_end=END, log_mlflow=False)
    return _without_cache_flag(result.to_dict())


def test_request_log_in_several_files_gives_the_whole_frame_results(served):
    from pipeline.monitoring.request_log import read_request_log

    resolved, analysed, decided = _run(served)
    whole = read_request_log("penguins", END - timedelta(hours=24), END)
    window = whole[whole["model_version"] == 1].reset_index(drop=True)
    assert resolved["model_version"] == 1 and resolved["rows"] == len(window) == 200
    assert resolved["window"] == str(Path(resolved["run_dir"]) / "window.parquet")
    assert len(pd.read_parquet(resolved["window"])) == 200

    drift = json.loads(Path(analysed["drift"]).read_text())
    assert drift["dataset_drift"] and drift["n_current"] == 200
    assert _without_cache_flag(drift) == _expected_drift(served, window)

    # the labelled rows: those of loop.labelled_rows on the whole log (all versions, ts order)
    lineage = json.loads(Path(resolved["lineage"]).read_text())
    features = [*lineage["features"]["numeric"], *lineage["features"]["categorical"]]
    expected = loop.labelled_rows(whole, loop.read_labels(None, "penguins"), "species", features)
    result = json.loads(Path(decided["result"]).read_text())
    assert decided["retraining_triggered"], decided["reason"]
    assert result["meta"]["labelled_rows"] == result["meta"]["new_labelled_rows"] == len(expected) == 100
    labelled = pd.read_parquet(decided["event_extra"]["labelled_data"])
    pd.testing.assert_frame_equal(labelled, expected.drop(columns="ts"), check_dtype=False)


def test_parquet_shards_give_the_results_of_the_whole_frame(home, penguins, tmp_path):
    """A ``current`` window of three Parquet shards is read in place (no copy) and gives the frame's results."""
    _, config = home
    window = traffic.drifted(penguins.sample(150, replace=True, random_state=4)).reset_index(drop=True)
    window["model_version"] = 1
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, part in enumerate((window.iloc[:50], window.iloc[50:110], window.iloc[110:])):
        part.to_parquet(shards / f"part-{i}.parquet", index=False)
    params = {"config": str(config), "mlflow": False, "current": str(shards)}

    resolved, analysed, decided = _run(params)
    assert resolved["window"] == str(shards) and resolved["rows"] == 150 and resolved["model_version"] == 1
    assert not (Path(resolved["run_dir"]) / "window.parquet").exists(), "the user's file is not copied"
    drift = json.loads(Path(analysed["drift"]).read_text())
    assert drift["dataset_drift"] and _without_cache_flag(drift) == _expected_drift(params, window)
    # the window's own label column: every row is labelled
    result = json.loads(Path(decided["result"]).read_text())
    assert result["meta"]["labelled_rows"] == 150 - int(window["species"].isna().sum())

    # a glob of the same shards is the same window
    glob_params = {**params, "current": str(shards / "part-*.parquet")}
    _, analysed_glob, _ = _run(glob_params, run_id="run-2")
    assert _without_cache_flag(json.loads(Path(analysed_glob["drift"]).read_text())) == _without_cache_flag(drift)


def test_no_task_reads_the_window_whole(served, monkeypatch):
    """Memory bound, checked by what the tasks are handed: no whole read of a Parquet file or of the log, and
    every window frame that reaches the summary, the label join or the writer has at most ``BATCH_ROWS`` rows."""
    import pipeline.monitoring.monitor as monitor
    import pipeline.monitoring.request_log as request_log

    def refuse(*args, **kwargs):
        raise AssertionError(f"a whole read: {args} {kwargs}")

    sizes: dict[str, list[int]] = {"summary": [], "labelled": [], "written": []}

    def spy_summary(real):
        def summarise(batches, *args, **kwargs):
            def counted():
                for frame in batches:
                    sizes["summary"].append(len(frame))
                    yield frame
            return real(counted(), *args, **kwargs)
        return summarise

    def spy(real, key):
        def wrapped(frame, *args, **kwargs):
            sizes[key].append(len(frame))
            return real(frame, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(pd, "read_parquet", refuse)
    monkeypatch.setattr(request_log, "read_request_log", refuse)
    read = []
    real_read_table = monitor.read_table
    monkeypatch.setattr(monitor, "read_table", lambda path: read.append(Path(path)) or real_read_table(path))
    monkeypatch.setattr(monitor, "summarise_window", spy_summary(monitor.summarise_window))
    monkeypatch.setattr(loop, "labelled_rows", spy(loop.labelled_rows, "labelled"))
    monkeypatch.setattr(tasks, "conform", spy(tasks.conform, "written"))

    resolved, analysed, decided = _run(served)
    assert resolved["rows"] == 200 and decided["retraining_triggered"]
    assert all(p.parent == loop.label_store("penguins") for p in read), f"only the labels are read whole: {read}"
    for key, seen in sizes.items():
        assert seen and max(seen) <= BATCH, (key, seen)
    assert sum(sizes["written"]) == 200 and len(sizes["written"]) > 1


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []


def test_a_bad_shard_is_named_and_nothing_is_written(home, penguins, tmp_path):
    _, config = home
    shards = tmp_path / "shards"
    shards.mkdir()
    penguins.iloc[:100].assign(model_version=1).to_parquet(shards / "part-0.parquet", index=False)
    (shards / "part-1.parquet").write_bytes(b"PAR1 not a parquet file at all PAR1")
    params = {"config": str(config), "mlflow": False, "current": str(shards)}
    with pytest.raises(tasks.MonitorInputError, match="part-1.parquet"):
        tasks.resolve_task(params, "run-1", END, None)
    assert "window.parquet" not in _leftovers(loop.run_dir("penguins", "run-1"))


def test_a_log_file_that_is_not_text_is_named(served, home):
    pipeline_home, _ = home
    folder = pipeline_home / "request_logs" / "penguins" / (END - timedelta(hours=1)).strftime("%Y-%m-%d")
    bad = folder / f"{(END - timedelta(hours=1)):%H}-99999.jsonl"
    bad.write_bytes(b'{"request_id": "x"}\n\xff\xfe broken \x80\n')
    with pytest.raises(tasks.MonitorInputError, match=bad.name):
        tasks.resolve_task(served, "run-1", END, None)
    assert _leftovers(loop.run_dir("penguins", "run-1")) == []


def test_a_failure_while_writing_leaves_no_half_written_window(served, monkeypatch):
    """The log breaks between the version pass and the write (a file removed, a disk error): the write fails, and
    neither a partial ``window.parquet`` nor a temporary file is left; an earlier complete one stays as it was."""
    import pipeline.monitoring.request_log as request_log

    first = tasks.resolve_task(served, "run-1", END, None)
    before = Path(first["window"]).read_bytes()
    real = request_log.iter_request_log
    calls = []

    def breaking(*args, **kwargs):
        calls.append(kwargs)
        batches = real(*args, **kwargs)
        if len(calls) == 2:  # the writing pass: one batch, then the error
            yield next(batches)
            raise OSError("the disk went away")
        yield from batches

    monkeypatch.setattr(request_log, "iter_request_log", breaking)
    with pytest.raises(OSError, match="disk went away"):
        tasks.resolve_task(served, "run-1", END, None)
    run_dir = Path(first["run_dir"])
    assert _leftovers(run_dir) == ["window.parquet"] and Path(first["window"]).read_bytes() == before

    Path(first["window"]).unlink()
    calls.clear()
    with pytest.raises(OSError):
        tasks.resolve_task(served, "run-1", END, None)
    assert _leftovers(run_dir) == []


def test_an_empty_log_window_is_written_with_its_metadata_columns(home):
    _, config = home
    params = {"config": str(config), "mlflow": False}
    resolved = tasks.resolve_task(params, "run-1", END, None)
    assert resolved["rows"] == 0 and resolved["model_version"] == 2, "no traffic: the latest exported version"
    frame = pd.read_parquet(resolved["window"])
    assert len(frame) == 0 and {"request_id", "ts", "model_version"} <= set(frame.columns)
    analysed = tasks.analyse_task(params, "drift_monitor", "run-1", resolved)
    assert analysed["skipped"] and analysed["n_current"] == 0


def test_labelled_rows_of_batches_are_those_of_the_whole_window():
    window = pd.DataFrame({"request_id": [f"r{i}" for i in range(9)], "row": 0, "x": range(9),
                           "ts": pd.to_datetime([5, 1, 7, 2, 8, 3, 0, 6, 4], unit="h", utc=True)})
    labels = pd.DataFrame({"request_id": ["r1", "r4", "r6", "r8", "r4"], "y": ["a", "b", "c", "d", "e"]})
    expected = loop.labelled_rows(window.sort_values("ts", kind="stable"), labels, "y", ["x", "z"])
    batches = [window.iloc[i:i + 4].reset_index(drop=True) for i in range(0, 9, 4)]
    got = loop.labelled_rows_of(iter(batches), labels, "y", ["x", "z"], by_ts=True)
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True))
    assert list(got["y"]) == ["c", "a", "d", "e"], "in ts order; the later duplicate label (r4: e) wins"
    assert len(loop.labelled_rows_of(iter(batches), None, "y", ["x"])) == 0
