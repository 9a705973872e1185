"""Retention of run directories: what the runs that produced no served version leave on disk is removed.

Every training run writes ``PIPELINE_HOME/data/<run>`` (the snapshot, the splits, the schema) and
``PIPELINE_HOME/runs/<run>`` (the trained model, the evaluation's predictions, the checkpoints); every drift
monitor run writes ``PIPELINE_HOME/monitoring/runs/<model>/<run>``. On a schedule that runs hourly with data in the
gigabytes these fill a disk within weeks. A run's directories are removed when all of these hold:

- it is not among the ``keep_runs`` newest runs (by the last change under its directories) and is older than
  ``keep_days``;
- no version it produced is served or kept: neither a version directory on disk under the serving directory
  (whose lineage file names the run, and whose reference statistics the monitor builds from the run's training
  split), nor a registered version the registry says an alias was ever moved onto (``pipeline deploy --version N``
  can publish it again, and it checks the served answers against the run's evaluation predictions);
- it is not the run asking for the clean-up.

When the registry cannot be read nothing is removed (a version it would protect cannot be told apart). Monitor
runs are kept by the same count and age, per model. ``apply`` runs at the end of every deploy task and as
``pipeline retention [--dry-run]``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from pipeline import paths
from pipeline.config import RetentionConfig

LINEAGE = Path("assets.extra") / "pipeline_metadata.json"


@dataclass(frozen=True)
class Run:
    """One run's directories and when anything under them last changed (seconds since the epoch)."""

    key: str
    dirs: tuple[Path, ...]
    changed: float


@dataclass
class Plan:
    """What retention removes (``remove``) and why the others stay (key -> reason)."""

    remove: list[Run] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"remove": [{"run": r.key, "dirs": [str(d) for d in r.dirs]} for r in self.remove],
                "kept": self.kept}


def _last_change(directory: Path) -> float:
    """The newest modification time of ``directory`` and everything under it."""
    newest = directory.stat().st_mtime
    for p in directory.rglob("*"):
        try:
            newest = max(newest, p.lstat().st_mtime)
        except OSError:  # removed while walking
            continue
    return newest


def training_runs(home: Path | None = None) -> list[Run]:
    """The training runs on disk: the keys of ``data/`` and ``runs/``, each with both of its directories."""
    home = home or paths.pipeline_home()
    dirs: dict[str, list[Path]] = {}
    for parent in (home / "data", home / "runs"):
        if parent.is_dir():
            for d in sorted(parent.iterdir()):
                if d.is_dir():
                    dirs.setdefault(d.name, []).append(d)
    return [Run(k, tuple(ds), max(_last_change(d) for d in ds)) for k, ds in dirs.items()]


def monitor_runs(home: Path | None = None) -> dict[str, list[Run]]:
    """The drift monitor's run directories, per model."""
    base = (home or paths.pipeline_home()) / "monitoring" / "runs"
    out: dict[str, list[Run]] = {}
    if base.is_dir():
        for model in sorted(p for p in base.iterdir() if p.is_dir()):
            out[model.name] = [Run(d.name, (d,), _last_change(d)) for d in sorted(model.iterdir()) if d.is_dir()]
    return out


def served_runs(serving_base: Path | None = None) -> dict[str, str]:
    """Run key -> the served version it produced, for every version directory on disk (from its lineage)."""
    base = serving_base or paths.serving_base()
    out: dict[str, str] = {}
    for lineage in sorted(base.glob(f"*/*/{LINEAGE}")) if base.is_dir() else ():
        try:
            doc = json.loads(lineage.read_text())
        except (OSError, ValueError):
            continue
        version_dir = lineage.parent.parent
        where = f"{version_dir.parent.name} v{version_dir.name} is on disk"
        if doc.get("dag_run_id"):
            out[paths.safe_key(str(doc["dag_run_id"]))] = where
        for key in ("train_split", "test_split"):  # a split kept somewhere else than its run's directory
            if doc.get(key):
                out.setdefault(f"path:{Path(doc[key]).resolve()}", where)
    return out


def registry_runs(tracking_uri: str | None = None) -> dict[str, str]:
    """Run key -> the registered version it produced, for every version an alias is on or was ever moved onto.

    Raises:
        Exception: whatever the registry raises when it cannot be read (the caller then removes nothing).
    """
    from mlflow import MlflowClient

    from pipeline.registry import parse_events

    uri = tracking_uri or paths.mlflow_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    out: dict[str, str] = {}
    for model in client.search_registered_models(max_results=1000):
        # the aliases as the registered model lists them (a version found by search may not carry its own)
        aliased = {str(v) for v in (client.get_registered_model(model.name).aliases or {}).values()}
        for mv in client.search_model_versions(f"name = '{model.name}'", max_results=10000):
            run_id = mv.tags.get("airflow.run_id")
            if run_id and (str(mv.version) in aliased or parse_events(mv.description) or mv.tags.get("deploy.events")):
                out[paths.safe_key(run_id)] = f"{model.name} v{mv.version} was served"
    return out


def select(runs: Sequence[Run], protected: dict[str, str], cfg: RetentionConfig, now: float,
           current: str | None = None) -> Plan:
    """The pure rule: which of ``runs`` go (see the module's docstring); ``protected``: run key -> reason."""
    plan = Plan()
    newest_first = sorted(runs, key=lambda r: r.changed, reverse=True)
    for rank, run in enumerate(newest_first):
        under_protected_path = next((why for key, why in protected.items() if key.startswith("path:")
                                     and any(Path(key[5:]).is_relative_to(d.resolve()) for d in run.dirs)), None)
        if current is not None and run.key == paths.safe_key(current):
            plan.kept[run.key] = "the current run"
        elif run.key in protected or under_protected_path:
            plan.kept[run.key] = protected.get(run.key) or under_protected_path
        elif cfg.keep_runs and rank < cfg.keep_runs:
            plan.kept[run.key] = f"among the {cfg.keep_runs} newest"
        elif cfg.keep_days and now - run.changed < cfg.keep_days * 86400:
            plan.kept[run.key] = f"younger than {cfg.keep_days:g} days"
        else:
            plan.remove.append(run)
    return plan


def plan_cleanup(cfg: RetentionConfig, current: str | None = None, now: float | None = None,
                 tracking_uri: str | None = None) -> tuple[Plan, dict[str, Plan]]:
    """The training runs' plan and each model's monitor-run plan; nothing removed when the registry fails."""
    now = time.time() if now is None else now
    protected = served_runs()
    try:
        protected.update(registry_runs(tracking_uri))
    except Exception as exc:  # noqa: BLE001 - an unreadable registry: every run may be a served version's
        runs = training_runs()
        return Plan(kept={r.key: f"the registry could not be read ({type(exc).__name__}: {exc})"[:300]
                          for r in runs}), {}
    monitors = {model: select(runs, {}, cfg, now, current) for model, runs in monitor_runs().items()}
    return select(training_runs(), protected, cfg, now, current), monitors


def apply(cfg: RetentionConfig, current: str | None = None, dry_run: bool = False,
          tracking_uri: str | None = None) -> dict:
    """Remove what :func:`plan_cleanup` lets go (nothing when ``cfg.enabled`` is false or ``dry_run``); returns
    the plan as plain data with ``removed`` (the run keys) and ``freed_bytes``."""
    if not cfg.enabled:
        return {"enabled": False, "removed": [], "freed_bytes": 0}
    plan, monitors = plan_cleanup(cfg, current, tracking_uri=tracking_uri)
    removed, freed = [], 0
    for run in [*plan.remove, *(r for p in monitors.values() for r in p.remove)]:
        size = sum(_size(d) for d in run.dirs)
        if not dry_run:
            for d in run.dirs:
                shutil.rmtree(d, ignore_errors=True)
        removed.append(run.key)
        freed += size
    return {"enabled": True, "dry_run": dry_run, "removed": removed, "freed_bytes": freed,
            "training": plan.to_dict(), "monitor": {m: p.to_dict() for m, p in monitors.items()}}


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def main(argv: Iterable[str] | None = None) -> int:
    """``pipeline retention [--config C] [--dry-run] [--json]``."""
    from pipeline.config import load_config

    p = argparse.ArgumentParser(prog="pipeline retention", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="the pipeline YAML whose retention: section applies (default penguins)")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    p.add_argument("--json", action="store_true", help="the plan as JSON")
    args = p.parse_args(list(argv or []))
    cfg = load_config(args.config).retention
    result = apply(cfg, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    print(f"retention: {verb} {len(result['removed'])} run(s), {result['freed_bytes'] / 2**20:.1f} MiB")
    for key in result["removed"]:
        print(f"  - {key}")
    for key, why in (result.get("training") or {}).get("kept", {}).items():
        print(f"  kept {key}: {why}")
    return 0
