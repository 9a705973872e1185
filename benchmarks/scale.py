"""Data bigger than memory: `pipeline train` on 1M and 10M generated rows, memory and throughput against floors.

    .venv/bin/python benchmarks/scale.py [--quick] [--rows 1000000 10000000] [--epochs 2] [--write-docs]

The table is `pipeline generate`'s order table (11 features of every kind and the label `outcome`) with 8 noise
columns added (20 columns), written as Parquet shards of 250,000 rows (one chunk generated at a time). For each
size, in a fresh `PIPELINE_HOME`, `pipeline train --source <shards> --label outcome` runs as a subprocess whose
process tree's RSS is polled every 0.2 s: wall time per stage (from its task lines), peak RSS of the whole run
and during each task (the tasks run in that one process; the deploy stage's sandbox server is a child).
Then, on the smallest size's training split and fitted encodings:

- throughput: samples/s of `model.fit` on the default model fed by `pipeline.datasets.parquet_dataset` streaming
  the split's Parquet (preprocessing each epoch), against the ceiling: `model.fit` of the same model on the
  same number of rows already processed into tensors in memory (the same steps; each fit timed on its
  steady-state batches after 5 untimed ones, in 3 alternating rounds whose medians are compared);
- accuracy: the test accuracy of the run (trained from shards) against `pipeline.train.train` on the same
  split read into frames (the in-memory path), with the same config and seed; equal within noise means within
  two standard errors of a difference of two accuracies on that test split.

Floors (the issue's): peak RSS of `pipeline train` on 10M rows < 3 GB, ingest alone < 1 GB; throughput from
shards >= 0.9x the in-memory ceiling; accuracy equal within noise; the drift monitor on a 10M-row window < 2 GB:
a window of `--monitor-rows` rows (another sample of the same table, as Parquet shards) analysed by
`pipeline monitor --direct --current <shards>` against the smallest size's model (its first monitor run, so the
reference is built from the training split too), process-tree peak RSS polled the same way. `--quick` runs
200,000 rows, one epoch, a 200,000-row window, and judges the memory floors on those sizes (named in the output). The last line is `floors met: K/N`; the exit status is non-zero unless all are met.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARD_ROWS = 250_000
LABEL = "outcome"
NOISE_COLUMNS = 8
MB = 1 << 20
TASK_LINE = re.compile(r"^\W*\s*(\w+)\s+(running|success|failed|up_for_retry)(?:\s+([\d.]+)s)?\s*$")


def write_shards(rows: int, out_dir: Path, seed: int = 0, sample: int = 0) -> Path:
    """The generated table of ``rows`` rows (`pipeline generate`'s chunks: one concept, order ids unique over
    the table; ``sample`` another draw of it) with ``NOISE_COLUMNS`` Gaussian columns, as Parquet shards of
    ``SHARD_ROWS`` rows, one in memory at a time."""
    import numpy as np

    from pipeline.generate import iter_chunks

    out_dir.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(iter_chunks(rows, seed, sample=sample, chunk_rows=SHARD_ROWS)):
        rng = np.random.default_rng([seed, i, sample, 1])
        for k in range(NOISE_COLUMNS):
            frame.insert(len(frame.columns) - 1, f"noise_{k}", rng.normal(size=len(frame)))
        frame.to_parquet(out_dir / f"part-{i:05d}.parquet", index=False)
        del frame
    return out_dir


def _tree_memory(proc) -> tuple[int, int]:
    """RSS and PSS summed over ``proc`` and its children (bytes; PSS counts the pages the processes share, such
    as TensorFlow's libraries mapped by the trainer and the deploy sandbox, once), (0, 0) once gone."""
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    rss = pss = 0
    for p in procs:
        try:
            info = p.memory_full_info()
            rss, pss = rss + info.rss, pss + info.pss
        except psutil.Error:
            pass
    return rss, pss


def run_pipeline(source: Path, home: Path, epochs: int) -> dict:
    """`pipeline train` on ``source`` in ``home``: wall time, stage durations, peak RSS overall and per task."""
    import psutil

    env = {**os.environ, "PIPELINE_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [str(BIN / "pipeline"), "train", "--source", str(source), "--label", LABEL, "--model-name", "scale",
           "--epochs", str(epochs), "--no-early-sandbox"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, int, int]] = []
    done = threading.Event()

    def poll():
        while not done.is_set():
            samples.append((time.monotonic(), *_tree_memory(ps)))
            time.sleep(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    windows: dict[str, list[float]] = {}
    took: dict[str, float] = {}
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        m = TASK_LINE.match(line.rstrip())
        if m:
            task, state, secs = m.groups()
            now = time.monotonic()
            if state == "running":
                windows[task] = [now, now]
            elif task in windows:
                windows[task][1] = now
                took[task] = float(secs) if secs else now - windows[task][0]
    rc = proc.wait()
    done.set()
    poller.join()
    wall = time.monotonic() - start
    if rc != 0:
        print("\n".join(lines[-40:]), file=sys.stderr)
        raise SystemExit(f"pipeline train failed (exit {rc}) on {source}")
    peak = {task: max((r for t, r, _ in samples if a <= t <= b), default=0) for task, (a, b) in windows.items()}
    return {"wall_s": wall, "stages_s": took, "peak_rss": max(r for _, r, _ in samples), "task_peak_rss": peak,
            "peak_pss": max(p for _, _, p in samples), "output": lines}


def run_monitor_window(home: Path, rows: int, out_dir: Path) -> dict:
    """`pipeline monitor --direct` on a generated window of ``rows`` rows (Parquet shards) against the model
    ``scale`` of ``home``: wall time, rows/s, peak RSS of its process tree, and the drift decision."""
    import psutil

    t = time.monotonic()
    window = write_shards(rows, out_dir, sample=1)  # new rows of the training distribution
    gen_s = time.monotonic() - t
    env = {**os.environ, "PIPELINE_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [str(BIN / "pipeline"), "monitor", "--direct", "--current", str(window), "--model-name", "scale",
           "--json", "--no-mlflow"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = [0]
    done = threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_memory(ps)[0])
            time.sleep(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out, err = proc.communicate()
    wall = time.monotonic() - start
    done.set()
    poller.join()
    try:
        doc = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        doc = {}
    return {"rows": rows, "generate_s": gen_s, "wall_s": wall, "rows_per_s": rows / wall, "peak_rss": peak[0],
            "returncode": proc.returncode, "n_current": doc.get("n_current"),
            "dataset_drift": doc.get("dataset_drift"), "drift_reason": doc.get("drift_reason"),
            "error": None if proc.returncode == 0 else (err or out)[-2000:]}


def _run_dir(home: Path) -> Path:
    runs = sorted((home / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    return runs[-1]


def test_accuracy(home: Path) -> tuple[float, int]:
    """The run's test accuracy and test rows (its evaluate stage's metrics file)."""
    metrics = json.loads((_run_dir(home) / "evaluate" / "metrics.json").read_text())
    return float(metrics["metrics"]["accuracy"]), int(metrics["test_rows"])


def _compiled_body(meta, cfg):
    import keras

    from pipeline.config import ModelConfig
    from pipeline.train import _optimizer, build_body

    keras.utils.set_random_seed(0)
    model = build_body(meta, ModelConfig())
    model.compile(optimizer=_optimizer(cfg, 10_000), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _steady_rate(batch: int, skip: int, fit) -> float:
    """Samples/s of ``fit(callbacks)`` from the end of its ``skip``-th batch to the end of its last: the
    iterator's start (reading and shuffling a first block, slicing the tensors) is left out, as it is paid once
    an epoch, not once every few dozen batches."""
    import keras

    ends: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, b, logs=None):
            ends.append(time.perf_counter())

    fit([Timer()])
    return (len(ends) - skip) * batch / (ends[-1] - ends[skip - 1])


def throughput(home: Path, steps: int, rounds: int = 3) -> dict:
    """Samples/s of `model.fit` from the split's Parquet (streamed, preprocessed in tf.data) and from the same
    number of rows processed into tensors beforehand (the ceiling): ``steps`` batches timed after ``warm``
    untimed ones in each fit (:func:`_steady_rate`), in ``rounds`` alternating rounds (streamed, ceiling,
    streamed, ...) whose medians are compared, so that a burst of other load on the shared machine does not
    fall on one side only."""
    import statistics

    import tensorflow as tf

    from pipeline.config import TrainingConfig
    from pipeline.datasets import iter_frames, parquet_dataset, parquet_rows
    from pipeline.preprocess import (PreprocessMeta, build_preprocessor, feature_arrays, label_array,
                                     processed_dataset)
    from pipeline.train import plan

    run = _run_dir(home)
    meta = PreprocessMeta.load(run / "preprocess" / "meta.json")
    train_path = run / "split" / "train.parquet"
    cfg = TrainingConfig()
    batch = plan(parquet_rows(train_path), cfg).batch_size
    pre = build_preprocessor(meta)
    warm = 5

    streamed_model = _compiled_body(meta, cfg)
    streamed = parquet_dataset(train_path, meta, pre, batch, shuffle=True, seed=0, cache_bytes=0).repeat()
    rows = next(iter_frames(train_path, batch_rows=(steps + warm) * batch))
    x = pre({k: tf.constant(v) for k, v in feature_arrays(rows, meta.feature_spec).items()})
    y = tf.constant(label_array(rows, meta))
    memory_model = _compiled_body(meta, cfg)
    # the in-memory path for a frame whose processed rows do not fit training.in_memory_mb (as at 1M rows):
    # the raw rows in memory, shuffled and preprocessed again each epoch (shown, not judged)
    frame_model = _compiled_body(meta, cfg)
    frame_ds = processed_dataset(rows, meta, pre, batch, shuffle=True, seed=0, cache_bytes=0).repeat()
    ours, ceiling, frame = [], [], []
    for _ in range(rounds + 1):  # the first round compiles each: not counted
        ours.append(_steady_rate(batch, warm, lambda cb: streamed_model.fit(
            streamed, steps_per_epoch=steps + warm, epochs=1, verbose=0, callbacks=cb)))
        ceiling.append(_steady_rate(batch, warm, lambda cb: memory_model.fit(
            x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True, callbacks=cb)))
        frame.append(_steady_rate(batch, warm, lambda cb: frame_model.fit(
            frame_ds, steps_per_epoch=steps + warm, epochs=1, verbose=0, callbacks=cb)))
    ours, ceiling, frame = ours[1:], ceiling[1:], frame[1:]
    del x, y, rows, frame_ds
    ours_s, ceiling_s = statistics.median(ours), statistics.median(ceiling)
    return {"batch": batch, "steps": steps, "rounds": rounds, "ours": ours_s, "ceiling": ceiling_s,
            "ratio": ours_s / ceiling_s, "ours_rounds": ours, "ceiling_rounds": ceiling,
            "frame": statistics.median(frame), "frame_rounds": frame,
            "numeric_width": meta.model_spec().numeric_width, "text_width": sum(meta.model_spec().text.values())}


def in_memory_accuracy(home: Path, epochs: int) -> tuple[float, int]:
    """The in-memory path: `train` on the run's split read into frames, scored on its test split."""
    import pandas as pd

    from pipeline.config import ModelConfig, TrainingConfig
    from pipeline.export import predict_keras
    from pipeline.preprocess import PreprocessMeta, label_array
    from pipeline.train import load_model, train

    run = _run_dir(home)
    meta = PreprocessMeta.load(run / "preprocess" / "meta.json")
    train_df = pd.read_parquet(run / "split" / "train.parquet")
    val_df = pd.read_parquet(run / "split" / "val.parquet")
    result = train(train_df, val_df, meta, ModelConfig(), TrainingConfig(epochs=epochs), run / "in_memory", seed=42)
    del train_df, val_df
    test = pd.read_parquet(run / "split" / "test.parquet")
    y = label_array(test, meta)
    keep = y >= 0
    pred = predict_keras(load_model(result.model_path, meta), test[keep].reset_index(drop=True), meta)
    return float((pred.argmax(axis=1) == y[keep]).mean()), int(keep.sum())


def measure(args) -> dict:
    sizes = [200_000] if args.quick else args.rows
    epochs = 1 if args.quick else args.epochs
    out: dict = {"sizes": {}, "epochs": epochs, "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        tmp = Path(tmp)
        for rows in sizes:
            t = time.monotonic()
            shards = write_shards(rows, tmp / f"data-{rows}")
            gen_s = time.monotonic() - t
            home = tmp / f"home-{rows}"
            print(f"scale: {rows:,} rows generated in {gen_s:.0f} s; pipeline train ...", flush=True)
            result = run_pipeline(shards, home, epochs)
            acc, test_rows = test_accuracy(home)
            result.update(generate_s=gen_s, accuracy=acc, test_rows=test_rows)
            result.pop("output")
            out["sizes"][rows] = result
            print(f"scale: {rows:,} rows: {result['wall_s']:.0f} s, peak RSS {result['peak_rss'] / MB:,.0f} MB, "
                  f"accuracy {acc:.4f}", flush=True)
            if rows == sizes[0]:
                out["throughput"] = throughput(home, steps=20 if args.quick else 120, rounds=3 if args.quick else 5)
                print(f"scale: throughput {json.dumps(out['throughput'])}", flush=True)
                out["in_memory_accuracy"] = in_memory_accuracy(home, epochs)
                out["accuracy_rows"] = rows
                monitor_home = home
        window_rows = sizes[0] if args.quick else args.monitor_rows
        print(f"scale: drift monitor on a {window_rows:,}-row window ...", flush=True)
        out["monitor"] = run_monitor_window(monitor_home, window_rows, tmp / f"window-{window_rows}")
        m = out["monitor"]
        print(f"scale: monitor {window_rows:,} rows: {m['wall_s']:.0f} s ({m['rows_per_s']:,.0f} rows/s), peak RSS "
              f"{m['peak_rss'] / MB:,.0f} MB, exit {m['returncode']}", flush=True)
    return out


def floors(res: dict) -> list[tuple[str, bool, str]]:
    sizes = res["sizes"]
    big = max(sizes)
    run = sizes[big]
    out = []
    out.append((f"peak RSS of pipeline train on {big:,} rows < 3 GB", run["peak_rss"] < 3 * 1024 * MB,
                f"{run['peak_rss'] / MB:,.0f} MB"))
    ingest = run["task_peak_rss"].get("ingest", 0)
    out.append((f"ingest alone on {big:,} rows < 1 GB", 0 < ingest < 1024 * MB, f"{ingest / MB:,.0f} MB"))
    tp = res["throughput"]
    out.append(("training throughput from shards >= 0.9x the in-memory ceiling", tp["ratio"] >= 0.9,
                f"{tp['ours']:,.0f} vs {tp['ceiling']:,.0f} samples/s ({tp['ratio']:.3f}x)"))
    small = sizes[res["accuracy_rows"]]
    mem_acc, n = res["in_memory_accuracy"]
    p = (small["accuracy"] + mem_acc) / 2
    noise = 2 * math.sqrt(2 * p * (1 - p) / n)
    out.append((f"accuracy at {res['accuracy_rows']:,} rows equal to the in-memory path's within noise",
                abs(small["accuracy"] - mem_acc) <= noise,
                f"{small['accuracy']:.4f} vs {mem_acc:.4f} (noise +-{noise:.4f})"))
    mon = res["monitor"]
    ok = mon["returncode"] == 0 and mon["n_current"] == mon["rows"] and 0 < mon["peak_rss"] < 2 * 1024 * MB
    value = (f"{mon['peak_rss'] / MB:,.0f} MB, {mon['wall_s']:.0f} s, {mon['rows_per_s']:,.0f} rows/s"
             + ("" if mon["returncode"] == 0 else f" (exit {mon['returncode']}: {(mon['error'] or '')[-300:]})"))
    out.append((f"drift monitor on a {mon['rows']:,}-row window < 2 GB", ok, value))
    return out


def report(res: dict, judged: list[tuple[str, bool, str]], command: str) -> str:
    load = os.getloadavg()
    lines = ["<!-- scale-benchmark:begin -->", "## Data bigger than memory (`benchmarks/scale.py`)", "",
             f"Command: `{command}` (machine: {platform.machine()}, {os.cpu_count()} cores shared with other "
             f"workers' jobs, load average after the run {load[0]:.2f}/{load[1]:.2f}; Python "
             f"{platform.python_version()}). {res['epochs']} epoch(s).", "",
             "| rows | generate (s) | pipeline train (s) | peak RSS (MB) | peak PSS (MB) | " + " | ".join(
                 f"{s} (s / peak MB)" for s in ("ingest", "validate", "split", "preprocess", "train", "evaluate",
                                                 "export", "register", "deploy")) + " | test accuracy |",
             "|---:|---:|---:|---:|---:|" + "---:|" * 9 + "---:|"]
    for rows, r in sorted(res["sizes"].items()):
        cells = [f"{r['stages_s'].get(s, float('nan')):.1f} / {r['task_peak_rss'].get(s, 0) / MB:,.0f}"
                 for s in ("ingest", "validate", "split", "preprocess", "train", "evaluate", "export", "register",
                           "deploy")]
        lines.append(f"| {rows:,} | {r['generate_s']:.0f} | {r['wall_s']:.0f} | {r['peak_rss'] / MB:,.0f} | "
                     f"{r['peak_pss'] / MB:,.0f} | "
                     + " | ".join(cells) + f" | {r['accuracy']:.4f} |")
    tp = res["throughput"]
    lines += ["", "Peak RSS and PSS are summed over `pipeline train`'s process tree (the deploy stage's sandbox "
                  "server is its child), polled every 0.2 s; a stage's peak is the tree's peak while its task ran. "
                  "The memory floors are judged on RSS.",
              "", f"Throughput at {min(res['sizes']):,} rows (batch {tp['batch']}, {tp['steps']} steps; processed "
                  f"width: numeric {tp['numeric_width']}, TF-IDF {tp['text_width']}): from the Parquet shards "
                  f"{tp['ours']:,.0f} samples/s, in-memory tensors {tp['ceiling']:,.0f} samples/s "
                  f"({tp['ratio']:.3f}x; medians of {tp['rounds']} alternating rounds: streamed "
                  f"{', '.join(f'{v:,.0f}' for v in tp['ours_rounds'])}, in memory "
                  f"{', '.join(f'{v:,.0f}' for v in tp['ceiling_rounds'])}). The in-memory path on the same "
                  f"rows as a frame (raw rows in memory, shuffled and preprocessed each epoch, as `pipeline.train` "
                  f"does when the processed rows exceed `training.in_memory_mb`): {tp['frame']:,.0f} samples/s "
                  f"(streamed {tp['ours'] / tp['frame']:.2f}x that; rounds "
                  f"{', '.join(f'{v:,.0f}' for v in tp['frame_rounds'])}; shown, not judged).", "",
              f"Drift monitor: `pipeline monitor --direct --current <shards>` on a {res['monitor']['rows']:,}-row "
              f"window against the {min(res['sizes']):,}-row model (first run: the reference is built from its "
              f"training split too): {res['monitor']['wall_s']:.0f} s ({res['monitor']['rows_per_s']:,.0f} rows/s), "
              f"peak RSS {res['monitor']['peak_rss'] / MB:,.0f} MB; {res['monitor']['drift_reason']}.",
              "", "Floors:", ""]
    lines += [f"- {'met' if ok else 'NOT met'}: {name}: {value}" for name, ok, value in judged]
    lines += ["", "<!-- scale-benchmark:end -->"]
    return "\n".join(lines)


def write_docs(section: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import write_section

    write_section(section, "<!-- scale-benchmark:begin -->", "<!-- scale-benchmark:end -->")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="200,000 rows, one epoch: a few minutes")
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--monitor-rows", type=int, default=10_000_000, help="rows of the drift monitor's window")
    p.add_argument("--write-docs", action="store_true", help="write the results into docs/benchmarks.md")
    args = p.parse_args(argv)
    command = "python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    res = measure(args)
    judged = floors(res)
    section = report(res, judged, command.strip())
    print(section)
    if args.write_docs:
        write_docs(section)
    unmet = [name for name, ok, _ in judged if not ok]
    print(f"floors met: {len(judged) - len(unmet)}/{len(judged)}" + (f" (unmet: {'; '.join(unmet)})" if unmet else ""))
    return 0 if not unmet else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
