"""Evaluate: score the candidate on the test split, score the champion on the same split, decide the blessing.

A candidate is *blessed* only if it meets every absolute threshold in the config and its gate metric is no
worse than the champion's by more than ``gate.max_regression``. Metrics where lower is better (losses and
errors) are compared the other way round.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from pipeline.config import GateConfig

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from pipeline.preprocess import PreprocessMeta

LOWER_IS_BETTER = {"log_loss", "mae", "rmse", "mse"}


def classification_metrics(y_true: "np.ndarray", proba: "np.ndarray", class_names: list[str]) -> dict[str, float]:
    """Accuracy, macro and per-class precision/recall/F1, one-vs-rest ROC-AUC and log loss.

    Args:
        y_true: class indices into ``class_names``.
        proba: predicted probabilities, one column per class in ``class_names`` order.
    """
    import numpy as np
    from sklearn import metrics as skm

    labels = list(range(len(class_names)))
    y_pred = proba.argmax(axis=1)
    out = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision_macro": float(skm.precision_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "recall_macro": float(skm.recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "f1_macro": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "log_loss": float(skm.log_loss(y_true, np.clip(proba, 1e-7, 1), labels=labels)),
    }
    present = np.unique(y_true)
    if len(present) >= 2:
        if len(class_names) == 2:
            out["roc_auc_ovr"] = float(skm.roc_auc_score(y_true, proba[:, 1]))
        elif len(present) == len(class_names):
            out["roc_auc_ovr"] = float(skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=labels))
    p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, name in enumerate(class_names):
        out[f"precision_{name}"], out[f"recall_{name}"], out[f"f1_{name}"] = float(p[i]), float(r[i]), float(f[i])
    return out


def regression_metrics(y_true: "np.ndarray", y_pred: "np.ndarray") -> dict[str, float]:
    import numpy as np
    from sklearn import metrics as skm

    return {
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "rmse": float(np.sqrt(skm.mean_squared_error(y_true, y_pred))),
        "r2": float(skm.r2_score(y_true, y_pred)),
    }


@dataclass(frozen=True)
class GateDecision:
    blessed: bool
    reasons: list[str] = field(default_factory=list)   # why not, or why yes
    champion_metric: float | None = None
    candidate_metric: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _worse_by(metric: str, candidate: float, reference: float) -> float:
    """How much worse ``candidate`` is than ``reference`` (negative when better)."""
    return candidate - reference if metric in LOWER_IS_BETTER else reference - candidate


DEFAULT_GATE_METRIC = {"classification": "accuracy", "regression": "rmse"}


def resolve_gate(gate: GateConfig, task: str) -> GateConfig:
    """The gate with its metric decided: the configured one, or the task's default."""
    import dataclasses

    return gate if gate.metric else dataclasses.replace(gate, metric=DEFAULT_GATE_METRIC[task])


def decide_blessing(candidate: dict[str, float], gate: GateConfig, champion: dict[str, float] | None) -> GateDecision:
    """Apply the absolute thresholds, then the no-regression rule against the champion (if there is one).
    ``gate.metric`` must be resolved (:func:`resolve_gate`)."""
    reasons, ok = [], True
    for metric, threshold in gate.thresholds.items():
        if metric not in candidate:
            ok = False
            reasons.append(f"threshold metric {metric!r} was not computed for this task")
            continue
        value = candidate[metric]
        passed = value <= threshold if metric in LOWER_IS_BETTER else value >= threshold
        ok &= passed
        op = "<=" if metric in LOWER_IS_BETTER else ">="
        reasons.append(f"{metric} {value:.4f} {'meets' if passed else 'fails'} {op} {threshold}")
    cand = candidate.get(gate.metric)
    champ = None if champion is None else champion.get(gate.metric)
    if cand is None:
        ok = False
        reasons.append(f"gate metric {gate.metric!r} was not computed for this task")
    elif champ is None:
        reasons.append("no champion to compare with" if champion is None else f"champion has no {gate.metric!r}")
    else:
        worse = _worse_by(gate.metric, cand, champ)
        passed = worse <= gate.max_regression
        ok &= passed
        reasons.append(f"{gate.metric} {cand:.4f} vs champion {champ:.4f}: "
                       f"{'within' if passed else 'exceeds'} the allowed regression of {gate.max_regression}")
    return GateDecision(bool(ok), reasons, champ, cand)


def confusion_matrix_figure(y_true, y_pred, class_names: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(class_names))))
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.2 * len(class_names) + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test split)")
    fig.tight_layout()
    return fig


RESIDUAL_POINTS = 20_000  # points of the residual plot: a uniform sample of a larger test split


def residual_figure(y_true, y_pred, max_points: int = RESIDUAL_POINTS, seed: int = 0):
    """Residuals against predictions, of every row or of a uniform sample of ``max_points`` rows (a scatter of
    a million points is one blot, and slow to draw)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(y_true) > max_points:
        idx = np.random.default_rng(seed).choice(len(y_true), max_points, replace=False)
        y_true, y_pred = np.asarray(y_true)[idx], np.asarray(y_pred)[idx]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(y_pred, y_true - y_pred, s=10, alpha=0.7)
    ax.axhline(0, color="grey", lw=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("residual (true - predicted)")
    ax.set_title("Residuals (test split)")
    fig.tight_layout()
    return fig


@dataclass
class Scored:
    """A test split scored batch by batch: the labels of its scorable rows (class indices, or values), each
    model's predictions of them (probabilities or values), why a model could not be scored (its first error),
    and the first rows of the split (for the MLflow dataset: its digest reads those only)."""

    y: "np.ndarray"
    predictions: dict[str, "np.ndarray"]
    errors: dict[str, str]
    head: "pd.DataFrame"
    rows: int


def score_split(source: str | Path | "pd.DataFrame", meta: "PreprocessMeta",
                predictors: Mapping[str, Callable[["pd.DataFrame"], "np.ndarray"]],
                catch: tuple[type[BaseException], ...] = (), head_rows: int = 10_000,
                batch_rows: int = 8192) -> Scored:
    """Predict the test split (a Parquet source read record batch by record batch, or a frame) with each of
    ``predictors`` (name -> a function of a frame of raw rows; a SavedModel's signature takes a batch at once,
    so ``batch_rows`` bounds what its processed features hold). Only the labels and the predictions are kept,
    never the rows. Classification rows whose class training never saw are not scored. A predictor raising one
    of ``catch`` (a champion that cannot read this data) is dropped, its error kept in ``errors``."""
    import numpy as np
    import pandas as pd

    from pipeline.datasets import iter_frames
    from pipeline.preprocess import label_array

    frames = [source] if isinstance(source, pd.DataFrame) else iter_frames(source, batch_rows=batch_rows)
    ys: list = []
    preds: dict[str, list] = {name: [] for name in predictors}
    errors: dict[str, str] = {}
    head, rows = None, 0
    for frame in frames:
        y = label_array(frame, meta)
        if meta.feature_spec.task == "classification":
            keep = y >= 0  # classes never seen in training cannot be scored
            frame, y = frame[keep].reset_index(drop=True), y[keep]
        if head is None or len(head) < head_rows:
            head = frame.head(head_rows) if head is None else pd.concat([head, frame.head(head_rows - len(head))],
                                                                        ignore_index=True)
        rows += len(frame)
        ys.append(y)
        for name, predict in predictors.items():
            if name in errors or not len(frame):
                continue
            try:
                preds[name].append(predict(frame))
            except catch as exc:
                errors[name] = str(exc)
    y = np.concatenate(ys) if ys else np.array([])
    out = {name: np.concatenate(p) for name, p in preds.items() if name not in errors and p}
    return Scored(y, out, errors, head if head is not None else pd.DataFrame(), rows)
