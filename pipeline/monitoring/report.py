"""The monitor's outputs: a self-contained HTML report with per-feature plots, and the MLflow monitor run.

- ``plot_feature`` draws one column, reference (from its cached sketch) against the current window.
- ``write_report`` writes ``report.html`` (plots embedded, one file to open anywhere), ``plots/<column>.png``
  and ``drift.json`` (the ``pipeline monitor --json`` document) into a directory.
- ``log_monitor_run`` records a monitor run in the experiment ``<model_name>-monitoring``: drift scores per
  feature as metrics (step = the monitor run's sequence number, timestamp = the window's end), the summary and
  the report as artifacts. The same metrics also go, at the same step, to one long-lived run per model
  (``drift-history``), whose charts show each feature's drift across monitor runs as a line.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import paths
from pipeline.atomic import write_text_atomic
from pipeline.monitoring.drift import ColumnDrift, DriftResult
from pipeline.monitoring.reference import (
    CategoricalSketch,
    NumericSketch,
    ReferenceStats,
    category_counts,
    numeric_values,
)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the MLflow 3 UI opens the runs table, not the GenAI pages
HISTORY_RUN_NAME = "drift-history"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_feature(
    name: str,
    reference: NumericSketch | CategoricalSketch,
    current: pd.Series | None,
    result: ColumnDrift | None = None,
    bins: int = 40,
    max_categories: int = 15,
) -> bytes:
    """A PNG of one column: reference vs current density (numeric) or category shares (categorical)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=90)
    try:
        if isinstance(reference, NumericSketch):
            values, _ = numeric_values(current, 0)
            pool = np.concatenate([reference.values, values]) if values.size else reference.values
            if pool.size:
                lo, hi = (
                    np.quantile(pool, [0.005, 0.995]) if pool.size > 1 else (pool[0] - 0.5, pool[0] + 0.5)
                )
                if lo == hi:
                    lo, hi = lo - 0.5, hi + 0.5
                edges = np.linspace(lo, hi, bins + 1)
                ref_h, _ = np.histogram(reference.values, edges, weights=reference.weights)
                ax.stairs(ref_h, edges, label=f"reference (n={reference.count:,})", fill=True, alpha=0.4)
                if values.size:
                    cur_h, _ = np.histogram(values, edges)
                    ax.stairs(cur_h / values.size, edges, label=f"current (n={values.size:,})", linewidth=2)
            ax.set_ylabel("share of rows")
        else:
            counts, _ = category_counts(current, 0)
            ref_total, cur_total = max(reference.count, 1), max(sum(counts.values()), 1)
            cats = sorted(
                set(reference.counts) | set(counts),
                key=lambda c: -(reference.counts.get(c, 0) / ref_total + counts.get(c, 0) / cur_total),
            )
            cats = cats[:max_categories]
            x = np.arange(len(cats))
            ax.bar(x - 0.2, [reference.counts.get(c, 0) / ref_total for c in cats], 0.4, label="reference")
            ax.bar(x + 0.2, [counts.get(c, 0) / cur_total for c in cats], 0.4, label="current")
            ax.set_xticks(
                x,
                [c + (" (new)" if c not in reference.counts else "") for c in cats],
                rotation=30,
                ha="right",
                fontsize=8,
            )
            ax.set_ylabel("share of rows")
        title = name
        if result is not None:
            h = result.headline
            effect = "" if h.effect_size is None else f", effect {h.effect_size:.3f} (>= {h.threshold:g})"
            title += f" - {'DRIFT' if result.drift else 'no drift'}: {h.test}{effect}"
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.3g}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"
    return html.escape(str(x))


def render_html(result: DriftResult, plots: Mapping[str, bytes], title: str = "Drift report") -> str:
    """The report as one HTML string (plots inlined as base64 PNG)."""
    doc = result.to_dict()
    esc = html.escape
    verdict = (
        "DATASET DRIFT" if doc["dataset_drift"] else ("SKIPPED" if doc["skipped"] else "no dataset drift")
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        (
            f"<title>{esc(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
            ".drift{background:#fdd}.ok{background:#efe}img{max-width:100%}</style></head><body>"
        ),
        f"<h1>{esc(title)}</h1>",
        f"<p><b>{verdict}</b> - {esc(doc['drift_reason'])}</p>",
        f"<p>Retraining: {'triggered' if doc['retraining_triggered'] else 'not triggered'} - {esc(doc['reason'])}</p>",
        (
            f"<p>Rows: reference {doc['n_reference']:,}, current {doc['n_current']:,}. "
            f"Drifted features: {len(doc['drifted_features'])} of {doc['n_features']} ({doc['drift_share']:.0%}).</p>"
        ),
    ]
    if doc["new_columns"]:
        parts.append(
            f"<p>New columns in the window (not monitored): {esc(', '.join(doc['new_columns']))}</p>"
        )
    if doc["missing_columns"]:
        parts.append(f"<p>Columns missing from the window: {esc(', '.join(doc['missing_columns']))}</p>")
    meta = {k: v for k, v in doc["meta"].items() if not isinstance(v, (dict, list))}
    if meta:
        parts.append("<p>" + ", ".join(f"{esc(str(k))}: {_fmt(v)}" for k, v in meta.items()) + "</p>")
    perf = doc.get("performance")
    if perf and perf.get("evaluated"):
        rows = "".join(
            f"<tr><td>{esc(m)}</td><td>{_fmt(v)}</td><td>{_fmt(perf['baseline'].get(m))}</td>"
            f"<td>{_fmt(perf['delta'].get(m))}</td></tr>"
            for m, v in perf["metrics"].items()
        )
        parts.append(
            f"<h2>Performance on {perf['n_labelled']:,} labelled rows"
            f"{' - DEGRADED' if perf['degraded'] else ''}</h2><table><tr><th>metric</th><th>window</th>"
            f"<th>baseline</th><th>change</th></tr>{rows}</table>"
        )
    for section, columns in (("Features", doc["features"]), ("Predictions", doc["predictions"])):
        if not columns:
            continue
        parts.append(
            f"<h2>{section}</h2><table><tr><th>column</th><th>kind</th><th>drift</th><th>test</th>"
            "<th>statistic</th><th>p-value</th><th>adjusted</th><th>effect size</th><th>threshold</th>"
            "<th>missing rate ref / cur</th><th>notes</th></tr>"
        )
        for name, f in sorted(columns.items(), key=lambda kv: (not kv[1]["drift"], kv[0])):
            notes = []
            if f.get("unseen_categories"):
                notes.append(
                    "unseen: " + ", ".join(f"{c} ({s:.1%})" for c, s in f["unseen_categories"].items())
                )
            if f.get("vanished_categories"):
                notes.append("vanished: " + ", ".join(f["vanished_categories"]))
            if f["status"] != "ok":
                notes.append(f["status"])
            parts.append(
                f"<tr class='{'drift' if f['drift'] else 'ok'}'><td><a href='#{esc(_safe_name(name))}'>{esc(name)}"
                f"</a></td><td>{f['kind']}</td><td>{'yes' if f['drift'] else 'no'}</td><td>{esc(f['test'])}</td>"
                f"<td>{_fmt(f['statistic'])}</td><td>{_fmt(f['p_value'])}</td><td>{_fmt(f['p_value_adjusted'])}</td>"
                f"<td>{_fmt(f['effect_size'])}</td><td>{_fmt(f['threshold'])}</td>"
                f"<td>{_fmt(f.get('reference_missing_rate'))} / {_fmt(f.get('current_missing_rate'))}</td>"
                f"<td>{esc('; '.join(notes))}</td></tr>"
            )
        parts.append("</table>")
    if plots:
        parts.append("<h2>Distributions</h2>")
        for name, png in plots.items():
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(
                f"<h3 id='{esc(_safe_name(name))}'>{esc(name)}</h3>"
                f"<img alt='{esc(name)}' src='data:image/png;base64,{b64}'>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    result: DriftResult,
    reference: ReferenceStats,
    current: pd.DataFrame,
    out_dir: Path,
    title: str | None = None,
) -> Path:
    """Write ``report.html``, ``plots/<column>.png`` and ``drift.json`` into ``out_dir``; returns the HTML path."""
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    plots: dict[str, bytes] = {}
    if not result.skipped:
        columns = {**result.features, **result.predictions}
        for name, col in sorted(columns.items(), key=lambda kv: (not kv[1].drift, kv[0])):
            sketch = reference.numeric.get(name) or reference.categorical.get(name)
            if sketch is None:
                continue
            png = plot_feature(name, sketch, current[name] if name in current.columns else None, col)
            (out_dir / "plots" / f"{_safe_name(name)}.png").write_bytes(png)
            plots[name] = png
    model = result.meta.get("model_name")
    title = title or (
        f"Drift report - {model} v{result.meta.get('model_version', '?')}" if model else "Drift report"
    )
    write_text_atomic(out_dir / "drift.json", result.to_json(indent=1))
    return write_text_atomic(out_dir / "report.html", render_html(result, plots, title))


# ---------------------------------------------------------------------------------------------------------
# MLflow.


def _metric_key(*parts: str) -> str:
    """MLflow metric names allow letters, digits, ``_-. /``; anything else becomes ``_``."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. ]+", "_", p) for p in parts)


def drift_metrics(result: DriftResult) -> dict[str, float]:
    """The numbers a monitor run logs: per column effect size, statistic, decision and missing rate;
    the dataset decision and share; the window's performance metrics."""
    doc = result.to_dict()
    out = {
        "dataset_drift": float(doc["dataset_drift"]),
        "drift_share": float(doc["drift_share"]),
        "n_drifted_features": float(len(doc["drifted_features"])),
        "n_current": float(doc["n_current"]),
        "prediction_drift": float(doc["prediction_drift"]),
        "skipped": float(doc["skipped"]),
        "retraining_triggered": float(doc["retraining_triggered"]),
    }
    for group in ("features", "predictions"):
        for name, f in doc[group].items():
            dist = f.get("distribution") or {}
            out[_metric_key("drift", name, "drift")] = float(f["drift"])
            if dist.get("effect_size") is not None:
                out[_metric_key("drift", name, "effect_size")] = dist["effect_size"]
                out[_metric_key("drift", name, "statistic")] = dist["statistic"]
            if f.get("current_missing_rate") is not None:
                out[_metric_key("drift", name, "missing_rate")] = f["current_missing_rate"]
    perf = doc.get("performance") or {}
    for name, value in (perf.get("metrics") or {}).items():
        out[_metric_key("performance", name)] = float(value)
    return out


def _experiment(client, name: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = None  # a tracking server decides; a SQLite store keeps artifacts beside its database
        if tracking_uri.startswith("sqlite:///"):
            location = (
                f"{(Path(tracking_uri.removeprefix('sqlite:///')).parent / 'artifacts').as_uri()}/{name}"
            )
        try:
            return client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except Exception:  # created concurrently: use that one
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def log_monitor_run(
    result: DriftResult,
    report_dir: Path | None,
    *,
    model_name: str,
    window_end: datetime,
    window_start: datetime | None = None,
    tracking_uri: str | None = None,
    experiment_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    history: bool = True,
) -> str:
    """Record one monitor run in MLflow; idempotent per (model, window end): a retry reuses the run.

    Args:
        result: the drift result (its JSON goes in as ``drift.json``).
        report_dir: the directory of ``write_report`` (logged under ``report/``), or None.
        model_name: names the experiment ``<model_name>-monitoring``.
        window_end: the end of the analysed window; the metrics' timestamp and the run's identity.
        window_start: recorded as a tag.
        tracking_uri: default ``paths.mlflow_tracking_uri()``.
        experiment_name: default ``<model_name>-monitoring``.
        tags: more run tags (e.g. the Airflow dag_id / run_id).
        history: also log the metrics to the ``drift-history`` run, for per-feature lines over time.
    Returns:
        The run id of the monitor run.
    """
    from mlflow.entities import Metric, RunTag

    from mlflow import MlflowClient

    uri = tracking_uri or paths.mlflow_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    exp_id = _experiment(client, experiment_name or f"{model_name}-monitoring", uri)
    end = window_end.replace(tzinfo=UTC) if window_end.tzinfo is None else window_end
    key = end.isoformat()
    found = client.search_runs([exp_id], filter_string=f"tags.`monitor.window_end` = '{key}'", max_results=1)
    if found:
        run_id, step = found[0].info.run_id, int(found[0].data.tags.get("monitor.step", "0"))
    else:
        earlier = client.search_runs(
            [exp_id], filter_string="tags.`pipeline.kind` = 'monitor'", max_results=50000
        )
        step = 1 + max((int(r.data.tags.get("monitor.step", "-1")) for r in earlier), default=-1)
        run_tags = {
            "pipeline.kind": "monitor",
            "monitor.window_end": key,
            "monitor.step": str(step),
            "monitor.model_name": model_name,
            "monitor.model_version": str(result.meta.get("model_version", "")),
            "monitor.window_start": window_start.isoformat() if window_start else "",
            **(tags or {}),
        }
        run_id = client.create_run(exp_id, run_name=f"monitor {key}", tags=run_tags).info.run_id
    ts = int(end.timestamp() * 1000)
    metrics = [Metric(k, float(v), ts, step) for k, v in drift_metrics(result).items()]
    verdict = {
        "drift.dataset": str(result.dataset_drift).lower(),
        "drift.skipped": str(result.skipped).lower(),
        "drift.reason": result.reason[:5000],
        "drift.drifted_features": ",".join(result.drifted_features)[:5000],
    }
    for i in range(0, len(metrics), 900):
        client.log_batch(
            run_id,
            metrics=metrics[i : i + 900],
            tags=[RunTag(k, v) for k, v in verdict.items()] if i == 0 else [],
        )
    client.log_text(run_id, result.to_json(indent=1), "drift.json")
    if report_dir is not None and Path(report_dir).exists():
        client.log_artifacts(run_id, str(report_dir), "report")
    client.set_terminated(run_id, "FINISHED")
    if history:
        hist = client.search_runs(
            [exp_id], filter_string="tags.`pipeline.kind` = 'monitor_history'", max_results=1
        )
        hist_id = (
            hist[0].info.run_id
            if hist
            else client.create_run(
                exp_id, run_name=HISTORY_RUN_NAME, tags={"pipeline.kind": "monitor_history"}
            ).info.run_id
        )
        for i in range(0, len(metrics), 900):
            client.log_batch(hist_id, metrics=metrics[i : i + 900])
        client.set_terminated(hist_id, "FINISHED")
    return run_id
