"""The task bodies of dags/tuning_pipeline.py, in the shape of pipeline.tasks': ``(params, ctx, *upstream)`` in,
a small reference out. ingest → validate → split → preprocess run once (pipeline.tasks' own tasks); then rounds
of ``suggest`` (ask a round of trials), ``trial`` (one mapped task per trial) and ``tell``; ``best`` logs the
study's outcome; the final training runs pipeline.tasks' train → evaluate → export → register → deploy with
the best parameters as the ``overrides`` Param, through the same gate.

MLflow: the DAG run's run has a ``tune`` stage run (the study: its best parameters, its plots) under which
every trial is a nested run (``trial-<number>``: its parameters, curves, objective, state).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pipeline.tasks import Stage, _read_frame, stage_task
from pipeline.tuning import study as studies

STAGE = "tune"


def _trial_dir(st: Stage, number: int) -> Path:
    return st.ctx.work_dir / "tuning" / f"trial-{number}"


@stage_task(STAGE)
def suggest_task(st: Stage, splits: Mapping[str, Any], validated: Mapping[str, Any],
                 previous: Mapping[str, Any] | None = None, *, round_no: int) -> dict[str, Any]:
    """Ask round ``round_no``'s trials (the same ones again on a retry); none once ``tuning.n_trials`` are asked.

    Returns:
        ``trials``: one reference per trial (its number, round and drawn overrides), which the mapped trial
        tasks expand over; empty once the budget is spent.
    """
    import mlflow

    from pipeline.config import ConfigError
    from pipeline.tuning.space import to_overrides

    cfg = st.cfg
    if cfg.tuning is None:
        raise ConfigError("tuning: the tuning pipeline needs a `tuning:` section in the config (docs/features.md)")
    task = validated["features"]["task"]
    metric = studies.objective_metric(cfg, task)
    study = studies.open_study(cfg, st.ctx.run_id, metric)
    if round_no == 0:
        mlflow.log_params({"study": study.study_name, "objective": metric, "direction": studies.direction(metric),
                           "n_trials": cfg.tuning.n_trials, "trials_per_round": cfg.tuning.trials_per_round,
                           "pruner": cfg.tuning.pruner, "storage": studies.storage_url(cfg.tuning).split("@")[-1]})
    numbers = studies.ask_round(study, cfg.tuning, round_no)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    print(f"tune: round {round_no}: trials {numbers or 'none (budget spent)'}")
    return {"trials": [{"parent_run_id": st.parent_run_id, "number": n, "round": round_no, "objective": metric,
                        "overrides": to_overrides(trials[n].params, cfg.tuning.space)} for n in numbers]}


@stage_task(STAGE, mlflow_run=False)  # the trial's own run, nested under the tune run, is opened here
def trial_task(st: Stage, asked: Mapping[str, Any], splits: Mapping[str, Any],
               preprocessed: Mapping[str, Any]) -> dict[str, Any]:
    """Train and score trial ``asked["number"]`` in its nested MLflow run; its outcome goes to its result file
    (told by the round's tell task). A trial that raises is recorded FAIL, in MLflow too, and the task
    succeeds: the round goes on. A retry trains the same trial number again (resuming from its checkpoint);
    a trial already told, or whose result an earlier attempt wrote, is not trained again."""
    import dataclasses

    import mlflow

    from pipeline import memory, tracking
    from pipeline.preprocess import PreprocessMeta
    from pipeline.tuning.trial import TrialOutcome, run_trial

    cfg, number = st.cfg, int(asked["number"])
    metric = asked["objective"]
    study = studies.open_study(cfg, st.ctx.run_id, metric)
    trial_dir = _trial_dir(st, number)
    state, recorded = studies.trial_state(study, number), studies.read_result(trial_dir)
    if state != "RUNNING" or recorded:  # told already, or an attempt finished and recorded it: not trained twice
        return {"number": number, **(recorded or {}), "state": state if state != "RUNNING" else recorded["state"]}
    handle = studies.trial_handle(study, number)

    def report(epoch: int, value: float) -> bool:
        handle.report(value, epoch)
        return handle.should_prune()

    tune_run = tracking.stage_run_id(st.parent_run_id, STAGE)
    with tracking.stage_run(tune_run, f"trial-{number}") as run:
        mlflow.set_tags({"optuna.study": study.study_name, "optuna.trial": str(number),
                         "tuning.round": str(asked["round"])})
        mlflow.log_params({k: str(v)[:6000] for k, v in asked["overrides"].items()})
        epochs = tracking.EpochLogger()
        try:
            trial_cfg = cfg.with_overrides(asked["overrides"])
            outcome = run_trial(trial_cfg, _read_frame(splits["train"]), _read_frame(splits["val"]),
                                PreprocessMeta.load(preprocessed["meta"]), trial_dir / "train", metric,
                                studies.direction(metric) == "maximize", report, callbacks=[epochs])
        except Exception as exc:  # noqa: BLE001 - one bad draw fails its trial, not the study
            outcome = TrialOutcome(studies.FAIL, error=f"{type(exc).__name__}: {exc}")
            print(f"tune: trial {number} failed: {outcome.error}")
        finally:
            epochs.flush()
        memory.release()
        mlflow.set_tags({"optuna.state": outcome.state, "pruned": str(outcome.state == studies.PRUNED).lower()})
        # validation_<metric>: the validation split scored at the end (val_<metric> are Keras' per-epoch logs)
        mlflow.log_metrics({"epochs_run": outcome.epochs_run,
                            **({"objective": outcome.value} if outcome.value is not None else {}),
                            **{f"validation_{k}": v for k, v in outcome.metrics.items()}})
        if outcome.error:
            mlflow.set_tag("pipeline.error", outcome.error[:5000])
        run_id = run.info.run_id
    if outcome.state == studies.FAIL:
        tracking.client().set_terminated(run_id, "FAILED")
    result = {"number": number, "mlflow_run_id": run_id, **dataclasses.asdict(outcome)}
    studies.write_result(trial_dir, result)
    scored = f", {metric} {outcome.value:.4f}" if outcome.value is not None else ""
    print(f"tune: trial {number}: {outcome.state}{scored}")
    return result


@stage_task(STAGE)
def tell_task(st: Stage, splits: Mapping[str, Any], asked: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Tell the study each of the round's ``asked`` trials (those still RUNNING only): its result file's
    outcome, or FAIL when its task never wrote one (killed, or out of retries)."""
    import mlflow

    if not asked:
        return {"told": {}}
    study = studies.open_study(st.cfg, st.ctx.run_id, asked[0]["objective"])
    told = {int(a["number"]): studies.tell_trial(study, int(a["number"]),
                                                 studies.read_result(_trial_dir(st, int(a["number"]))))
            for a in asked}
    counts = studies.counts(study)
    mlflow.log_metrics({f"trials_{k.lower()}": v for k, v in counts.items()}, step=int(asked[0]["round"]))
    print(f"tune: round {asked[0]['round']} told: {told}; study: {counts}")
    return {"told": {str(k): v for k, v in told.items()}}


@stage_task(STAGE)
def best_task(st: Stage, splits: Mapping[str, Any], validated: Mapping[str, Any]) -> dict[str, Any]:
    """Close the study (a trial left RUNNING is told FAIL), log its best parameters and value, the trials by
    state and Optuna's plots (optimization history, parameter importances) to the tune run.

    Returns:
        ``overrides``: the best trial's parameters as dotted config keys, for the final training.

    Raises:
        TuningError: no trial completed (every one failed or was pruned).
    """
    import mlflow

    from pipeline.tuning.space import to_overrides

    cfg = st.cfg
    metric = studies.objective_metric(cfg, validated["features"]["task"])
    study = studies.open_study(cfg, st.ctx.run_id, metric)
    left = studies.fail_unfinished(study)
    if left:
        print(f"tune: trials {left} were never told (their suggest attempt died): told FAIL")
    counts = studies.counts(study)
    mlflow.log_metrics({f"trials_{k.lower()}": v for k, v in counts.items()})
    if not counts.get("COMPLETE"):
        raise TuningError(f"tuning: no trial of study {study.study_name} completed ({counts}); "
                          "see the trial runs' pipeline.error tags")
    best = study.best_trial
    overrides = to_overrides(best.params, cfg.tuning.space)
    mlflow.log_params({f"best.{k}": str(v)[:6000] for k, v in overrides.items()})
    mlflow.log_metrics({"best_objective": float(best.value), "best_trial": best.number})
    mlflow.log_dict({"objective": metric, "direction": studies.direction(metric), "best_trial": best.number,
                     "best_value": best.value, "overrides": overrides, "trials": counts}, "best_params.json")
    log_study_plots(study)
    print(f"tune: best trial {best.number}: {metric} {best.value:.4f} with {overrides}")
    return {"overrides": overrides, "best_value": float(best.value), "best_trial": best.number, "objective": metric,
            "trials": counts}


class TuningError(RuntimeError):
    """The study produced nothing to train with."""


def log_study_plots(study) -> None:
    """Optuna's optimization history and parameter importances (matplotlib backend) as artifacts of the active
    run; a plot Optuna cannot draw (parameter importances need two completed trials) is left out with a note."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    from optuna.visualization import matplotlib as plots

    from pipeline import tracking

    for name, draw in (("optimization_history.png", plots.plot_optimization_history),
                       ("param_importances.png", plots.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" warnings of optuna.visualization.matplotlib
                ax = draw(study)
            tracking.log_figure(ax.figure, name)
        except Exception as exc:  # noqa: BLE001 - a missing plot leaves the study's results as they are
            print(f"tune: warning: {name} not drawn ({type(exc).__name__}: {exc})")


# -- what the DAG's task bodies share ---------------------------------------------------------------------------

def airflow_run(best: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
    """The running task's ``(params, RunContext)``; with ``best`` (the best task's result) the params carry its
    parameters as the ``overrides`` Param, applied over the run's config snapshot by every final-training task."""
    from airflow.sdk import get_current_context

    from pipeline.tasks import RunContext

    context = get_current_context()
    dag_run, logical = context["dag_run"], context.get("logical_date")
    params = dict(context["params"])
    if best is not None:
        params["overrides"] = {**(params.get("overrides") or {}), **best["overrides"]}
    return params, RunContext(dag_run.dag_id, dag_run.run_id, logical.isoformat() if logical else None)


class fail_fast:  # noqa: N801 - used as a context manager, named like one
    """Bad input, a bad config, a refused deploy or a study with nothing completed fail the task at once: a
    retry would read the same."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None:
            return False
        from airflow.sdk.exceptions import AirflowFailException

        from pipeline.config import ConfigError
        from pipeline.deploy import DeployError
        from pipeline.ingest import IngestError
        from pipeline.validate import ValidationError

        if isinstance(exc, (ConfigError, IngestError, ValidationError, DeployError, TuningError)):
            raise AirflowFailException(str(exc)) from exc
        return False
