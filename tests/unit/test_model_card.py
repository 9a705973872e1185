"""pipeline.model_card: the model card, the version's description and the table of versions, from known facts."""
from __future__ import annotations

import base64

import pytest

from pipeline.model_card import (
    ModelCard,
    fmt,
    headline_metrics,
    render_html,
    summary_line,
    version_description,
    versions_table,
)

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def _card(tmp_path=None, **changes) -> ModelCard:
    plots = {}
    if tmp_path is not None:
        (tmp_path / "confusion_matrix.png").write_bytes(PNG)
        plots = {"confusion_matrix.png": str(tmp_path / "confusion_matrix.png")}
    facts = dict(
        model_name="penguins", task="classification", label="species", version=2,
        features={"island": {"kind": "categorical", "why": "3 distinct strings"},
                  "bill_length_mm": {"kind": "numeric", "why": "float64"}},
        excluded=["id: identifier (unique per row)"],
        metrics={"accuracy": 0.97059, "f1_macro": 0.9612, "log_loss": 0.08, "precision_Adelie": 1.0},
        champion_metrics={"accuracy": 0.95588, "f1_macro": 0.94, "log_loss": 0.1, "precision_Adelie": 0.97},
        champion_version=1, champion_note="champion v1 scored on the same test split",
        gate={"metric": "accuracy", "thresholds": {"accuracy": 0.9}, "max_regression": 0.02},
        decision={"blessed": True, "reasons": ["accuracy 0.9706 meets >= 0.9",
                                               "accuracy 0.9706 vs champion 0.9559: within the allowed regression"],
                  "candidate_metric": 0.97059, "champion_metric": 0.95588},
        data={"rows": 344, "source": "/data/penguins.csv", "digest": "ab" * 32, "snapshot": "/s/p.parquet",
              "test_rows": 68, "test_dataset": "penguins-test"},
        deploy_checks={"max_abs_diff": 1e-5, "latency_budget_ms": 500, "latency_requests": 50,
                       "allow_signature_change": False, "canary": False},
        plots=plots,
        lineage={"dag_id": "training_pipeline", "dag_run_id": "manual__1", "model_id": "m-123",
                 "logged_model_name": "penguins-v2"},
    )
    return ModelCard(**{**facts, **changes})


@pytest.mark.parametrize("value, text", [(0.970588, "0.9706"), (344, "344"), (344.0, "344"), (None, "–"),
                                         (float("nan"), "–"), (1.5e-6, "1.5e-06"), ("x", "x")])
def test_numbers_read_as_people_read_them(value, text):
    assert fmt(value) == text


def test_the_gate_metric_leads_the_headline():
    metrics = {"log_loss": 0.1, "accuracy": 0.9, "f1_macro": 0.8, "recall_Adelie": 1.0}
    assert headline_metrics("classification", metrics, "log_loss") == ["log_loss", "accuracy", "f1_macro"]
    assert headline_metrics("regression", {"r2": 0.5, "rmse": 2.0, "mae": 1.0}, "mae") == ["mae", "rmse", "r2"]


def test_the_summary_line_says_the_decision_and_the_champions_score():
    assert summary_line(_card()) == "Blessed: accuracy 0.9706 (champion v1: 0.9559)"
    refused = _card(decision={"blessed": False, "reasons": ["accuracy 0.5 fails >= 0.9"], "candidate_metric": 0.5,
                              "champion_metric": None}, champion_metrics=None, champion_version=None)
    assert summary_line(refused) == "Not blessed: accuracy 0.5 (no champion to compare with)"


def test_the_version_description_has_data_metrics_gate_and_lineage_links():
    links = {"parent": "#/experiments/1/runs/p", "evaluate": "#/experiments/1/runs/e", "export": "",
             "model": "#/experiments/1/models/m-123", "dag_run": "http://127.0.0.1:8080/dags/training_pipeline/runs/x"}
    text = version_description(_card(), links)
    assert text.startswith("Blessed: accuracy 0.9706 (champion v1: 0.9559)\n")
    assert "| metric | v2 | champion v1 |" in text and "| accuracy | 0.9706 | 0.9559 |" in text
    assert "| f1_macro | 0.9612 | 0.94 |" in text and "| log_loss | 0.08 | 0.1 |" in text
    assert "precision_Adelie" not in text, "per-class metrics are in the card, not the description"
    assert "- accuracy 0.9706 vs champion 0.9559: within the allowed regression" in text
    assert "344 rows from `/data/penguins.csv`, sha256 `abababababababab…`" in text
    assert "[DAG run's MLflow run](#/experiments/1/runs/p)" in text and "[evaluate](#/experiments/1/runs/e)" in text
    assert ", export," in text, "a run without a link is named, not linked"
    assert "[logged model `penguins-v2`](#/experiments/1/models/m-123)" in text
    assert "[`training_pipeline` / `manual__1`](http://127.0.0.1:8080/dags/training_pipeline/runs/x)" in text
    assert len(text) < 3000, "room is left for the deploy events (MLflow keeps 5000 characters)"


def test_without_a_champion_the_description_says_why():
    text = version_description(_card(champion_metrics=None, champion_note="champion v1 could not be scored: bad"))
    assert "| metric | v2 |" in text and "champion v1 |" not in text
    assert "Champion: champion v1 could not be scored: bad." in text


def test_the_versions_table_is_newest_first_with_the_gate_metric_and_the_champions():
    rows = [{"version": 1, "blessed": True, "metrics": {"accuracy": 0.95, "f1_macro": 0.94}, "champion_metric": None,
             "registered": "2026-11-22 00:43"},
            {"version": 2, "blessed": False, "metrics": {"accuracy": 0.9}, "champion_metric": 0.95,
             "registered": "2026-11-23 10:00"},
            {"version": 3, "blessed": None, "metrics": {}, "champion_metric": None, "registered": None}]
    lines = versions_table(rows, ["accuracy", "f1_macro"], "accuracy").splitlines()
    assert lines[0] == "| version | registered | blessed | accuracy | f1_macro | champion's accuracy |"
    assert lines[2:] == ["| v3 | – | – | – | – | – |", "| v2 | 2026-11-23 10:00 | no | 0.9 | – | 0.95 |",
                         "| v1 | 2026-11-22 00:43 | yes | 0.95 | 0.94 | – |"]


def test_the_card_shows_features_metrics_plots_gate_and_pending_deploy_checks(tmp_path):
    page = render_html(_card(tmp_path))
    assert "<title>Model card: penguins version 2</title>" in page
    assert "<code>island</code></td><td>categorical</td><td>3 distinct strings</td>" in page
    assert "Left out: id: identifier (unique per row)" in page
    assert "<th>metric</th><th>version 2</th><th>champion v1</th>" in page
    assert "<code>precision_Adelie</code></td><td>1</td><td>0.97</td>" in page, "every metric, per class too"
    assert f"data:image/png;base64,{base64.b64encode(PNG).decode()}" in page, "the plots are embedded"
    assert "accuracy 0.9706 meets &gt;= 0.9" in page, "the gate's reasons, escaped"
    assert "Outcome: not run yet" in page and page.count(">pending<") == 3
    assert "≤ 500 ms" in page and "≤ 1e-05" in page


def test_the_card_after_deploy_shows_what_was_measured(tmp_path):
    deployed = render_html(_card(deploy={"deployed": True, "label": "stable", "published": "/serving/penguins/2",
                                         "rest_max_abs_diff": 1.2e-7, "grpc_max_abs_diff": 0.0,
                                         "rest_p99_ms": 4.25, "grpc_p99_ms": 3.5}))
    assert "Outcome: deployed (label stable), published at /serving/penguins/2" in deployed
    assert "REST 1.2e-07, GRPC 0" in deployed and "REST 4.25 ms, GRPC 3.5 ms" in deployed
    assert ">pending<" not in deployed and deployed.count('class="yes">yes<') == 5

    slow = render_html(_card(deploy={"deployed": False, "error": "p99 latency of REST predicts is 900 ms",
                                     "rest_max_abs_diff": 0.0, "grpc_max_abs_diff": 0.0, "rest_p99_ms": 900.0}))
    assert "Outcome: not deployed: p99 latency of REST predicts is 900 ms" in slow
    rows = slow.split("<h2>Deploy checks</h2>")[1].split("</table>")[0].split("<tr>")[2:]
    assert ['class="yes"' in r for r in rows] == [True, True, True, False], "the latency check failed, not the rest"

    refused = render_html(_card(decision={"blessed": False, "reasons": [], "candidate_metric": 0.5},
                                deploy={"deployed": False, "reason": "not blessed by the evaluation gate"}))
    assert "Outcome: not deployed: not blessed by the evaluation gate" in refused
    assert refused.count(">not run<") == 3


def test_the_card_escapes_what_it_shows():
    page = render_html(_card(features={"<b>x</b>": {"kind": "text", "why": "a & b"}}))
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page and "a &amp; b" in page


def test_a_card_survives_its_json_round_trip(tmp_path):
    card = _card(tmp_path)
    assert ModelCard.from_dict({**card.to_dict(), "unknown_later_field": 1}) == card
