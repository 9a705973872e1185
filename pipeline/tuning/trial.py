"""One trial: train with the trial's overrides on the run's split and preprocessing, report every epoch's
validation value to Optuna's pruner, and score the result on the validation split (the objective).

The test split is never looked at here: it stays the final training's evaluation, as in any run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from pipeline.config import PipelineConfig

if TYPE_CHECKING:
    import keras
    import pandas as pd

    from pipeline.preprocess import PreprocessMeta

# The Keras log each objective is pruned on, when the fit computes it; otherwise the validation loss.
EPOCH_KEYS = {"accuracy": "val_accuracy", "rmse": "val_rmse", "log_loss": "val_loss"}


def epoch_value(logs: Mapping[str, float], metric: str, maximize: bool) -> float | None:
    """The value of an epoch the pruner compares, in the study's direction: the Keras log of ``metric``
    (``EPOCH_KEYS``), else the validation loss (negated when the study maximizes). None without validation."""
    key = EPOCH_KEYS.get(metric)
    if key and key in logs:
        return float(logs[key])
    if "val_loss" not in logs:
        return None
    return -float(logs["val_loss"]) if maximize else float(logs["val_loss"])


def pruning_callback(report: Callable[[int, float], bool], metric: str, maximize: bool) -> "keras.callbacks.Callback":
    """A Keras callback handing ``report(epoch, value)`` each epoch's value (:func:`epoch_value`); when it returns
    True (prune), the fit stops after that epoch and the callback's ``pruned_at`` holds the epoch."""
    import keras

    class Pruning(keras.callbacks.Callback):
        pruned_at: int | None = None

        def on_epoch_end(self, epoch, logs=None):
            value = epoch_value(logs or {}, metric, maximize)
            if value is not None and report(epoch, value):
                self.pruned_at = epoch
                self.model.stop_training = True

    return Pruning()


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial measured: ``state`` (``COMPLETE``/``PRUNED``/``FAIL``), the objective ``value``, the
    validation ``metrics``, the epochs run, and the error of a failed one."""

    state: str
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    epochs_run: int = 0
    pruned_at: int | None = None
    error: str = ""


def score(model_path: str, frame: "pd.DataFrame", meta: "PreprocessMeta", cfg: PipelineConfig) -> dict[str, float]:
    """The metrics (``pipeline.evaluate``) of the saved model on ``frame`` (rows of classes unseen in training
    left out, as the evaluate stage does)."""
    from pipeline import evaluate as ev
    from pipeline.export import predict_keras
    from pipeline.preprocess import label_array
    from pipeline.train import load_model

    y = label_array(frame, meta)
    if meta.feature_spec.task == "classification":
        keep = y >= 0
        frame, y = frame[keep].reset_index(drop=True), y[keep]
        return ev.classification_metrics(y, predict_keras(load_model(model_path, meta, cfg.model), frame, meta),
                                         meta.class_names)
    return ev.regression_metrics(y, predict_keras(load_model(model_path, meta, cfg.model), frame, meta))


def run_trial(cfg: PipelineConfig, train_df: "pd.DataFrame", val_df: "pd.DataFrame", meta: "PreprocessMeta",
              work_dir: str | Path, metric: str, maximize: bool, report: Callable[[int, float], bool],
              callbacks: Sequence["keras.callbacks.Callback"] = ()) -> TrialOutcome:
    """Train ``cfg`` (the trial's config: the run's with the trial's overrides) and score it on ``val_df``.

    Args:
        work_dir: the trial's own directory (its resume checkpoint: a retried trial task resumes there).
        metric: the objective, a ``pipeline.evaluate`` metric; ``maximize``: the study's direction.
        report: ``report(epoch, value) -> prune?`` (the study's trial: ``trial.report`` then ``should_prune``).
        callbacks: more Keras callbacks (the MLflow epoch logger).

    Raises:
        Exception: whatever the fit raised; the caller records the trial as failed.
    """
    from pipeline.train import release_loaded_model, train

    pruning = pruning_callback(report, metric, maximize)
    result = train(train_df, val_df, meta, cfg.model, cfg.training, work_dir, seed=cfg.training.seed,
                   callbacks=[pruning, *callbacks])
    if pruning.pruned_at is not None:
        return TrialOutcome("PRUNED", epochs_run=result.epochs_run, pruned_at=pruning.pruned_at)
    metrics = score(result.model_path, val_df, meta, cfg)
    release_loaded_model()
    if metric not in metrics:
        raise ValueError(f"tuning.objective: {metric!r} was not computed on the validation split "
                         f"(computed: {', '.join(metrics)})")
    return TrialOutcome("COMPLETE", float(metrics[metric]), metrics, result.epochs_run)
