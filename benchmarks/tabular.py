"""`pipeline train` with every default on real tables, against scikit-learn's HistGradientBoosting.

    .venv/bin/python benchmarks/tabular.py [--quick] [--tables a,b] [--hgb-only] [--jobs 1] [--out DIR]
                                           [--timeout 1800] [--keep] [--write-docs]

The tables (`benchmarks/tables.py`) ship inside installed packages or come from `pipeline/generate.py`;
nothing is downloaded. Per table:

1. the table is written as CSV (date columns become strings, as in a user's file);
2. a random 20% of rows (seed 0; 10% for flights, so that the pipeline gets at least 300,000 rows) is held out
   and never shown to the pipeline; the rest is ``train.csv``, inside which the pipeline makes its own split;
3. ``.venv/bin/pipeline train --source train.csv --label <label> --model-name <table>`` runs in a fresh
   ``PIPELINE_HOME`` with no config file (the environment's ``AIRFLOW*``, ``MLFLOW_*`` and ``PIPELINE_*``
   variables removed), its output in ``<out>/<table>.pipeline.log``; wall time and peak RSS of its process
   tree (polled every 0.2 s) are measured; a non-zero exit is that table failing and the benchmark goes on;
4. the newest published SavedModel, ``$PIPELINE_HOME/serving/<table>/<version>``, is scored on the held-out
   rows through its ``serving_default`` signature (rows with a missing label dropped);
5. on the same split, in a subprocess measured the same way: HistGradientBoostingClassifier/Regressor with
   default settings and native categorical support (string columns, dates included, as pandas categories)
   and a constant (majority class / training mean).

Floors: accuracy within 0.02 of HGB on each classification table, R² within 0.05 on each regression table
(which also needs the table to train and serve), and the large table (at least 300,000 rows to the pipeline)
trained in under 10 minutes with a process-tree peak RSS under 2 GiB. The last line printed is
``floors met: K/N`` with the unmet ones named; the exit status is non-zero unless all are met.

``--quick`` runs penguins_raw, diabetes, the generated orders table at 5,000 rows and flights subsampled to
20,000 rows (the 300k-row floor is then skipped). ``--hgb-only`` runs the HGB and constant side alone.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# benchmarks/ is not a package: its sibling module is imported from the script's own directory.
from tables import (
    CLASSIFICATION,
    LARGE_ROWS,
    QUICK_TABLES,
    TABLES,
    Table,
    column_kinds,
    holdout_fraction,
    load_table,
)

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- tabular-benchmark:begin -->", "<!-- tabular-benchmark:end -->"

SEED = 0                 # the held-out split
POLL_S = 0.2             # RSS polling interval
BATCH_ROWS = 4096        # rows per call of the serving signature
HGB_MAX_CATEGORIES = 255  # HistGradientBoosting refuses a categorical column with more values (its max_bins)
MIB = 2 ** 20

ACCURACY_TOLERANCE = 0.02
R2_TOLERANCE = 0.05
LARGE_WALL_S = 600.0
LARGE_RSS_MB = 2048.0    # 2 GiB, in MiB like every RSS figure here

# The environment this script started with: children get it, not the quieter TensorFlow logging set here.
USER_ENV = dict(os.environ)


# ------------------------------------------------------------------------------------------------ processes
@dataclass
class Measured:
    """One subprocess run: its exit status, wall time and memory (MiB) summed over its process tree."""

    exit_code: int | None
    wall_s: float
    peak_rss_mb: float
    peak_single_rss_mb: float
    peak_pss_mb: float = 0.0   # proportional set size summed over the tree: shared pages counted once
    timed_out: bool = False
    left_running: list[str] = field(default_factory=list)
    at_peak: list[str] = field(default_factory=list)  # the largest processes at the peak: "MB command"


def _tree(root) -> list:
    import psutil

    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _kill(procs: list) -> None:
    """Kill exactly these processes (each one ours: the child we started and its descendants), by pid."""
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


def run_measured(cmd: list[str], *, env: dict[str, str], cwd: Path, log_path: Path,
                 timeout_s: float) -> Measured:
    """Run ``cmd`` with its stdout and stderr in ``log_path``, polling the RSS of the process and all its
    descendants every 0.2 s. Killed (with its descendants) after ``timeout_s``. Descendants still running
    after it exits (left behind by it, in its session) are named and stopped."""
    import psutil

    start = time.perf_counter()
    with open(log_path, "wb") as log:
        # Its own session: what is still in it after the process exits was left behind by it.
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    root = psutil.Process(proc.pid)
    seen: dict[int, psutil.Process] = {}
    peak_tree = peak_single = peak_pss = 0
    at_peak: list[str] = []
    timed_out = False
    try:
        while proc.poll() is None:
            procs = _tree(root)
            rss, pss = [], []
            for p in procs:
                try:
                    # Two processes importing TensorFlow map the same library pages: summing their RSS counts those
                    # pages twice, PSS splits them between the processes that share them.
                    full = p.memory_full_info()
                    rss.append(full.rss)
                    pss.append(full.pss)
                    seen.setdefault(p.pid, p)
                except psutil.Error:
                    pass
            peak_pss = max(peak_pss, sum(pss))
            if sum(rss) > peak_tree:
                peak_tree, at_peak = sum(rss), _describe(procs)
            peak_single = max([peak_single, *rss])
            if time.perf_counter() - start > timeout_s:
                timed_out = True
                _kill(procs)
                break
            time.sleep(POLL_S)
    except BaseException:  # Ctrl-C or any error here: its own session does not get the terminal's signal
        _kill(_tree(root))
        raise
    exit_code = proc.wait()
    wall = time.perf_counter() - start
    left = []
    for p in seen.values():
        try:
            # is_running() compares the creation time too, so a reused pid is not mistaken for ours.
            if p.pid != proc.pid and p.is_running() and os.getsid(p.pid) == proc.pid:
                left.append(p)
        except (psutil.Error, OSError):
            pass
    if left:
        _gone, alive = psutil.wait_procs(left, timeout=3)  # give a process shutting down a moment
        names = []
        for p in alive:
            try:
                names.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            except psutil.Error:
                names.append(str(p.pid))
        _kill(alive)
        left = names
    code = None if timed_out else exit_code
    return Measured(code, wall, peak_tree / MIB, peak_single / MIB, peak_pss / MIB, timed_out, left, at_peak)


def _describe(procs: list, top: int = 4) -> list[str]:
    """The ``top`` processes by RSS as ``"<MB> MB <command>"``: where the memory of a peak is."""
    import psutil

    rows = []
    for p in procs:
        try:
            rows.append((p.memory_info().rss, " ".join(p.cmdline())[:100]))
        except psutil.Error:
            pass
    return [f"{rss / MIB:,.0f} MB {cmd}" for rss, cmd in sorted(rows, reverse=True)[:top]]


def pipeline_env(home: Path) -> dict[str, str]:
    """The environment of a ``pipeline train`` on all defaults: a fresh ``PIPELINE_HOME``, ``.venv/bin`` first
    on PATH, and none of the variables that point Airflow, MLflow or the pipeline elsewhere."""
    env = {k: v for k, v in USER_ENV.items() if not k.startswith(("AIRFLOW", "MLFLOW_", "PIPELINE_"))}
    env["PIPELINE_HOME"] = str(home)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


# ------------------------------------------------------------------------------------------------ data
def split_holdout(frame, fraction: float, seed: int = SEED):
    """A random ``fraction`` of rows held out (the pipeline never sees them) and the rest, both in the table's
    own row order. Returns ``(train, holdout)``."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(frame))
    n_holdout = round(fraction * len(frame))
    held = np.sort(order[:n_holdout])
    kept = np.sort(order[n_holdout:])
    return frame.iloc[kept].reset_index(drop=True), frame.iloc[held].reset_index(drop=True)


def read_csv(path: Path):
    """A CSV read as ``pipeline``'s ingest reads it (pandas defaults): both sides start from one reading."""
    import pandas as pd

    return pd.read_csv(path, low_memory=False)


def class_key(value) -> str:
    """A class label as a comparable string: ``1``, ``1.0``, ``b"1"`` and ``"1"`` are the same class, and
    ``True``/``"true"`` too, whichever side wrote it."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = str(value).strip()
    if text.lower() in {"true", "false"}:
        return text.lower()
    try:
        number = float(text)
    except ValueError:
        return text
    return f"{number:.12g}" if math.isfinite(number) else text


def class_keys(values) -> list[str]:
    return [class_key(v) for v in values]


def metrics(task: str, y_true, y_pred) -> dict[str, float]:
    """Accuracy and macro-F1 for classification (labels as class keys), R² and MAE for regression."""
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score

    if task == CLASSIFICATION:
        return {"accuracy": float(accuracy_score(y_true, y_pred)),
                "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}
    return {"r2": float(r2_score(y_true, y_pred)), "mae": float(mean_absolute_error(y_true, y_pred))}


def primary(task: str) -> str:
    return "accuracy" if task == CLASSIFICATION else "r2"


# ------------------------------------------------------------------------------------------------ HGB side
def hgb_features(x_train, x_test):
    """HGB's inputs with its defaults: numeric and bool columns as they are, every other column (strings,
    date strings included) a pandas category over the training values. A column with more than 255 values is
    cut to its 255 most frequent training values, the rest missing: HGB refuses more (its ``max_bins``).
    Returns ``(x_train, x_test, {cut column: distinct training values})``."""
    import pandas as pd

    x_train, x_test = x_train.copy(), x_test.copy()
    cut: dict[str, int] = {}
    for col in x_train.columns:
        s = x_train[col]
        if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            if not (pd.api.types.is_numeric_dtype(x_test[col]) or pd.api.types.is_bool_dtype(x_test[col])):
                # Numbers in the training rows, some text among the held-out ones: read as HGB would fail to.
                x_test[col] = pd.to_numeric(x_test[col], errors="coerce")
            continue
        counts = s.dropna().astype(str).value_counts()
        if len(counts) > HGB_MAX_CATEGORIES:
            cut[col] = len(counts)
            # Most frequent first; ties broken by value so that the cut does not depend on row order.
            counts = counts.rename_axis("value").reset_index().sort_values(["count", "value"],
                                                                           ascending=[False, True])
            values = counts["value"].head(HGB_MAX_CATEGORIES)
        else:
            values = counts.index
        dtype = pd.CategoricalDtype(sorted(values))
        x_train[col] = s.astype(str).where(s.notna()).astype(dtype)
        x_test[col] = x_test[col].astype(str).where(x_test[col].notna()).astype(dtype)
    return x_train, x_test, cut


def hgb_worker(train_csv: Path, holdout_csv: Path, label: str, task: str, result: Path) -> int:
    """Fit HGB on ``train_csv`` and score it and a constant on ``holdout_csv``; write the result as JSON.
    Runs in its own process so that its memory is measured as the pipeline's is."""
    import warnings

    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    warnings.filterwarnings("ignore")
    train, holdout = read_csv(train_csv), read_csv(holdout_csv)
    train, holdout = train[train[label].notna()], holdout[holdout[label].notna()]
    start = time.perf_counter()
    x_train, x_test, cut = hgb_features(train.drop(columns=[label]), holdout.drop(columns=[label]))
    # random_state only fixes the validation split of HGB's early stopping (on from 10,000 rows).
    if task == CLASSIFICATION:
        y_train, y_true = class_keys(train[label]), class_keys(holdout[label])
        model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    else:
        y_train, y_true = train[label].astype(float).to_numpy(), holdout[label].astype(float).to_numpy()
        model = HistGradientBoostingRegressor(categorical_features="from_dtype", random_state=0)
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)
    fit_predict_s = time.perf_counter() - start
    if task == CLASSIFICATION:
        values, counts = np.unique(y_train, return_counts=True)
        constant = [values[np.argmax(counts)]] * len(y_true)
    else:
        constant = np.full(len(y_true), float(np.mean(y_train)))
    out = {"fit_predict_s": fit_predict_s, "hgb": metrics(task, y_true, list(predicted)),
           "constant": metrics(task, y_true, constant), "n_train": len(train), "n_scored": len(holdout),
           "n_iter": int(model.n_iter_), "cut_columns": cut}
    result.write_text(json.dumps(out, indent=2))
    return 0


def run_hgb(table: Table, train_csv: Path, holdout_csv: Path, out_dir: Path, timeout_s: float) -> dict:
    """The HGB worker in a subprocess, measured; its JSON result plus wall time and memory."""
    result = out_dir / f"{table.name}.hgb.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--hgb-worker", "--train", str(train_csv),
           "--holdout", str(holdout_csv), "--label", table.label, "--task", table.task,
           "--result", str(result)]
    log = out_dir / f"{table.name}.hgb.log"
    m = run_measured(cmd, env=dict(USER_ENV), cwd=ROOT, log_path=log, timeout_s=timeout_s)
    out = {"process": asdict(m), "log": str(log)}
    if m.exit_code == 0 and result.exists():
        out.update(json.loads(result.read_text()), status="ok")
    else:
        out.update(status="failed", error=failure_reason(log.read_text(errors="replace"), m))
    return out


# ---------------------------------------------------------------------------------------------- pipeline side
def published_version(home: Path, model_name: str) -> Path | None:
    """``$PIPELINE_HOME/serving/<model>/<highest numeric version>``, or None when nothing was published."""
    base = home / "serving" / model_name
    versions = [p for p in base.iterdir() if p.is_dir() and p.name.isdigit()] if base.is_dir() else []
    return max(versions, key=lambda p: int(p.name)) if versions else None


def serving_strings(s) -> list[str]:
    """A column as the strings a client sends for a categorical input: the value as ``str``, missing as "",
    a datetime as ``YYYY-MM-DD HH:MM:SS``, a bool as "true"/"false"."""
    import numpy as np
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(s):
        return s.dt.strftime("%Y-%m-%d %H:%M:%S").fillna("").tolist()
    out = []
    for v in s.tolist():
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT or v is pd.NA:
            out.append("")
        elif isinstance(v, (bool, np.bool_)):
            out.append("true" if v else "false")
        else:
            out.append(str(v))
    return out


def serving_inputs(frame, input_specs: dict) -> dict:
    """The signature's inputs for the rows of ``frame``: one rank-1 array per input, found by the column's key
    (:func:`pipeline.features.column_key`); numeric inputs coerced (NaN where missing or not a number)."""
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from pipeline.features import column_key

    by_key = {column_key(c): c for c in frame.columns}
    arrays = {}
    for name, spec in input_specs.items():
        if name not in by_key:
            raise KeyError(f"serving input {name!r} matches no column of the held-out rows")
        s = frame[by_key[name]]
        if spec.dtype == tf.string:
            arrays[name] = np.asarray(serving_strings(s), dtype=object)
        elif spec.dtype.is_floating:
            arrays[name] = pd.to_numeric(s, errors="coerce").to_numpy(dtype=spec.dtype.as_numpy_dtype)
        else:  # an integer or bool input (not in the contract, but cheap to support): missing as 0
            numbers = pd.to_numeric(s, errors="coerce").fillna(0).to_numpy()
            arrays[name] = numbers.astype(spec.dtype.as_numpy_dtype)
    return arrays


def score_saved_model(model_dir: Path, holdout, label: str, task: str) -> dict:
    """Score the SavedModel's ``serving_default`` on the held-out rows whose label is present.

    Returns the metrics, the task the model serves (``classification`` when it outputs ``classes``), and the
    number of rows scored. A class the model never saw cannot be predicted, so it counts as wrong.
    """
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(str(model_dir))
    signature = loaded.signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    rows = holdout[holdout[label].notna()].reset_index(drop=True)
    predictions: list = []
    served = None
    for start in range(0, len(rows), BATCH_ROWS):
        batch = rows.iloc[start:start + BATCH_ROWS]
        inputs = serving_inputs(batch, specs)
        outputs = signature(**{k: tf.constant(v) for k, v in inputs.items()})
        if "classes" in outputs and "probabilities" in outputs:
            served = CLASSIFICATION
            probabilities, classes = outputs["probabilities"].numpy(), outputs["classes"].numpy()
            best = classes[np.arange(len(batch)), np.argmax(probabilities, axis=1)]
            predictions += class_keys(best)
        elif "value" in outputs:
            served = "regression"
            predictions += outputs["value"].numpy().reshape(-1).astype(float).tolist()
        else:
            raise KeyError(f"serving_default outputs {sorted(outputs)}: not classes/probabilities, not value")
    out = {"served_task": served, "n_scored": len(rows), "inputs": sorted(specs)}
    if served != task:
        out["error"] = f"served a {served} model for a {task} table"
        return out
    y_true = class_keys(rows[label]) if task == CLASSIFICATION else rows[label].astype(float).to_numpy()
    out["metrics"] = metrics(task, y_true, predictions)
    return out


def failure_reason(log_text: str, m: Measured) -> str:
    """A one-line reason for a failed run, from its log: the failed tasks and the last exception line."""
    if m.timed_out:
        return f"timed out after {m.wall_s:.0f} s"
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    failed = next((ln for ln in reversed(lines) if ln.startswith("Failed tasks:")), "")
    error = next((ln for ln in reversed(lines) if re.search(r"\b\w*(Error|Exception)\b[:(]", ln)), "")
    reason = "; ".join(x for x in (failed, error) if x) or (lines[-1] if lines else "no output")
    return f"exit {m.exit_code}: {reason}"[:300]


def run_pipeline(table: Table, train_csv: Path, holdout, work: Path, out_dir: Path, timeout_s: float) -> dict:
    """``pipeline train`` on ``train_csv`` in a fresh home, measured; then the published model scored."""
    home = work / "pipeline_home"
    shutil.rmtree(home, ignore_errors=True)
    cmd = [str(VENV_BIN / "pipeline"), "train", "--source", str(train_csv), "--label", table.label,
           "--model-name", table.name]
    log = out_dir / f"{table.name}.pipeline.log"
    m = run_measured(cmd, env=pipeline_env(home), cwd=work, log_path=log, timeout_s=timeout_s)
    text = log.read_text(errors="replace")
    found = re.findall(r"^(DAG run|Blessed|Deployed|Failed tasks):\s+(.*)$", text, re.MULTILINE)
    summary = {k: v.strip() for k, v in found}
    out = {"command": shlex.join(cmd), "process": asdict(m), "log": str(log), "summary": summary}
    if m.exit_code != 0:
        return {**out, "status": "failed", "error": failure_reason(text, m)}
    model_dir = published_version(home, table.name)
    if model_dir is None:
        return {**out, "status": "failed",
                "error": f"exit 0 but nothing published under serving/{table.name} "
                         f"(Deployed: {summary.get('Deployed', '?')})"}
    out["model_dir"] = str(model_dir.relative_to(home))
    try:
        scored = score_saved_model(model_dir, holdout, table.label, table.task)
    except Exception as exc:  # noqa: BLE001  (a model that cannot be served fails its table, not the run)
        return {**out, "status": "failed", "error": f"scoring failed: {type(exc).__name__}: {exc}"[:300]}
    out.update(scored)
    out["status"] = "failed" if "error" in scored else "ok"
    return out


# ------------------------------------------------------------------------------------------------ one table
def run_table(table: Table, args: argparse.Namespace, out_dir: Path, work_root: Path) -> dict:
    """Load, split, write the CSVs, run both sides, and return everything measured for ``table``."""
    frame = load_table(table, args.quick)
    fraction = holdout_fraction(table, args.quick)
    train, holdout = split_holdout(frame, fraction)
    work = work_root / table.name
    work.mkdir(parents=True, exist_ok=True)
    train_csv, holdout_csv = work / "train.csv", work / "holdout.csv"
    train.to_csv(train_csv, index=False)
    holdout.to_csv(holdout_csv, index=False)
    result = {"table": table.name, "source": table.source, "task": table.task, "label": table.label,
              "rows": len(frame), "columns": frame.shape[1],
              "kinds": column_kinds(frame, table.label, table.task), "holdout_fraction": fraction,
              "train_rows": len(train), "holdout_rows": len(holdout),
              "large": table.large}
    del frame, train, holdout
    if not args.hgb_only:
        holdout = read_csv(holdout_csv)
        result["pipeline"] = run_pipeline(table, train_csv, holdout, work, out_dir, args.timeout)
        del holdout
    result["hgb"] = run_hgb(table, train_csv, holdout_csv, out_dir, args.timeout)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(progress_line(result), flush=True)
    return result


def progress_line(r: dict) -> str:
    key = primary(r["task"])
    parts = [f"{r['table']}: {r['rows']:,} rows"]
    p = r.get("pipeline")
    if p is not None:
        ok = p["status"] == "ok"
        parts.append(f"pipeline {p['metrics'][key]:.3f} in {p['process']['wall_s']:.0f} s" if ok
                     else f"pipeline FAILED ({p['error']})")
    h = r["hgb"]
    parts.append(f"HGB {h['hgb'][key]:.3f}, constant {h['constant'][key]:.3f}" if h["status"] == "ok"
                 else f"HGB FAILED ({h['error']})")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------ floors
@dataclass
class Floor:
    """One floor of the issue, judged: which table and kind (``metric``, ``wall``, ``rss``), whether it is
    met, and a short description (``cars accuracy gap -0.031``, ``flights wall 712 s > 600 s``)."""

    table: str
    kind: str
    met: bool
    detail: str


def evaluate_floors(results: list[dict]) -> tuple[list[Floor], list[str]]:
    """The floors this run can judge, and notes on those it cannot (the 300k-row floor on a subsample)."""
    floors: list[Floor] = []
    notes: list[str] = []
    for r in results:
        p, h, name = r.get("pipeline"), r["hgb"], r["table"]
        if p is None:
            continue
        key = primary(r["task"])
        tol = ACCURACY_TOLERANCE if r["task"] == CLASSIFICATION else R2_TOLERANCE
        label = "accuracy" if key == "accuracy" else "R²"
        if p["status"] != "ok":
            floors.append(Floor(name, "metric", False, f"{name} did not train and serve"))
        elif h["status"] != "ok":
            floors.append(Floor(name, "metric", False, f"{name} has no HGB score to compare with"))
        else:
            gap = p["metrics"][key] - h["hgb"][key]
            floors.append(Floor(name, "metric", gap >= -tol, f"{name} {label} gap {gap:+.3f}"))
        if not r["large"]:
            continue
        if r["train_rows"] < LARGE_ROWS:
            notes.append(f"{name}: the pipeline got {r['train_rows']:,} rows (a subsample), so the "
                         f"{LARGE_ROWS // 1000}k-row floor (under {LARGE_WALL_S / 60:.0f} min, peak RSS "
                         f"under {LARGE_RSS_MB / 1024:.0f} GiB) is skipped")
            continue
        ok, wall, rss = p["status"] == "ok", p["process"]["wall_s"], p["process"]["peak_pss_mb"]
        why = "" if ok else " (did not train)"
        floors.append(Floor(name, "wall", ok and wall < LARGE_WALL_S,
                            f"{name} wall {wall:.0f} s {'<' if wall < LARGE_WALL_S else '>'} "
                            f"{LARGE_WALL_S:.0f} s{why}"))
        floors.append(Floor(name, "rss", ok and rss < LARGE_RSS_MB,
                            f"{name} peak memory (PSS) {rss:,.0f} MB {'<' if rss < LARGE_RSS_MB else '>'} "
                            f"{LARGE_RSS_MB:,.0f} MB{why}"))
    return floors, notes


def floors_line(floors: list[Floor], hgb_only: bool) -> str:
    """The last line: ``floors met: K/N``, then the unmet ones named."""
    if hgb_only:
        return "floors met: 0/0 (--hgb-only: the pipeline was not run, no floor judged)"
    unmet = [f.detail for f in floors if not f.met]
    line = f"floors met: {len(floors) - len(unmet)}/{len(floors)}"
    return line + (f" (unmet: {', '.join(unmet)})" if unmet else "")


# ------------------------------------------------------------------------------------------------ report
def load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min) / {five:.2f} (5 min)"


def machine_line() -> str:
    versions = []
    for dist, shown in (("scikit-learn", "scikit-learn"), ("tensorflow", "TensorFlow")):
        try:
            versions.append(f"{shown} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join([platform.machine(), f"{os.cpu_count()} cores", f"Python {platform.python_version()}",
                      *versions])


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _metric_cell(task: str, m: dict | None) -> str:
    if m is None:
        return "-"
    if task == CLASSIFICATION:
        return f"{m['accuracy']:.3f} (F1 {m['macro_f1']:.3f})"
    return f"{m['r2']:.3f}"


def _rss_cell(proc: dict | None) -> str:
    return "-" if proc is None else (f"{proc.get('peak_pss_mb', 0):,.0f} / {proc['peak_rss_mb']:,.0f} "
                                     f"({proc['peak_single_rss_mb']:,.0f})")


def render(results: list[dict], floors: list[Floor], floor_notes: list[str], context: dict) -> str:
    """The markdown section: command, machine, load, the results table, floors and notes."""
    command = (f"Command: `{context['command']}` (machine: {context['machine']}; load average "
               f"{context['load_start']} at the start, {context['load_end']} at the end; "
               f"{context['elapsed_s'] / 60:.1f} min in all).")
    method = (
        "Each table (benchmarks/tables.py says why each was chosen) is written as CSV; a random 20% of "
        "its rows (seed 0; 10% for flights, so that the pipeline gets over 300,000 rows) is held out and "
        "never shown to the pipeline. `pipeline train --source train.csv --label <label> --model-name "
        "<table>` runs with no config (every default, its own split inside the rest) in a fresh "
        "`PIPELINE_HOME`; the SavedModel it publishes is scored on the held-out rows through "
        "`serving_default`. On the same split: scikit-learn's HistGradientBoosting with default settings "
        "and native categorical support (string columns, dates included, as pandas categories) and a "
        "constant (majority class / training mean). Held-out rows with a missing label are not scored. "
        "Classification: accuracy (macro-F1); regression: R². Gap: pipeline minus HGB. Wall time: the "
        "whole `pipeline train` process (Airflow, MLflow, every stage, export, deploy) vs HGB's fit + "
        "predict. Peak memory: PSS summed over the process tree (pages shared between processes, such as the "
        "TensorFlow libraries both the trainer and the deploy sandbox map, counted once) / RSS summed over the "
        "tree (those pages counted in every process) (the largest single process's RSS in brackets), polled "
        "every 0.2 s; the memory floor is judged on the PSS sum. MB are MiB."
    )
    header = ("| table | task | rows | columns | kinds present | pipeline | HGB | constant | gap | "
              "pipeline wall s | HGB wall s | pipeline peak PSS / RSS MB | HGB peak PSS / RSS MB | floor met? |")
    lines = [
        "## Tabular: `pipeline train` with defaults vs HistGradientBoosting (`benchmarks/tabular.py`)",
        "",
        command,
        "",
        method,
        "",
        header,
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    by_table: dict[str, list[Floor]] = {}
    for f in floors:
        by_table.setdefault(f.table, []).append(f)
    tasks = {r["table"]: r["task"] for r in results}
    failures, cuts, peaks = [], [], []
    for r in results:
        p, h, task = r.get("pipeline"), r["hgb"], r["task"]
        key = primary(task)
        p_ok, h_ok = p is not None and p["status"] == "ok", h["status"] == "ok"
        p_metric = p["metrics"] if p_ok else None
        h_metric = h["hgb"] if h_ok else None
        gap = p_metric[key] - h_metric[key] if p_metric and h_metric else None
        judged = by_table.get(r["table"], [])
        unmet = [f.detail.removeprefix(r["table"] + " ") for f in judged if not f.met]
        met = "-" if not judged else f"no ({'; '.join(unmet)})" if unmet else "yes"
        pipeline_cell = _metric_cell(task, p_metric) if p is None or p_ok else "failed"
        lines.append(
            f"| {r['table']} | {task} | {r['rows']:,} | {r['columns']} | {', '.join(r['kinds'])} | "
            f"{pipeline_cell} | {_metric_cell(task, h_metric)} | "
            f"{_metric_cell(task, h['constant']) if h_ok else '-'} | "
            f"{'-' if gap is None else f'{gap:+.3f}'} | "
            f"{_num(p['process']['wall_s'], 1) if p else '-'} | {_num(h.get('fit_predict_s'), 2)} | "
            f"{_rss_cell(p['process']) if p else '-'} | {_rss_cell(h['process'])} | {met} |")
        if p is not None and not p_ok:
            failures.append(f"`{r['table']}`: {p['error']} (log: {Path(p['log']).name})")
        if not h_ok:
            failures.append(f"`{r['table']}` HGB: {h['error']}")
        if p is not None and p["process"]["left_running"]:
            failures.append(f"`{r['table']}`: `pipeline train` exited leaving processes running (stopped "
                            f"here): {'; '.join(p['process']['left_running'])}")
        if r["large"] and p is not None and p["process"].get("at_peak"):
            peaks.append(f"{r['table']}: " + "; ".join(f"`{x}`" for x in p["process"]["at_peak"]))
        if h_ok and h.get("cut_columns"):
            cuts.append(f"{r['table']} " + ", ".join(f"`{c}` ({n:,})" for c, n in h["cut_columns"].items()))
    lines.append("")
    if floors:
        lines.append(f"Floors: {sum(f.met for f in floors)} of {len(floors)} met.")
        kinds = ((CLASSIFICATION, ACCURACY_TOLERANCE, "accuracy"), ("regression", R2_TOLERANCE, "R²"))
        for task, tol, label in kinds:
            judged = [f for f in floors if f.kind == "metric" and tasks[f.table] == task]
            if judged:
                unmet = [f.detail for f in judged if not f.met]
                lines.append(f"- {label} within {tol} of HGB (and the table trains and serves): "
                             f"{len(judged) - len(unmet)} of {len(judged)} {task} tables"
                             + (f"; unmet: {', '.join(unmet)}" if unmet else ""))
        lines += [f"- {f.detail}: {'met' if f.met else 'NOT met'} (300k-row floor)"
                  for f in floors if f.kind in {"wall", "rss"}]
    else:
        lines.append("Floors: not judged (the pipeline side was not run).")
    lines += [f"- {n}." for n in floor_notes]
    rows_note = ", ".join(f"{r['table']} {r['train_rows']:,}/{r['holdout_rows']:,}" for r in results)
    lines += ["", f"Rows to the pipeline / held out: {rows_note}."]
    if cuts:
        lines += ["", ("HGB takes at most 255 values in a categorical column (its `max_bins`); these columns "
                       "kept their 255 most frequent training values, the rest missing (distinct training "
                       f"values in brackets): {'; '.join(cuts)}.")]
    if peaks:
        lines += ["", f"Largest processes when the pipeline's process tree peaked: {' '.join(peaks)}."]
    if failures:
        lines += ["", "Failures:"] + [f"- {f}" for f in failures]
    lines += ["", ("Notes: a shared 2-core machine (other work may be running: see the load average), runs "
                   "one after another. The pipeline's wall time includes a fixed cost (Airflow, MLflow, the "
                   "deploy sandbox: about 19 s on penguins in the pipeline-e2e section), so on small tables "
                   "it measures that more than training.")]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace (or append) this benchmark's section of docs/benchmarks.md, leaving other sections alone."""
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(doc)


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"a few minutes: {', '.join(QUICK_TABLES)} (flights subsampled)")
    p.add_argument("--tables", help=f"comma-separated subset of: {', '.join(TABLES)}")
    p.add_argument("--hgb-only", action="store_true", help="only HistGradientBoosting and the constant")
    p.add_argument("--jobs", type=int, default=1, help="tables run at once (default 1: timings need cores)")
    p.add_argument("--out", help="directory for results.json and the logs (default: a new temporary one)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before a run is killed (1800)")
    p.add_argument("--keep", action="store_true", help="keep each table's CSVs and PIPELINE_HOME under --out")
    p.add_argument("--write-docs", action="store_true", help="write the section of docs/benchmarks.md")
    p.add_argument("--from-results", metavar="RESULTS_JSON",
                   help="report (and with --write-docs, write) a finished run's results.json instead of running")
    # The HGB worker: this script run again as a subprocess, so its memory is measured as the pipeline's.
    p.add_argument("--hgb-worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--train", "--holdout", "--label", "--task", "--result"):
        p.add_argument(name, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.hgb_worker:
        return args
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.write_docs and args.hgb_only:
        p.error("--write-docs needs the pipeline side; drop --hgb-only")
    names = [t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else None
    unknown = sorted(set(names or []) - set(TABLES))
    if unknown:
        p.error(f"unknown tables {', '.join(unknown)}; choose from {', '.join(TABLES)}")
    args.selected = names or list(QUICK_TABLES if args.quick else TABLES)
    return args


def report_saved(path: Path, args: argparse.Namespace) -> int:
    """The report of a finished run from its ``results.json`` (floors judged again by this script's rules), so
    the docs can be written from the run that was measured rather than from a second one."""
    saved = json.loads(path.read_text())
    results = saved["tables"]
    floors, floor_notes = evaluate_floors(results)
    text = render(results, floors, floor_notes, saved)
    print(text)
    if args.write_docs:
        write_section(DOCS, text)
        print(f"\nwrote the tabular-benchmark section of {DOCS.relative_to(ROOT)} from {path}")
    print(floors_line(floors, False), flush=True)
    return 0 if all(f.met for f in floors) else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.hgb_worker:
        return hgb_worker(Path(args.train), Path(args.holdout), args.label, args.task, Path(args.result))
    if args.from_results:
        return report_saved(Path(args.from_results), args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # scoring here; a failure raises anyway
    out_dir = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="tabular-benchmark-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    work_root = out_dir / "work" if args.keep else Path(tempfile.mkdtemp(prefix="tabular-work-"))
    shown = [a for i, a in enumerate(argv) if a != "--out" and (i == 0 or argv[i - 1] != "--out")
             and not a.startswith("--out=")]
    context = {"command": shlex.join([".venv/bin/python", "benchmarks/tabular.py", *shown]),
               "machine": machine_line(), "load_start": load_line()}
    print(f"results and logs: {out_dir}", flush=True)
    started = time.perf_counter()
    tables = [TABLES[n] for n in args.selected]
    results: list[dict] = []
    try:
        if args.jobs == 1:
            for t in tables:
                results.append(run_table(t, args, out_dir, work_root))
                (out_dir / "results.json").write_text(json.dumps({**context, "tables": results}, indent=2))
        else:
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                results = list(pool.map(lambda t: run_table(t, args, out_dir, work_root), tables))
    finally:
        if not args.keep:
            shutil.rmtree(work_root, ignore_errors=True)
    context.update(load_end=load_line(), elapsed_s=time.perf_counter() - started)
    floors, floor_notes = evaluate_floors(results)
    text = render(results, floors, floor_notes, context)
    last = floors_line(floors, args.hgb_only)
    (out_dir / "results.json").write_text(json.dumps(
        {**context, "tables": results, "floors": [asdict(f) for f in floors], "floor_notes": floor_notes,
         "floors_line": last}, indent=2))
    print()
    print(text)
    if args.write_docs:
        write_section(DOCS, text)
        print(f"\nwrote the tabular-benchmark section of {DOCS.relative_to(ROOT)}")
    print(f"\nresults: {out_dir / 'results.json'}")
    print(last, flush=True)
    hgb_failed = any(r["hgb"]["status"] != "ok" for r in results)
    if args.hgb_only:
        return 1 if hgb_failed else 0
    return 0 if all(f.met for f in floors) and not hgb_failed else 1


if __name__ == "__main__":
    sys.exit(main())
