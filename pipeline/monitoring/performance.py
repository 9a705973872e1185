"""Model performance on a labelled window, compared with the model's evaluation baseline (its lineage metrics).

Labels arrive after serving and are joined on the request id (``request_log.join_labels``); only labelled rows
count. Classification: accuracy and macro F1 of the arg-max class; regression: MAE and RMSE. Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

HIGHER_IS_BETTER = {"accuracy": True, "f1_macro": True, "mae": False, "rmse": False}
# names a baseline metric may carry in the lineage file, tried in order
BASELINE_ALIASES = {"f1_macro": ("f1_macro", "macro_f1", "f1")}
BASELINE_PREFIXES = ("", "test_", "eval_", "val_", "validation_")


def classification_metrics(y_true: Sequence, y_pred: Sequence, class_names: Sequence[str] = ()) -> dict:
    """Accuracy and macro F1 (over the classes present in truth or prediction, or ``class_names``)."""
    t = np.asarray(y_true, dtype=object).astype(str)
    p = np.asarray(y_pred, dtype=object).astype(str)
    if t.size == 0:
        return {}
    classes = list(class_names) or sorted(set(t) | set(p))
    f1s = []
    for c in classes:
        tp = np.sum((p == c) & (t == c))
        fp = np.sum((p == c) & (t != c))
        fn = np.sum((p != c) & (t == c))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(t == p)), "f1_macro": float(np.mean(f1s)) if f1s else 0.0}


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict:
    t, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    if t.size == 0:
        return {}
    err = p - t
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2)))}


def _labels_as_names(labels: pd.Series, class_names: Sequence[str]) -> pd.Series:
    """Integer labels index ``class_names`` unless the class names are themselves those integers."""
    names = [str(c) for c in class_names]
    if names and pd.api.types.is_numeric_dtype(labels.dtype):
        as_int = labels.astype(int)
        if not set(as_int.astype(str)) <= set(names) and as_int.between(0, len(names) - 1).all():
            return as_int.map(dict(enumerate(names)))
        return as_int.astype(str)
    return labels.astype(str)


def baseline_value(metrics: Mapping[str, float], name: str) -> float | None:
    """The lineage's value for metric ``name`` (``accuracy``, ``test_accuracy``, ``val_accuracy``, ...)."""
    for alias in BASELINE_ALIASES.get(name, (name,)):
        for prefix in BASELINE_PREFIXES:
            value = metrics.get(prefix + alias)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
    return None


def evaluate_performance(
    window: pd.DataFrame,
    task: str,
    *,
    label: str = "label",
    prediction: str,
    class_names: Sequence[str] = (),
    baseline: Mapping[str, float] | None = None,
    tolerance: float = 0.05,
    min_labels: int = 1,
) -> dict:
    """Metrics on the labelled rows of a window, and their change against the evaluation baseline.

    Args:
        window: rows with a ``label`` column (NaN where none arrived) and a ``prediction`` column
            (predicted class name, or predicted value for regression).
        task: ``classification`` or ``regression``.
        class_names: the model's classes, in output order (integer labels are mapped through them).
        baseline: the ``metrics`` of the lineage file.
        tolerance: relative degradation allowed before ``degraded`` (0.05: accuracy may fall 5%, MAE rise 5%).
        min_labels: fewer labelled rows give no metrics (``evaluated: false``).
    Returns:
        ``{"evaluated", "n_labelled", "metrics", "baseline", "delta", "degraded", "degraded_metrics"}``.
    """
    labelled = window[window[label].notna()] if label in window.columns else window.iloc[0:0]
    out = {
        "task": task,
        "evaluated": False,
        "n_labelled": len(labelled),
        "metrics": {},
        "baseline": {},
        "delta": {},
        "degraded": False,
        "degraded_metrics": [],
    }
    if len(labelled) < max(1, min_labels) or prediction not in labelled.columns:
        return out
    if task == "classification":
        metrics = classification_metrics(
            _labels_as_names(labelled[label], class_names),
            labelled[prediction].astype(str),
            [str(c) for c in class_names],
        )
    elif task == "regression":
        metrics = regression_metrics(
            pd.to_numeric(labelled[label], errors="coerce"),
            pd.to_numeric(labelled[prediction], errors="coerce"),
        )
    else:
        raise ValueError(f"unknown task {task!r}")
    out.update(evaluated=True, metrics=metrics)
    for name, value in metrics.items():
        base = baseline_value(baseline or {}, name)
        if base is None:
            continue
        out["baseline"][name] = base
        out["delta"][name] = value - base
        worse = value < base * (1 - tolerance) if HIGHER_IS_BETTER[name] else value > base * (1 + tolerance)
        if worse:
            out["degraded_metrics"].append(name)
    out["degraded"] = bool(out["degraded_metrics"])
    return out
