"""The whole training DAG on penguins against a plain script doing the same work without Airflow and MLflow.

    .venv/bin/python benchmarks/pipeline_e2e.py [--repeats 3] [--epochs 60] [--write-docs]

Both sides run in fresh interpreters (so both pay for importing TensorFlow), with the same config, seed and
stage functions, and write the same SavedModel. The floor ("plain") is ingest -> validate -> split ->
preprocess -> train -> evaluate -> export/verify -> deploy checks (sandbox server) -> publish, called directly; the framework run is
`pipeline train` (a real Airflow DAG run with MLflow tracking and registration). Reported: median wall time
and the ratio, cold (empty PIPELINE_HOME: Airflow and MLflow databases created) and warm (second run).
Also the time to import the dags folder beyond importing `airflow.sdk` itself.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def plain(home: Path, epochs: int) -> None:
    """The floor: the same stages, called directly, no orchestration, no tracking, no registry. The
    champion (here: the newest version published in ``home``) is the validation reference and is scored on
    the same test split, as in the DAG; the deploy stage's checks run too (signature compatibility, warmup
    requests, the candidate served in a sandbox and checked over REST and gRPC), then the publish."""
    os.environ["PIPELINE_HOME"] = str(home)
    import pandas as pd

    from pipeline import paths
    from pipeline.config import load_config
    from pipeline.deploy import publish, serving_signature, signature_breaks, validate_serving, write_warmup_requests
    from pipeline.evaluate import classification_metrics, decide_blessing, resolve_gate
    from pipeline.export import SCHEMA_FILE, predict_keras, predict_saved_model, write_candidate
    from pipeline.features import FeatureSpec
    from pipeline.ingest import ingest
    from pipeline.preprocess import feature_arrays, fit_preprocessing, label_array, save_preprocessing
    from pipeline.split import split_frame
    from pipeline.train import load_model, train
    from pipeline.validate import load_schema, validate

    cfg = load_config(None, {"training.epochs": epochs})
    name, model_dir = cfg.serving.model_name, paths.serving_base() / cfg.serving.model_name
    published = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()) if model_dir.exists() else []
    champion = model_dir / str(published[-1]) if published else None
    version = published[-1] + 1 if published else 1
    run = f"plain{version}"
    snap = ingest(cfg.source, paths.data_dir(run), cfg.label)
    df = pd.read_parquet(snap.path)
    reference = load_schema(champion / "assets.extra" / SCHEMA_FILE) if champion else None
    result = validate(df, cfg.label, cfg.task, cfg.features, cfg.labels, reference=reference)
    spec = FeatureSpec.from_dict(result.schema["features"])
    parts = split_frame(df, spec.label, cfg.split, spec.task, cfg.labels)
    meta = fit_preprocessing(parts["train"], spec)
    save_preprocessing(meta, paths.run_dir(run) / "preprocess")
    trained = train(parts["train"], parts["val"], meta, cfg.model, cfg.training, paths.run_dir(run) / "train",
                    seed=cfg.split.seed)
    model = load_model(trained.model_path, meta, cfg.model)
    y = label_array(parts["test"], meta)
    metrics = classification_metrics(y, predict_keras(model, parts["test"], meta), meta.class_names)
    champion_metrics = (classification_metrics(y, predict_saved_model(champion, parts["test"], spec), meta.class_names)
                        if champion else None)
    decision = decide_blessing(metrics, resolve_gate(cfg.gate, spec.task), champion_metrics)
    tmp, _ = write_candidate(model, meta, parts["test"], model_dir, {}, result.schema)
    if decision.blessed:  # the deploy stage's work: checks, warmup file, infra validation in a sandbox, publish
        if champion and signature_breaks(serving_signature(champion), serving_signature(tmp)):
            raise SystemExit("the candidate's signature breaks the champion's clients")
        inputs = feature_arrays(parts["test"], spec)
        write_warmup_requests(tmp, name, inputs, cfg.deploy.warmup_rows)
        validate_serving(tmp, name, version, inputs, predict_keras(model, parts["test"], meta), cfg.deploy)
        publish(tmp, model_dir, version)
    print(json.dumps({"accuracy": metrics["accuracy"], "epochs_run": trained.epochs_run, "version": version,
                      "blessed": decision.blessed}))


def timed(cmd: list[str], home: Path, cache: Path) -> tuple[float, str]:
    env = {**os.environ, "PIPELINE_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "TF_CPP_MIN_LOG_LEVEL": "2", "PIPELINE_CACHE": str(cache)}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return elapsed, out.stdout


def task_phases(output: str, total: float) -> dict[str, float]:
    """Seconds in each task and outside them (start-up before the first, summary and exit after the last),
    from the timestamps of the ``[DAG TEST]`` log lines and the process's wall time ``total``."""
    import re
    from datetime import datetime

    marks = [(datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp(), m.group(2), m.group(3))
             for m in re.finditer(r"^(\S+Z) .*\[DAG TEST\] (starting|end task) task_id=(\w+)", output, re.M)]
    starts = {task: t for t, what, task in marks if what == "starting"}
    ends = {task: t for t, what, task in marks if what == "end task"}
    if not starts or not ends:
        return {}
    out = {"outside the tasks (start-up, summary, exit)": total - (max(ends.values()) - min(starts.values()))}
    out.update({task: ends[task] - starts[task] for task in starts if task in ends})
    return out


def dags_import_time(repeats: int = 5) -> tuple[float, float]:
    """Median seconds to import airflow.sdk, and to import every dags/*.py after it, in fresh interpreters."""
    code = ("import time, runpy, glob, json; t0 = time.perf_counter(); import airflow.sdk; t1 = time.perf_counter();\n"
            "[runpy.run_path(f) for f in sorted(glob.glob('dags/*.py'))]; t2 = time.perf_counter();\n"
            "print(json.dumps([t1 - t0, t2 - t1]))")
    from pipeline.airflow_env import airflow_environ

    env = airflow_environ()
    samples = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, check=True)
        samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--write-docs", action="store_true", help="replace this benchmark's section of docs/benchmarks.md")
    parser.add_argument("--plain", metavar="HOME", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        plain(Path(args.plain), args.epochs)
        return

    root = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    train = [str(BIN / "pipeline"), "train", "--epochs", str(args.epochs)]
    runs = {  # in this order, each repeat in fresh homes: cold (empty home), then warm (the second run there)
        "plain_cold": ("plain", [sys.executable, __file__, "--plain", "{home}", "--epochs", str(args.epochs)]),
        "plain_warm": ("plain", [sys.executable, __file__, "--plain", "{home}", "--epochs", str(args.epochs)]),
        "dag_first": ("first", train),  # an empty home and an empty database template cache
        "dag_cold": ("dag", train),  # an empty home; the databases copied from the templates the first run left
        "dag_warm": ("dag", train),
        "dag_warm_late_sandbox": ("dag", train + ["--no-early-sandbox"]),
    }
    rows = {key: [] for key in runs}
    phases: dict[str, float] = {}
    try:
        for i in range(args.repeats):
            for key, (kind, cmd) in runs.items():
                home = root / f"{kind}{i}"
                elapsed, out = timed([c.replace("{home}", str(home)) for c in cmd], home, root / f"cache{i}")
                rows[key].append(elapsed)
                if key == "dag_warm":
                    phases = task_phases(out, elapsed)
            print(f"repeat {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in rows.items()), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    # Ratios within a repeat (runs minutes apart), then their median: this machine's speed drifts over time.
    floor = {k: "plain_warm" if "warm" in k else "plain_cold" for k in rows}
    ratio = {k: statistics.median(d / p for d, p in zip(rows[k], rows[floor[k]])) for k in rows}
    sdk, dags = dags_import_time()
    lines = [
        "## Training DAG end to end vs a plain script (`benchmarks/pipeline_e2e.py`)",
        "",
        f"Command: `.venv/bin/python benchmarks/pipeline_e2e.py --repeats {args.repeats} --epochs {args.epochs} --write-docs` "
        f"(machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}).",
        "",
        "Both sides are fresh interpreters running the same stage functions on penguins with the same seed, twice in "
        "a fresh home: cold (empty home) and warm (the second run: the first run's model is the champion, scored on "
        "the same test split and compared). A cold `pipeline train` copies its empty Airflow and MLflow databases "
        "from templates that the first run on a machine leaves (`pipeline/db_templates.py`); the first run on a "
        "machine, which migrates both schemas, is its own row, compared with the cold floor. The "
        "floor calls the stages directly: the champion's schema as the validation reference, the champion scored, "
        "the deploy checks (signature compatibility, warmup file, the candidate served in a sandbox server and "
        "checked over REST and gRPC) and the atomic publish. `pipeline train` is a real Airflow DAG run (dag.test, "
        "SQLite metadata database) with MLflow tracking of every stage (SQLite store), the pyfunc model logged, "
        "checked and registered, the deploy stage, aliases and models.config. It starts the deploy stage's sandbox "
        "server before the DAG run (it imports TensorFlow on the second core while Airflow and the first stages run); "
        "the floor starts it when it needs it, and the last row shows `pipeline train` doing the same.",
        "",
        "| run | median wall time (s) | runs (s) | ratio to the floor (median of per-repeat ratios) |",
        "|---|---:|---|---:|",
    ]
    labels = {"plain_cold": "plain script (floor), cold", "plain_warm": "plain script (floor), warm",
              "dag_first": "`pipeline train`, first run on the machine (databases migrated)",
              "dag_cold": "`pipeline train`, cold", "dag_warm": "`pipeline train`, warm",
              "dag_warm_late_sandbox": "`pipeline train --no-early-sandbox`, warm"}
    for key, label in labels.items():
        lines.append(f"| {label} | {med[key]:.1f} | {', '.join(f'{v:.1f}' for v in rows[key])} | {ratio[key]:.2f}x |")
    lines += ["", f"Importing the dags folder: {dags * 1000:.0f} ms beyond importing `airflow.sdk` "
                  f"({sdk * 1000:.0f} ms), median of 5 fresh interpreters. Floors: overhead <= 1.5x the plain script; "
                  "dags import < 300 ms beyond `airflow.sdk`."]
    if phases:
        lines += ["", "Where a warm `pipeline train` spends its time (last repeat, from the task log): "
                      + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()) + "."]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        write_section(ROOT / "docs" / "benchmarks.md", "pipeline-e2e", text)


def write_section(path: Path, name: str, text: str) -> None:
    """Replace (or append) the section between this benchmark's markers, leaving the others alone."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)


if __name__ == "__main__":
    main()
