"""Benchmark of the drift analysis against Evidently's DataDriftPreset.

    .venv/bin/python benchmarks/drift.py [--sizes 10000 100000 1000000] [--seeds 20] [--no-peer] [--write-docs]

Frames of 20 numeric and 5 categorical columns (normal, log-normal, uniform and integer-valued numerics;
categoricals of 3 to 10 levels) with drift planted in known columns (``PLANTED``) and trivial changes that must
*not* be called drift (``TRIVIAL``). For each size it reports the wall time of our analysis (reference statistics
cached, as in the monitor; their one-off build timed apart) and of Evidently on the same frames, and each tool's
per-column decisions against the planted truth. Then the false-alarm rate over ``--seeds`` no-drift pairs.

Evidently needs pandas < 3: it runs from its own virtual environment, ``benchmarks/peers/.venv-evidently``,
created here on first use from ``benchmarks/peers/requirements-evidently.txt``, on the same frames written as
Parquet under ``benchmarks/.work/drift/``. ``--write-docs`` rewrites this benchmark's section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.monitoring.drift import DriftConfig, analyse_drift
from pipeline.monitoring.reference import FeatureTypes, build_reference

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
PEER_VENV = PEERS / ".venv-evidently"
WORK = ROOT / "benchmarks" / ".work" / "drift"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- drift-benchmark:begin -->", "<!-- drift-benchmark:end -->"

NUMERIC = tuple(f"num_{i:02d}" for i in range(20))
CATEGORICAL = tuple(f"cat_{i}" for i in range(5))
LEVELS = {
    "cat_0": ({"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.05}),
    "cat_1": ({f"k{i}": s for i, s in enumerate([0.3, 0.25, 0.2, 0.1, 0.1, 0.05])}),
    "cat_2": ({"x": 0.4, "y": 0.35, "z": 0.25}),
    "cat_3": ({f"v{i}": 0.1 for i in range(10)}),
    "cat_4": ({"p": 0.6, "q": 0.3, "r": 0.1}),
}
PLANTED = {
    "num_00": "mean +0.5 sd",
    "num_01": "spread x1.5",
    "num_02": "20% of values missing",
    "cat_0": "major category 50% -> 60%",
    "cat_1": "new category in 5% of rows",
}
TRIVIAL = {"num_04": "mean +0.02 sd", "cat_2": "share 40% -> 41%"}


def _numeric(rng: np.random.Generator, i: int, n: int) -> np.ndarray:
    kind = i % 4
    if kind == 0:
        return rng.normal(10.0 * i, 1.0 + i, n)
    if kind == 1:
        return rng.lognormal(0.0, 0.5, n)
    if kind == 2:
        return rng.uniform(-1.0, 1.0, n)
    return rng.poisson(3.0, n).astype(np.float64)


def _categorical(rng: np.random.Generator, levels: dict[str, float], n: int) -> np.ndarray:
    names = np.array(list(levels), dtype=object)
    p = np.array(list(levels.values()))
    return names[rng.choice(len(names), size=n, p=p / p.sum())]


def make_frame(n: int, seed: int, drift: bool) -> pd.DataFrame:
    """One frame of ``n`` rows; with ``drift`` the changes of ``PLANTED`` and ``TRIVIAL`` are applied."""
    rng = np.random.default_rng(seed)
    cols = {c: _numeric(rng, i, n) for i, c in enumerate(NUMERIC)}
    levels = {c: dict(v) for c, v in LEVELS.items()}
    if drift:
        sd0 = 1.0  # num_00 ~ N(0, 1)
        cols["num_00"] = cols["num_00"] + 0.5 * sd0
        x = cols["num_01"]
        cols["num_01"] = np.exp(0.125) + 1.5 * (x - np.exp(0.125))  # around the log-normal's mean
        cols["num_02"][rng.random(n) < 0.2] = np.nan
        cols["num_04"] = cols["num_04"] + 0.02 * 5.0  # num_04 ~ N(40, 5^2)
        levels["cat_0"].update(a=0.6, b=0.2)
        levels["cat_1"] = {k: v * 0.95 for k, v in levels["cat_1"].items()} | {"k_new": 0.05}
        levels["cat_2"].update(x=0.41, y=0.34)
    cols.update({c: _categorical(rng, levels[c], n) for c in CATEGORICAL})
    return pd.DataFrame(cols)


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """Parquet without pandas metadata, so that the peer's pandas 2 reads pandas 3's string columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(table, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# The peer.


def ensure_peer_env() -> Path:
    """``.venv-evidently/bin/python``, creating the environment on first use."""
    python = PEER_VENV / "bin" / "python"
    stamp = PEER_VENV / ".installed"
    requirements = PEERS / "requirements-evidently.txt"
    if not stamp.exists() or stamp.read_text() != requirements.read_text():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)], check=True)
        stamp.write_text(requirements.read_text())
    return python


def run_peer(jobs: list[dict], timeout: float) -> tuple[list[dict], bool, float]:
    """Evidently on ``jobs`` in a subprocess: ``(results of the finished jobs, timed_out, wall seconds)``."""
    python = ensure_peer_env()
    WORK.mkdir(parents=True, exist_ok=True)
    jobs_path, out_path = WORK / "peer_jobs.json", WORK / "peer_results.json"
    jobs_path.write_text(json.dumps(jobs))
    out_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        subprocess.run(
            [str(python), str(PEERS / "evidently_drift.py"), str(jobs_path), str(out_path)],
            check=True,
            timeout=timeout,
            env={**os.environ, "DO_NOT_TRACK": "1"},
        )
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    wall = time.perf_counter() - t0
    results = json.loads(out_path.read_text()) if out_path.exists() else []
    return results, timed_out, wall


# ---------------------------------------------------------------------------------------------------------
# Ours.


def ours(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig, repeats: int = 3) -> dict:
    """Reference build (once per model version in the monitor) and the analysis (every run, median of
    ``repeats``), with the per-column decisions."""
    features = FeatureTypes(NUMERIC, CATEGORICAL)
    t0 = time.perf_counter()
    stats = build_reference(reference, features)
    build_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = analyse_drift(stats, current, config)
        times.append(time.perf_counter() - t0)
    return {
        "build_s": build_s,
        "analyse_s": statistics.median(times),
        "columns": {c: f.drift for c, f in result.features.items()},
        "dataset_drift": result.dataset_drift,
    }


def score(decisions: dict[str, bool]) -> dict:
    """Planted drifts found / missed, and false alarms, from per-column decisions."""
    found = [c for c in PLANTED if decisions.get(c)]
    false = [c for c in decisions if decisions[c] and c not in PLANTED]
    return {"found": found, "missed": [c for c in PLANTED if c not in found], "false_alarms": false}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--seeds", type=int, default=20, help="no-drift pairs for the false-alarm rate")
    ap.add_argument("--false-alarm-rows", type=int, default=100_000)
    ap.add_argument("--peer-false-alarm-rows", type=int, default=10_000)
    ap.add_argument("--peer-timeout", type=float, default=900.0, help="seconds per Evidently size")
    ap.add_argument("--no-peer", action="store_true", help="skip Evidently")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the section in docs/benchmarks.md")
    args = ap.parse_args(argv)
    config = DriftConfig()
    cmd = ".venv/bin/python benchmarks/drift.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report: dict = {
        "command": cmd.strip(),
        "machine": _machine(),
        "config": config.to_dict(),
        "sizes": [],
        "planted": PLANTED,
        "trivial": TRIVIAL,
    }

    for n in args.sizes:
        reference, current = make_frame(n, seed=1, drift=False), make_frame(n, seed=2, drift=True)
        row = {"rows": n, "ours": ours(reference, current, config)}
        row["ours"]["score"] = score(row["ours"]["columns"])
        print(
            f"[{n:>9,} rows] ours: analyse {row['ours']['analyse_s']:.3f}s (reference build "
            f"{row['ours']['build_s']:.3f}s once) {row['ours']['score']}",
            flush=True,
        )
        if not args.no_peer:
            job = {
                "name": f"n={n}",
                "numeric": list(NUMERIC),
                "categorical": list(CATEGORICAL),
                "reference": str(write_parquet(reference, WORK / f"n{n}" / "reference.parquet")),
                "current": str(write_parquet(current, WORK / f"n{n}" / "current.parquet")),
            }
            results, timed_out, wall = run_peer([job], args.peer_timeout)
            peer = {"timed_out": timed_out, "wall_s": wall}
            if results:
                peer.update(
                    seconds=results[0]["seconds"],
                    columns={c: v["drift"] for c, v in results[0]["columns"].items()},
                    methods=sorted({v["method"] for v in results[0]["columns"].values()}),
                    scores={c: results[0]["columns"][c]["score"] for c in (*PLANTED, *TRIVIAL)},
                )
                peer["score"] = score(peer["columns"])
                peer["ratio"] = peer["seconds"] / row["ours"]["analyse_s"]
                peer["ratio_incl_build"] = peer["seconds"] / (
                    row["ours"]["analyse_s"] + row["ours"]["build_s"]
                )
            row["evidently"] = peer
            print(
                f"[{n:>9,} rows] evidently: {peer.get('seconds', float('nan')):.3f}s "
                f"(timed out: {timed_out}) {peer.get('score')}",
                flush=True,
            )
        report["sizes"].append(row)
        del reference, current

    report["false_alarms"] = false_alarm_rate(args.seeds, args.false_alarm_rows, config)
    print(
        f"false alarms (ours, {args.false_alarm_rows:,} rows x {args.seeds} seeds): {report['false_alarms']}",
        flush=True,
    )
    if not args.no_peer:
        report["peer_false_alarms"] = peer_false_alarm_rate(
            args.seeds, args.peer_false_alarm_rows, args.peer_timeout
        )
        print(f"false alarms (evidently, {args.peer_false_alarm_rows:,} rows): {report['peer_false_alarms']}")
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "results.json").write_text(json.dumps(report, indent=1))
    if args.write_docs:
        write_docs(report)
    return 0


def false_alarm_rate(seeds: int, n: int, config: DriftConfig) -> dict:
    """Runs on no-drift pairs (reference and current from the same distributions, different seeds)."""
    features = FeatureTypes(NUMERIC, CATEGORICAL)
    runs_with_alarm, column_alarms, dataset_alarms = 0, 0, 0
    for s in range(seeds):
        stats = build_reference(make_frame(n, seed=1000 + 2 * s, drift=False), features)
        result = analyse_drift(stats, make_frame(n, seed=1001 + 2 * s, drift=False), config)
        k = len(result.drifted_features)
        runs_with_alarm += k > 0
        column_alarms += k
        dataset_alarms += result.dataset_drift
    return {
        "rows": n,
        "seeds": seeds,
        "runs_with_any_column_alarm": runs_with_alarm,
        "run_rate": runs_with_alarm / seeds,
        "column_alarms": column_alarms,
        "column_rate": column_alarms / (seeds * len(features.features)),
        "dataset_alarms": dataset_alarms,
        "configured_rate": config.alpha,
    }


def peer_false_alarm_rate(seeds: int, n: int, timeout: float) -> dict:
    jobs = []
    for s in range(seeds):
        base = WORK / f"fa{n}" / f"seed{s}"
        jobs.append(
            {
                "name": f"seed={s}",
                "numeric": list(NUMERIC),
                "categorical": list(CATEGORICAL),
                "reference": str(
                    write_parquet(make_frame(n, 1000 + 2 * s, False), base / "reference.parquet")
                ),
                "current": str(write_parquet(make_frame(n, 1001 + 2 * s, False), base / "current.parquet")),
            }
        )
    results, timed_out, _ = run_peer(jobs, timeout)
    alarms = [sum(v["drift"] for v in r["columns"].values()) for r in results]
    return {
        "rows": n,
        "seeds": len(results),
        "timed_out": timed_out,
        "runs_with_any_column_alarm": sum(a > 0 for a in alarms),
        "column_alarms": sum(alarms),
        "dataset_alarms": sum(r["dataset_drift"] for r in results),
    }


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"


def write_docs(report: dict) -> None:
    """Replace this benchmark's section of docs/benchmarks.md (other sections are kept)."""
    lines = [
        BEGIN,
        "## Drift analysis vs Evidently (`benchmarks/drift.py`)",
        "",
        f"Command: `{report['command']}` (machine: {report['machine']}).",
        "",
        "20 numeric + 5 categorical columns. Planted drift: "
        + "; ".join(f"`{c}` {d}" for c, d in PLANTED.items())
        + ". Trivial changes that must not alarm: "
        + "; ".join(f"`{c}` {d}" for c, d in TRIVIAL.items())
        + ".",
        (
            "Ours is timed with the reference statistics cached (as the monitor runs); their one-off build per model "
            "version is shown apart. Evidently (DataDriftPreset, default methods) is timed on `Report.run` + "
            "`dict()` on frames already in memory, in its own environment."
        ),
        "",
        (
            "| rows | ours analyse (s) | ours reference build, once (s) | Evidently (s) | Evidently / ours "
            "| Evidently / (ours incl. build) | planted found: ours | planted found: Evidently "
            "| false alarms: ours | false alarms: Evidently |"
        ),
        "|---:|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for row in report["sizes"]:
        o, e = row["ours"], row.get("evidently", {})
        es = e.get("score")
        lines.append(
            f"| {row['rows']:,} | {o['analyse_s']:.3f} | {o['build_s']:.3f} | "
            + (f"{e['seconds']:.2f}" if "seconds" in e else ("timed out" if e.get("timed_out") else "n/a"))
            + " | "
            + (f"{e['ratio']:.0f}x" if "ratio" in e else "n/a")
            + " | "
            + (f"{e['ratio_incl_build']:.1f}x" if "ratio_incl_build" in e else "n/a")
            + f" | {len(o['score']['found'])}/{len(PLANTED)}"
            + (f" (missed {', '.join(o['score']['missed'])})" if o["score"]["missed"] else "")
            + " | "
            + (
                f"{len(es['found'])}/{len(PLANTED)}"
                + (f" (missed {', '.join(es['missed'])})" if es["missed"] else "")
                if es
                else "n/a"
            )
            + f" | {', '.join(o['score']['false_alarms']) or 'none'} | "
            + ((", ".join(es["false_alarms"]) or "none") if es else "n/a")
            + " |"
        )
    fa = report["false_alarms"]
    lines += [
        "",
        (
            f"False alarms on no-drift data, ours: {fa['runs_with_any_column_alarm']} of {fa['seeds']} runs "
            f"({fa['rows']:,} rows each) had any drifted column, {fa['column_alarms']} column alarms in "
            f"{fa['seeds'] * 25} column tests, {fa['dataset_alarms']} dataset alarms; configured rate "
            f"(alpha, after Benjamini-Hochberg) {fa['configured_rate']}."
        ),
    ]
    if "peer_false_alarms" in report:
        pf = report["peer_false_alarms"]
        lines.append(
            f"Evidently on {pf['seeds']} no-drift pairs of {pf['rows']:,} rows: "
            f"{pf['runs_with_any_column_alarm']} runs with any drifted column, {pf['column_alarms']} column "
            f"alarms, {pf['dataset_alarms']} dataset alarms."
        )
    largest = max(report["sizes"], key=lambda r: r["rows"])
    scores = largest.get("evidently", {}).get("scores")
    lines += [
        "",
        (
            "Notes: wall-clock times on a shared 2-core machine (other work was running), so read the ratios. "
            "Floors: 1M rows analysed in <= 5 s, >= 10x faster than Evidently, every planted drift found, "
            "false alarms at or under the configured rate."
        ),
    ]
    if scores:
        lines.append(
            f"Evidently's scores at {largest['rows']:,} rows: "
            + ", ".join(f"`{c}` {v:.3g}" for c, v in scores.items())
            + ". It drops missing values before testing, so `num_02` (20% empty) looks unchanged to it; its "
            "Jensen-Shannon distance (natural log) for `cat_0` is under its 0.1 threshold. Ours checks the "
            "missing rate first and uses the base-2 distance with a 0.05 threshold (docs/monitoring.md)."
        )
    lines.append(END)
    section = "\n".join(lines)
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
