"""The Optuna study of a tuning run, through ask/tell: one study per DAG run in an RDB storage (SQLite under
PIPELINE_HOME by default, the production Postgres through ``tuning.storage`` or ``$PIPELINE_TUNING_STORAGE``),
so that the suggest, trial and tell tasks, in whatever processes and workers run them, share it.

Idempotence comes from the study itself: the trials a round asked carry the round's number (``round`` user
attribute), so a retried suggest task finds them instead of asking more; a trial's outcome is written by its
trial task and told by the round's tell task only while the trial is still RUNNING, so a retried or killed
trial task is never counted twice (a killed one, never finished, is told FAIL).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pipeline import paths
from pipeline.config import PipelineConfig, TuningConfig

if TYPE_CHECKING:
    import optuna

STORAGE_ENV = "PIPELINE_TUNING_STORAGE"
ROUND_ATTR = "round"
RESULT_FILE = "result.json"  # in the trial's directory: what its trial task measured, read by tell
# Trial outcomes: Optuna's final states (a result file holds one of them)
COMPLETE, PRUNED, FAIL = "COMPLETE", "PRUNED", "FAIL"


def storage_url(tuning: TuningConfig) -> str:
    """``tuning.storage``, else ``$PIPELINE_TUNING_STORAGE``, else ``PIPELINE_HOME/tuning/optuna.db`` (SQLite)."""
    url = tuning.storage or os.environ.get(STORAGE_ENV)
    if url:
        return url
    path = paths.pipeline_home() / "tuning" / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def study_name(cfg: PipelineConfig, run_id: str) -> str:
    """One study per DAG run (a retried task finds the same one)."""
    return f"{cfg.name}.{paths.safe_key(run_id)}"


def objective_metric(cfg: PipelineConfig, task: str) -> str:
    """``tuning.objective``, else the gate's metric (the task's default when the gate names none)."""
    from pipeline.evaluate import resolve_gate

    return cfg.tuning.objective or resolve_gate(cfg.gate, task).metric


def direction(metric: str) -> str:
    from pipeline.evaluate import LOWER_IS_BETTER

    return "minimize" if metric in LOWER_IS_BETTER else "maximize"


def _storage(url: str) -> "optuna.storages.BaseStorage":
    import optuna

    if url.startswith("sqlite"):
        # parallel trial tasks write intermediate values at once: wait for SQLite's lock rather than fail
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)


def open_study(cfg: PipelineConfig, run_id: str, metric: str) -> "optuna.Study":
    """The run's study (created on first use): TPE seeded by ``tuning.seed`` (default ``training.seed``) plus
    the number of trials already asked, so that each round draws anew in a fresh process; the pruner of
    ``tuning.pruner`` on the per-epoch values."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t = cfg.tuning
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=t.pruner_warmup_epochs)
              if t.pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=_storage(storage_url(t)), study_name=study_name(cfg, run_id),
                                direction=direction(metric), pruner=pruner, load_if_exists=True)
    seed = (cfg.training.seed if t.seed is None else t.seed) + len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=t.startup_trials, constant_liar=True)
    return study


def ask_round(study: "optuna.Study", tuning: TuningConfig, round_no: int) -> list[int]:
    """The trial numbers of round ``round_no``: those a previous attempt of this round asked, and as many more
    as the round and the budget (``tuning.n_trials`` trials in all) allow. Empty once the budget is spent."""
    from pipeline.tuning.space import distributions

    trials = study.get_trials(deepcopy=False)
    mine = [t.number for t in trials if t.user_attrs.get(ROUND_ATTR) == round_no]
    more = min(tuning.trials_per_round - len(mine), tuning.n_trials - len(trials))
    dists = distributions(tuning.space)
    for _ in range(max(0, more)):
        trial = study.ask(dists)
        trial.set_user_attr(ROUND_ATTR, round_no)
        mine.append(trial.number)
    return sorted(mine)


def trial_handle(study: "optuna.Study", number: int) -> "optuna.Trial":
    """The live trial ``number`` of ``study`` (asked by another process): to report intermediate values and ask
    the pruner."""
    from pipeline.internals import optuna_trial

    return optuna_trial(study, number)  # Optuna's private storage and study id, behind the one adapter


def trial_state(study: "optuna.Study", number: int) -> str:
    """``RUNNING``, ``COMPLETE``, ``PRUNED``, ``FAIL`` (or ``WAITING``) of trial ``number``."""
    return next(t.state.name for t in study.get_trials(deepcopy=False) if t.number == number)


def write_result(trial_dir: Path, result: Mapping[str, Any]) -> str:
    from pipeline.atomic import write_json_atomic

    return str(write_json_atomic(trial_dir / RESULT_FILE, dict(result), indent=2, default=str))


def read_result(trial_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((trial_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None


def tell_trial(study: "optuna.Study", number: int, result: Mapping[str, Any] | None) -> str:
    """Tell trial ``number`` its outcome (its trial task's ``result``; None: the task never finished, so FAIL),
    unless it was told already. Returns the trial's final state."""
    from optuna.trial import TrialState

    state = trial_state(study, number)
    if state != "RUNNING":
        return state  # told before (a retried tell task): never twice
    outcome = (result or {}).get("state", FAIL)
    if outcome == COMPLETE:
        study.tell(number, float(result["value"]))
    elif outcome == PRUNED:
        study.tell(number, state=TrialState.PRUNED)
    else:
        error = (result or {}).get("error") or "its trial task never finished (killed, or out of retries)"
        trial_handle(study, number).set_user_attr("error", str(error)[:2000])
        study.tell(number, state=TrialState.FAIL)
    return trial_state(study, number)


def fail_unfinished(study: "optuna.Study") -> list[int]:
    """Tell FAIL every trial still RUNNING (asked by an attempt that died before recording its round): the
    study ends with no trial left open."""
    from optuna.trial import TrialState

    numbers = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for number in numbers:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    return numbers


def counts(study: "optuna.Study") -> dict[str, int]:
    """Trials by state (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``)."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out
