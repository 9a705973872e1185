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
    """The floor: the same stages, called directly, no orchestration, no tracking, no registry. The deploy
stage's checks run too (warmup requests, the candidate served in a sandbox and checked over REST and gRPC)."""
    os.environ["PIPELINE_HOME"] = str(home)
    import pandas as pd

    from pipeline import paths
    from pipeline.config import load_config
    from pipeline.deploy import validate_serving, write_warmup_requests
    from pipeline.evaluate import classification_metrics, decide_blessing, resolve_gate
    from pipeline.export import predict_keras, publish, write_candidate
    from pipeline.features import FeatureSpec
    from pipeline.ingest import ingest
    from pipeline.preprocess import build_preprocessor, feature_arrays, label_array, save_preprocessor
    from pipeline.split import split_frame
    from pipeline.train import load_model, train
    from pipeline.validate import validate

    cfg = load_config(None, {"training.epochs": epochs})
    work = paths.run_dir("plain")
    snap = ingest(cfg.source, paths.data_dir("plain"), cfg.label)
    df = pd.read_parquet(snap.path)
    f = cfg.features
    result = validate(df, cfg.label, cfg.task, f.numeric, f.categorical, f.exclude)
    spec = FeatureSpec.from_dict(result.schema["features"])
    parts = split_frame(df, spec.label, cfg.split, spec.task)
    pre, meta = build_preprocessor(parts["train"], spec)
    pre_path = save_preprocessor(pre, meta, work / "preprocess")["preprocessor"]
    trained = train(parts["train"], parts["val"], pre_path, meta, cfg.model, cfg.training, work / "train", seed=cfg.split.seed)
    model = load_model(trained.model_path)
    metrics = classification_metrics(label_array(parts["test"], meta), predict_keras(model, parts["test"], meta),
                                     meta.class_names)
    decision = decide_blessing(metrics, resolve_gate(cfg.gate, spec.task), None)
    name, model_dir = cfg.serving.model_name, paths.serving_base() / cfg.serving.model_name
    tmp, _ = write_candidate(model, meta, parts["test"], model_dir, {}, result.schema)
    if decision.blessed:  # the deploy stage's work: warmup file, infra validation in a sandbox server, publish
        inputs = feature_arrays(parts["test"], spec)
        write_warmup_requests(tmp, name, inputs, cfg.deploy.warmup_rows)
        validate_serving(tmp, name, 1, inputs, predict_keras(model, parts["test"], meta), cfg.deploy)
        publish(tmp, model_dir, 1)
    print(json.dumps({"accuracy": metrics["accuracy"], "epochs_run": trained.epochs_run}))


def timed(cmd: list[str], home: Path) -> tuple[float, str]:
    env = {**os.environ, "PIPELINE_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return elapsed, out.stdout


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
    rows = {"plain": [], "dag_cold": [], "dag_warm": []}
    try:
        for i in range(args.repeats):
            rows["plain"].append(timed([sys.executable, __file__, "--plain", str(root / f"plain{i}"), "--epochs",
                                        str(args.epochs)], root / f"plain{i}")[0])
            home = root / f"dag{i}"
            for key in ("dag_cold", "dag_warm"):
                elapsed, out = timed([str(BIN / "pipeline"), "train", "--epochs", str(args.epochs)], home)
                rows[key].append(elapsed)
            print(f"repeat {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in rows.items()), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    sdk, dags = dags_import_time()
    lines = [
        "## Training DAG end to end vs a plain script (`benchmarks/pipeline_e2e.py`)",
        "",
        f"Command: `.venv/bin/python benchmarks/pipeline_e2e.py --repeats {args.repeats} --epochs {args.epochs} --write-docs` "
        f"(machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}).",
        "",
        "Both sides are fresh interpreters running the same stage functions on penguins with the same seed. The floor "
        "calls them directly (the deploy checks included: warmup file, the candidate served in a sandbox server and "
        "checked over REST and gRPC, atomic publish); the framework run is `pipeline train`: a real Airflow DAG run "
        "(dag.test, SQLite metadata database), MLflow tracking of every stage (SQLite store), the pyfunc model logged, "
        "loaded back and registered, the deploy stage, aliases and models.config. Cold: empty PIPELINE_HOME (Airflow and MLflow databases created); warm: a second run.",
        "",
        "| run | median wall time (s) | runs (s) | ratio to the floor |",
        "|---|---:|---|---:|",
    ]
    for key, label in (("plain", "plain script (floor)"), ("dag_cold", "`pipeline train`, cold"),
                       ("dag_warm", "`pipeline train`, warm")):
        lines.append(f"| {label} | {med[key]:.1f} | {', '.join(f'{v:.1f}' for v in rows[key])} | "
                     f"{med[key] / med['plain']:.2f}x |")
    lines += ["", f"Importing the dags folder: {dags * 1000:.0f} ms beyond importing `airflow.sdk` "
                  f"({sdk * 1000:.0f} ms), median of 5 fresh interpreters. Floors: overhead <= 1.5x the plain script; "
                  "dags import < 300 ms beyond `airflow.sdk`."]
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
