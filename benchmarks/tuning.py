"""`pipeline tune` against `pipeline train` with defaults on real tables, both against HistGradientBoosting.

    .venv/bin/python benchmarks/tuning.py [--quick] [--tables a,b,c] [--trials 20] [--out DIR] [--keep]

Per table (`benchmarks/tables.py`; the held-out split, the HGB side and the scoring are `benchmarks/tabular.py`'s):

1. a random 20% of rows is held out, never shown to the pipeline; the rest is ``train.csv``;
2. ``pipeline train --source train.csv --label <label>`` (every default) in a fresh ``PIPELINE_HOME``: the
   default model, published as champion and scored on the held-out rows;
3. in the same ``PIPELINE_HOME``, ``pipeline tune`` with a config of the same source and a ``tuning:``
   section (``SPACE``: learning rate, weight decay, dropout, residual blocks of the default ``tabular`` model;
   ``--trials`` trials, 2 per round): the final model passes the same gate against the default champion, and
   the model served afterwards (the tuned one if blessed, else still the default) is scored on the held-out rows;
4. HistGradientBoosting with defaults on the same split.

Then, on the first table, the wall time of two trials (the default config: ``pipeline.tuning.trial.run_trial``
on the tuning run's split and preprocessing, each in a process of its own, as two trial tasks on two workers)
run one after the other against both at once.

Floors, per table: tuning never makes the served model worse than the default on the held-out rows (by more
than the gate's ``max_regression``, what the gate itself lets through); the gap to HGB shrinks or stays within
noise (one standard error of the held-out metric: ``sqrt(p(1-p)/n)`` for accuracy, 0.02 for R²). The last line
is ``floors met: K/N`` with the unmet ones named; the exit status is non-zero unless all are met.

``--quick``: one table (diabetes), 4 trials.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# benchmarks/ is not a package: its sibling modules are imported from the script's own directory.
from tables import CLASSIFICATION, TABLES, load_table  # noqa: E402
from tabular import (  # noqa: E402
    ROOT, VENV_BIN, failure_reason, load_line, machine_line, pipeline_env, primary, published_version, read_csv,
    run_hgb, run_measured, run_pipeline, score_saved_model, split_holdout,
)

TABLES_DEFAULT = ("penguins_raw", "cars", "diabetes")
QUICK_TABLE = "diabetes"
HOLDOUT = 0.2
GATE_MAX_REGRESSION = 0.02  # GateConfig's default: the gate lets a candidate this much worse through
R2_NOISE = 0.02
SPACE = {
    "training.learning_rate": {"type": "log_uniform", "low": 5e-4, "high": 2e-2},
    "training.weight_decay": {"type": "log_uniform", "low": 1e-6, "high": 1e-2},
    "model.params.dropout": {"type": "uniform", "low": 0.0, "high": 0.4},
    "model.params.blocks": {"type": "int", "low": 1, "high": 3},
}


def tune_config(table, train_csv: Path, trials: int) -> dict:
    """The config of the tuning run: what the defaults infer, plus the ``tuning:`` section."""
    return {"name": table.name, "source": str(train_csv), "label": table.label,
            "tuning": {"n_trials": trials, "trials_per_round": 2, "space": SPACE}}


def run_tune(table, train_csv: Path, holdout, work: Path, out_dir: Path, trials: int, timeout_s: float) -> dict:
    """``pipeline tune`` in the default run's PIPELINE_HOME, measured; then the served model scored."""
    import yaml

    home = work / "pipeline_home"
    config = work / "tune.yaml"
    config.write_text(yaml.safe_dump(tune_config(table, train_csv, trials)))
    log = out_dir / f"{table.name}.tune.log"
    cmd = [str(VENV_BIN / "pipeline"), "tune", "--config", str(config)]
    m = run_measured(cmd, env=pipeline_env(home), cwd=work, log_path=log, timeout_s=timeout_s)
    text = log.read_text(errors="replace")
    lines = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines()) if v}
    out = {"wall_s": m.wall_s, "log": str(log), "blessed": lines.get("Blessed", "?"),
           "best": lines.get("Best parameters", ""), "study": lines.get("Study", ""),
           "dag_run": lines.get("DAG run", "").split(" ")[0]}
    if m.exit_code != 0:
        return {**out, "status": "failed", "error": failure_reason(text, m)}
    served = published_version(home, table.name)
    out.update(score_saved_model(served, holdout, table.label, table.task), served_version=served.name, status="ok")
    return out


def trial_worker(args: argparse.Namespace) -> int:
    """One trial of the default config on a tuning run's artifacts (``--trial-worker``): what a trial task
    computes, in a process of its own."""
    import pandas as pd

    from pipeline.config import load_config
    from pipeline.preprocess import PreprocessMeta
    from pipeline.tuning.trial import run_trial

    runs = Path(args.home) / "runs" / args.run
    cfg = load_config(args.config)
    outcome = run_trial(cfg, pd.read_parquet(runs / "split" / "train.parquet"),
                        pd.read_parquet(runs / "split" / "val.parquet"),
                        PreprocessMeta.load(str(runs / "preprocess" / "meta.json")),
                        Path(args.scratch), args.metric, args.metric not in ("rmse", "mae"), lambda e, v: False)
    print(json.dumps({"state": outcome.state, "value": outcome.value}))
    return 0


def parallel_wall(table, work: Path, out_dir: Path, dag_run: str, timeout_s: float) -> dict:
    """Two trials one after the other, then both at once (each a process: two trial tasks on two workers)."""
    import subprocess

    from pipeline.paths import safe_key

    home = work / "pipeline_home"
    metric = "accuracy" if table.task == CLASSIFICATION else "rmse"

    def cmd(i: int) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--trial-worker", "--home", str(home), "--run",
                safe_key(dag_run), "--config", str(work / "tune.yaml"), "--metric", metric,
                "--scratch", tempfile.mkdtemp(prefix=f"trial{i}-", dir=work)]

    env = pipeline_env(home)
    start = time.perf_counter()
    for i in (0, 1):
        run_measured(cmd(i), env=env, cwd=ROOT, log_path=out_dir / f"{table.name}.serial{i}.log", timeout_s=timeout_s)
    serial = time.perf_counter() - start
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd(i), cwd=ROOT, env=env, stdout=open(out_dir / f"{table.name}.parallel{i}.log", "w"),
                              stderr=subprocess.STDOUT) for i in (2, 3)]
    codes = [p.wait(timeout=timeout_s) for p in procs]
    parallel = time.perf_counter() - start
    return {"serial_s": serial, "parallel_s": parallel, "speedup": serial / parallel, "exit_codes": codes}


def noise(task: str, metric: float, n: int) -> float:
    if task == CLASSIFICATION:
        return math.sqrt(max(metric * (1 - metric), 1e-6) / max(n, 1))
    return R2_NOISE


def judge(r: dict) -> list[tuple[bool, str]]:
    """The table's two floors, as (met, description)."""
    key = primary(r["task"])
    d, t, h = r["default"], r["tuned"], r["hgb"]
    if d.get("status") != "ok" or t.get("status") != "ok" or h.get("status") != "ok":
        why = "; ".join(f"{side} {x.get('error')}" for side, x in (("default", d), ("tune", t), ("HGB", h))
                        if x.get("status") != "ok")
        return [(False, f"{r['table']} did not run ({why})")] * 2
    before, after, hgb = d["metrics"][key], t["metrics"][key], h["hgb"][key]
    tol = noise(r["task"], hgb, r["holdout_rows"])
    return [(after >= before - GATE_MAX_REGRESSION,
             f"{r['table']} served {key} {after:.3f} vs default {before:.3f}"),
            (after - hgb >= before - hgb - tol,
             f"{r['table']} gap to HGB {before - hgb:+.3f} -> {after - hgb:+.3f} (noise {tol:.3f})")]


def render(results: list[dict], parallel: dict | None, context: dict) -> str:
    rows = ["| table | task | rows | default | tuned (served) | HGB | gap before | gap after | blessed | "
            "default wall s | tune wall s | best parameters |", "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in results:
        key = primary(r["task"])
        d, t, h = r["default"], r["tuned"], r["hgb"]
        if "metrics" not in d or "metrics" not in t or "hgb" not in h:
            error = d.get("error") or t.get("error") or h.get("error")
            rows.append(f"| {r['table']} | {r['task']} | {r['rows']:,} | failed: {error} |")
            continue
        before, after, hgb = d["metrics"][key], t["metrics"][key], h["hgb"][key]
        rows.append(f"| {r['table']} | {r['task']} | {r['rows']:,} | {before:.3f} | {after:.3f} (v{t['served_version']}) | "
                    f"{hgb:.3f} | {before - hgb:+.3f} | {after - hgb:+.3f} | {t['blessed']} | "
                    f"{d['process']['wall_s']:.0f} | {t['wall_s']:.0f} | `{t['best']}` |")
    lines = [f"Command: `{context['command']}` (machine: {context['machine']}; load average {context['load_start']} at the "
             f"start, {context['load_end']} at the end; {context['minutes']:.1f} min in all; {context['trials']} trials, "
             f"2 per round). Metric: accuracy (classification) or R² (regression) on the held-out 20%.", "", *rows]
    if parallel:
        lines += ["", f"Two trials of the default config on {results[0]['table']}'s tuning run: one after the other "
                      f"{parallel['serial_s']:.1f} s, both at once (two processes, as two trial tasks on two workers) "
                      f"{parallel['parallel_s']:.1f} s: {parallel['speedup']:.2f}x."]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"{QUICK_TABLE} only, 4 trials")
    p.add_argument("--tables", help=f"comma-separated table names (default {','.join(TABLES_DEFAULT)})")
    p.add_argument("--trials", type=int, help="trials per table (default 20; 4 with --quick)")
    p.add_argument("--out", type=Path, help="directory for logs and results.json (default: a temporary one)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per pipeline command")
    p.add_argument("--keep", action="store_true", help="keep each table's PIPELINE_HOME")
    p.add_argument("--trial-worker", action="store_true", help=argparse.SUPPRESS)
    for flag in ("--home", "--run", "--config", "--metric", "--scratch"):
        p.add_argument(flag, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import shutil

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.trial_worker:
        return trial_worker(args)
    names = args.tables.split(",") if args.tables else [QUICK_TABLE] if args.quick else list(TABLES_DEFAULT)
    trials = args.trials or (4 if args.quick else 20)
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="tuning-bench-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    context = {"command": "python benchmarks/tuning.py" + (" --quick" if args.quick else ""), "machine": machine_line(),
               "load_start": load_line(), "trials": trials}
    started = time.perf_counter()
    results, parallel = [], None
    for name in names:
        table = TABLES[name]
        work = out_dir / name
        work.mkdir(parents=True, exist_ok=True)
        train, holdout = split_holdout(load_table(table), HOLDOUT)
        train_csv, holdout_csv = work / "train.csv", work / "holdout.csv"
        train.to_csv(train_csv, index=False)
        holdout.to_csv(holdout_csv, index=False)
        holdout = read_csv(holdout_csv)
        r = {"table": name, "task": table.task, "rows": len(train) + len(holdout), "holdout_rows": len(holdout)}
        r["default"] = run_pipeline(table, train_csv, holdout, work, out_dir, args.timeout)
        r["tuned"] = run_tune(table, train_csv, holdout, work, out_dir, trials, args.timeout)
        r["hgb"] = run_hgb(table, train_csv, holdout_csv, out_dir, args.timeout)
        if parallel is None and r["tuned"].get("dag_run"):
            parallel = parallel_wall(table, work, out_dir, r["tuned"]["dag_run"], args.timeout)
        results.append(r)
        print(json.dumps({k: r[k] for k in ("table", "task")} | {"floors": judge(r)}), flush=True)
        if not args.keep:
            shutil.rmtree(work / "pipeline_home", ignore_errors=True)
    context.update(load_end=load_line(), minutes=(time.perf_counter() - started) / 60)
    (out_dir / "results.json").write_text(json.dumps({"results": results, "parallel": parallel}, indent=2,
                                                     default=str))
    print(render(results, parallel, context))
    floors = [f for r in results for f in judge(r)]
    unmet = [d for met, d in floors if not met]
    named = f" (unmet: {'; '.join(unmet)})" if unmet else ""
    print(f"floors met: {len(floors) - len(unmet)}/{len(floors)}{named}")
    return 0 if not unmet else 1


if __name__ == "__main__":
    sys.exit(main())
