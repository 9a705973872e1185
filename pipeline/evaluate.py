"""Evaluate: score the candidate on the test split, score the champion on the same split, decide the blessing.

A candidate is *blessed* only if it meets every absolute threshold in the config and its gate metric is no
worse than the champion's by more than ``gate.max_regression``. Metrics where lower is better (losses and
errors) are compared the other way round.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.config import GateConfig

if TYPE_CHECKING:
    import numpy as np

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


def residual_figure(y_true, y_pred):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(y_pred, y_true - y_pred, s=10, alpha=0.7)
    ax.axhline(0, color="grey", lw=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("residual (true - predicted)")
    ax.set_title("Residuals (test split)")
    fig.tight_layout()
    return fig
