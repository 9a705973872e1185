"""What a candidate model is, written for people: its model card (a self-contained HTML page logged with the
model), the description of its registered version, and the registered model's table of versions.

Pure functions of a :class:`ModelCard`, the facts the tasks gathered (features and their kinds, the data, the
test metrics beside the champion's, the gate's decision, the deploy checks and, once run, their outcome); the
tasks log what these return (``pipeline.tasks``, docs/mlflow_ui.md).
"""
from __future__ import annotations

import base64
import html
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

CARD_FILE = "model_card.html"
# The metrics a person compares first, in this order; the per-class ones are in the card only.
HEADLINE = {"classification": ("accuracy", "f1_macro", "precision_macro", "recall_macro", "roc_auc_ovr", "log_loss"),
            "regression": ("rmse", "mae", "r2")}


@dataclass(frozen=True)
class ModelCard:
    """The facts about one candidate.

    Attributes:
        features: column -> ``{"kind": feature kind, "why": why it was inferred so}`` (the validate stage's schema).
        excluded: columns left out of the features, with the reason (``"id: identifier"``).
        data: ``rows``, ``source``, ``digest`` (sha256 of the snapshot), ``snapshot`` (path), ``test_rows``,
            ``test_dataset`` (the MLflow dataset name the metrics are logged on).
        metrics: the candidate's metrics on the test split; ``champion_metrics`` the champion's on the same rows
            (None without a champion, or when it could not be scored: ``champion_note`` says which).
        gate: ``metric``, ``thresholds``, ``max_regression`` as applied; ``decision``: ``blessed``, ``reasons``,
            ``candidate_metric``, ``champion_metric`` (``pipeline.evaluate.GateDecision``).
        deploy_checks: the deploy section's limits (``max_abs_diff``, ``latency_budget_ms``, ``latency_requests``,
            ``allow_signature_change``, ``canary``); ``deploy``: the deploy stage's outcome (``deployed``,
            ``reason``, ``label``, measurements such as ``rest_p99_ms``), None until it ran.
        plots: artifact name -> local PNG path (embedded in the card).
        lineage: ``dag_id``, ``dag_run_id``, ``experiment_id``, ``parent_run_id``, ``evaluate_run_id``,
            ``export_run_id``, ``model_id``, ``logged_model_name``.
    """

    model_name: str
    task: str
    label: str
    features: dict[str, dict[str, str]]
    metrics: dict[str, float]
    gate: dict[str, Any]
    decision: dict[str, Any]
    excluded: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    champion_metrics: dict[str, float] | None = None
    champion_version: int | None = None
    champion_note: str = ""
    deploy_checks: dict[str, Any] = field(default_factory=dict)
    deploy: dict[str, Any] | None = None
    plots: dict[str, str] = field(default_factory=dict)
    lineage: dict[str, str] = field(default_factory=dict)
    version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "ModelCard":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    @property
    def blessed(self) -> bool:
        return bool(self.decision.get("blessed"))

    @property
    def title(self) -> str:
        return f"{self.model_name} version {self.version}" if self.version is not None else f"{self.model_name} candidate"


def fmt(value: Any) -> str:
    """A metric as people read it: 4 significant digits, integers as they are, ``–`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def headline_metrics(task: str, metrics: Mapping[str, float], gate_metric: str | None = None) -> list[str]:
    """The metrics to show first: the gate's, then the task's usual ones that were computed."""
    keys = [gate_metric] if gate_metric and gate_metric in metrics else []
    return keys + [k for k in HEADLINE.get(task, ()) if k in metrics and k not in keys]


def summary_line(card: ModelCard) -> str:
    """The first line of the version's description (the registry's versions table shows its start)."""
    metric = card.gate.get("metric")
    champion = card.decision.get("champion_metric")
    against = (f" (champion v{card.champion_version}: {fmt(champion)})" if champion is not None
               else " (no champion to compare with)" if card.champion_version is None else f" ({card.champion_note})")
    return f"{'Blessed' if card.blessed else 'Not blessed'}: {metric} {fmt(card.decision.get('candidate_metric'))}{against}"


def _md(text: Any) -> str:
    """Text safe inside a markdown table cell or line."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def version_description(card: ModelCard, links: Mapping[str, str] | None = None) -> str:
    """The markdown description of the registered version: the gate's decision and why, the headline metrics
    against the champion, the data, and the lineage as links (``links``: ``dag_run`` (the Airflow UI), ``parent``,
    ``evaluate``, ``export``, ``model``: UI routes). Kept short: MLflow stores 5000 characters, and the deploy
    events are appended below it."""
    links = links or {}
    lineage, data, gate = card.lineage, card.data, card.gate
    lines = [summary_line(card), ""]
    limits = ", ".join(f"{k} {'<=' if k in ('log_loss', 'mae', 'rmse', 'mse') else '>='} {v}"
                       for k, v in (gate.get("thresholds") or {}).items())
    lines += [f"**Gate** on `{gate.get('metric')}` (thresholds: {limits or 'none'}; allowed regression against the "
              f"champion: {gate.get('max_regression')}): **{'blessed' if card.blessed else 'not blessed'}**", ""]
    lines += [f"- {_md(reason)}" for reason in card.decision.get("reasons") or []] + [""]
    keys = headline_metrics(card.task, card.metrics, gate.get("metric"))
    champion = card.champion_metrics or {}
    where = f"`{data['test_dataset']}`, " if data.get("test_dataset") else ""
    lines += [f"**Metrics** on the test split ({where}{fmt(data.get('test_rows'))} rows; all of them, per class "
              f"too, in the model card and the Models tab):", ""]
    this = f"v{card.version}" if card.version is not None else "candidate"
    if champion:
        lines += [f"| metric | {this} | champion v{card.champion_version} |", "|---|---|---|"]
        lines += [f"| {k} | {fmt(card.metrics.get(k))} | {fmt(champion.get(k))} |" for k in keys]
    else:
        lines += [f"| metric | {this} |", "|---|---|"] + [f"| {k} | {fmt(card.metrics.get(k))} |" for k in keys]
    if card.champion_note and not champion:
        lines += ["", f"Champion: {_md(card.champion_note)}."]
    digest = str(data.get("digest") or "")
    lines += ["", f"**Data**: {fmt(data.get('rows'))} rows from `{_md(data.get('source', '?'))}`, sha256 "
                  f"`{digest[:16]}…` (snapshot `{_md(data.get('snapshot', '?'))}`)", ""]

    def link(text: str, key: str) -> str:
        return f"[{text}]({links[key]})" if links.get(key) else text

    dag_run = f"`{lineage.get('dag_id', '?')}` / `{lineage.get('dag_run_id', '?')}`"
    runs = [link("DAG run's MLflow run", "parent"), link("evaluate", "evaluate"), link("export", "export"),
            link(f"logged model `{lineage.get('logged_model_name', card.model_name)}`", "model")]
    lines += [f"**Lineage**: Airflow {link(dag_run, 'dag_run')}; MLflow {', '.join(runs)}; model card: "
              f"`{CARD_FILE}` in the logged model's and the DAG run's artifacts"]
    return "\n".join(lines).strip() + "\n"


def versions_table(rows: Sequence[Mapping[str, Any]], metric_keys: Sequence[str], gate_metric: str) -> str:
    """The registered model's versions side by side, newest first (markdown).

    Args:
        rows: per version ``version``, ``blessed`` (bool or None), ``metrics`` (its test metrics),
            ``champion_metric`` (the champion's gate metric on the same split, or None), ``registered`` (a date).
        metric_keys: the metric columns, the gate metric first.
    """
    head = ["version", "registered", "blessed", *metric_keys, f"champion's {gate_metric}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in sorted(rows, key=lambda r: -int(r["version"])):
        blessed = {True: "yes", False: "no"}.get(row.get("blessed"), "–")
        cells = [f"v{row['version']}", _md(row.get("registered") or "–"), blessed,
                 *(fmt((row.get("metrics") or {}).get(k)) for k in metric_keys), fmt(row.get("champion_metric"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ HTML
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;color:#1f272d;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f5f5f5}.yes{color:#277c43;font-weight:bold}.no{color:#c82d4c;font-weight:bold}
.muted{color:#5f7281}img{max-width:100%;border:1px solid #eee;margin:.5em 0}code{background:#f5f5f5;padding:0 .2em}"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A table of ``rows`` (cells already HTML); no header row when ``head`` is all empty (a key-value table)."""
    out = ["<table>" + ("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" if any(head) else "")]
    out += ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows]
    return "".join(out) + "</table>"


def _verdict(ok: bool | None, yes: str = "yes", no: str = "no") -> str:
    if ok is None:
        return '<span class="muted">pending</span>'
    return f'<span class="{"yes" if ok else "no"}">{_e(yes if ok else no)}</span>'


def _deploy_rows(card: ModelCard) -> list[list[str]]:
    """The deploy stage's checks: what each requires, what it measured, and whether it passed. The stage runs
    them in this order and stops at the first that fails, so a later check's measurements mean the earlier
    ones passed."""
    checks, out = card.deploy_checks, card.deploy or {}
    answers, latency = ("rest_max_abs_diff", "grpc_max_abs_diff"), ("rest_p99_ms", "grpc_p99_ms")

    def measured(keys: Sequence[str], unit: str = "") -> str:
        values = [f"{k.split('_')[0].upper()} {fmt(out[k])}{unit}" for k in keys if k in out]
        return _e(", ".join(values)) if values else '<span class="muted">not measured</span>'

    def passed(reached: bool, ok: bool) -> str:
        if not card.blessed:
            return '<span class="muted">not run</span>'
        if card.deploy is None:
            return '<span class="muted">pending</span>'
        if out.get("deployed"):
            return _verdict(True)
        return _verdict(ok) if reached else '<span class="muted">not reached</span>'

    has = lambda keys: any(k in out for k in keys)  # noqa: E731
    within = has(latency) and all(out[k] <= float(checks.get("latency_budget_ms", math.inf)) for k in latency if k in out)
    signature = "may change" if checks.get("allow_signature_change") else "no input removed, added or retyped"
    return [
        ["blessed by the gate", "yes", "–", _verdict(card.blessed)],
        ["serving signature against the champion's", _e(signature), "–",
         passed(has(answers) or has(latency) or "signature" in str(out.get("error", "")), has(answers) or has(latency))],
        ["REST and gRPC answers vs the evaluation's predictions", f"≤ {_e(fmt(checks.get('max_abs_diff', '?')))}",
         measured(answers), passed(has(answers), has(latency))],
        [f"p99 latency of {_e(fmt(checks.get('latency_requests', '?')))} single-row requests per API",
         f"≤ {_e(fmt(checks.get('latency_budget_ms', '?')))} ms", measured(latency, " ms"), passed(has(latency), within)],
    ]


def _image(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        return ""
    data = base64.b64encode(p.read_bytes()).decode("ascii")
    return f'<figure><img alt="{_e(p.stem)}" src="data:image/png;base64,{data}"><figcaption class="muted">{_e(p.name)}' \
           f'</figcaption></figure>'


def render_html(card: ModelCard) -> str:
    """The model card: one HTML page with its plots embedded, readable in MLflow's artifact viewer or offline."""
    gate, decision, data, lineage = card.gate, card.decision, card.data, card.lineage
    champion = card.champion_metrics or {}
    keys = headline_metrics(card.task, card.metrics, gate.get("metric"))
    keys += [k for k in card.metrics if k not in keys]
    metric_head = ["metric", card.title.split(" ", 1)[1] if card.version is not None else "candidate"]
    if champion:
        metric_head.append(f"champion v{card.champion_version}")
    metric_rows = [[f"<code>{_e(k)}</code>", _e(fmt(card.metrics.get(k))),
                    *([_e(fmt(champion.get(k)))] if champion else [])] for k in keys]
    feature_rows = [[f"<code>{_e(col)}</code>", _e(info.get("kind", "?")), _e(info.get("why") or "pinned in the config")]
                    for col, info in card.features.items()]
    out = card.deploy or {}
    if card.deploy is None:
        outcome = "not run yet" if card.blessed else "will not deploy: not blessed by the gate"
    elif out.get("deployed"):
        outcome = f"deployed (label {out.get('label', '?')}), published at {out.get('published', '?')}"
    else:
        outcome = f"not deployed: {out.get('reason') or out.get('error') or 'see the deploy run'}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Model card: {_e(card.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Model card: {_e(card.title)}</h1>",
        f"<p>{_e(card.task)} of <code>{_e(card.label)}</code> · logged model "
        f"<code>{_e(lineage.get('logged_model_name', '?'))}</code> ({_e(lineage.get('model_id', '?'))}) · "
        f"blessed: {_verdict(card.blessed)}</p>",
        "<h2>Gate</h2>",
        f"<p>Metric <code>{_e(gate.get('metric'))}</code>, thresholds "
        f"{_e(', '.join(f'{k} {v}' for k, v in (gate.get('thresholds') or {}).items()) or 'none')}, allowed regression "
        f"against the champion {_e(gate.get('max_regression'))}: {_verdict(card.blessed, 'blessed', 'not blessed')}</p>",
        "<ul>" + "".join(f"<li>{_e(r)}</li>" for r in decision.get("reasons") or []) + "</ul>",
        "<h2>Metrics on the test split</h2>",
        f"<p class='muted'>{_e(fmt(data.get('test_rows')))} rows of MLflow dataset "
        f"<code>{_e(data.get('test_dataset', '?'))}</code>; "
        f"{_e(card.champion_note or 'no champion')}.</p>",
        _table(metric_head, metric_rows),
        "<h2>Plots</h2>",
        "".join(_image(p) for p in card.plots.values()) or "<p class='muted'>none</p>",
        "<h2>Features</h2>",
        _table(["column", "kind", "why"], feature_rows),
        (f"<p>Left out: {_e(', '.join(card.excluded))}</p>" if card.excluded else ""),
        "<h2>Data</h2>",
        _table(["", ""], [["rows", _e(fmt(data.get("rows")))], ["source", f"<code>{_e(data.get('source', '?'))}</code>"],
                          ["sha256", f"<code>{_e(data.get('digest', '?'))}</code>"],
                          ["snapshot", f"<code>{_e(data.get('snapshot', '?'))}</code>"]]),
        "<h2>Deploy checks</h2>",
        f"<p>Outcome: {_e(outcome)}</p>",
        _table(["check", "requires", "measured", "passed"], _deploy_rows(card)),
        "<h2>Lineage</h2>",
        _table(["", ""], [[_e(k), f"<code>{_e(v)}</code>"] for k, v in lineage.items() if v]),
        "</body></html>",
    ]
    return "\n".join(parts)
