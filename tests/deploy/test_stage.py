"""The deploy stage against a real MLflow store and real servers: infra validation in the sandbox, publishing,
aliases and models.config, canary and promotion, retention, lineage, and the faults that must publish nothing."""
from __future__ import annotations

import json
import re
import tempfile

import numpy as np
import pytest
from deploy_helpers import MODEL, TEST_ROWS, answered_version, config_following_server, expected, served_state

from pipeline import deploy, lineage, registry
from pipeline.config import DeployConfig


def _stage(reg, template, cfg=DeployConfig(), **export):
    version, staging, parent = reg.export(template, **export)
    mv = reg.client.get_model_version(MODEL, str(version))
    result = deploy.run_deploy_stage(cfg, parent, MODEL, version, staging, blessed=mv.tags["blessed"] == "true",
                                     reason="test", by="test:deploy")
    return version, parent, result


def _config_entry(home):
    from pipeline.serving.options import parse_model_server_config

    return {m.name: m for m in parse_model_server_config((home / "serving" / "models.config").read_text())}[MODEL]


def test_deploy_validates_publishes_and_moves_the_aliases(reg, pipeline_home, templates):
    v1, parent1, first = _stage(reg, templates["v1"])
    assert first["deployed"] and first["label"] == "stable" and reg.aliases() == {"champion": v1}
    published = pipeline_home / "serving" / MODEL / str(v1)
    assert first["published"] == str(published)
    assert json.loads((published / "assets.extra" / "pipeline_metadata.json").read_text())["version"] == v1
    assert (published / "assets.extra" / "tf_serving_warmup_requests").stat().st_size > 0
    run = reg.deploy_run(parent1)
    assert run.data.tags["deployed"] == "true" and run.data.metrics["rest_max_abs_diff"] <= 1e-5
    assert run.data.metrics["grpc_max_abs_diff"] <= 1e-5 and run.data.metrics["rows"] == len(TEST_ROWS)
    assert {"rest_p99_ms", "grpc_p99_ms"} <= set(run.data.metrics)
    assert reg.client.get_run(parent1).info.status == "FINISHED"

    v2, _, second = _stage(reg, templates["v2"], answers=2)
    assert reg.aliases() == {"champion": v2, "previous": v1}
    entry = _config_entry(pipeline_home)
    assert entry.versions == (v2, v1) and entry.labels == (("stable", v2),)
    assert [(e["action"], e["alias"], e["by"]) for e in registry.version_events(MODEL, v2)] == [
        ("deploy", "champion", "test:deploy")]
    assert registry.version_events(MODEL, v1)[-1]["alias"] == "previous"

    # A retried deploy of a published version changes nothing and validates nothing again.
    before = served_state(pipeline_home)
    again = deploy.deploy_version(deploy.candidate_from_export(MODEL, v2, second["published"]), DeployConfig(),
                                  blessed=True)
    assert again["already_published"] and again["moved"] == {} and served_state(pipeline_home) == before

    info = lineage.lineage(MODEL)
    assert info["version"] == v2 and info["aliases"] == ["champion"] and info["in_models_config"]
    assert info["airflow"]["dag_run_id"] == "manual__test_2" and info["dataset"]["digest"] == "d" * 64
    assert info["metrics"] == {"accuracy": 0.97} and info["mlflow"]["deploy_run_id"]
    assert info["promotions"][0]["by"] == "test:deploy"
    text = lineage.format_lineage(info)
    assert "DAG run:          training_pipeline / manual__test_2" in text and "deploy    -> champion" in text


def test_a_sandbox_started_ahead_validates_once_and_is_stopped(reg, pipeline_home, templates):
    """`pipeline train` starts the validation server before Airflow (deploy.start_standby): the deploy stage
    renames the candidate into it and checks it there, a second deploy starts its own, and stopping it
    ends the process and removes its directory."""
    standby = deploy.start_standby(MODEL)
    try:
        v1, parent1, first = _stage(reg, templates["v1"])
        assert first["deployed"] and reg.aliases() == {"champion": v1}
        report = reg.client.download_artifacts(reg.deploy_run(parent1).info.run_id, "deploy_report.json")
        assert json.loads(open(report).read())["server"] == "sandbox (started ahead)"
        assert (standby.base / MODEL / str(v1)).is_dir()  # the candidate it served, beside its log
        v2, parent2, second = _stage(reg, templates["v2"], answers=2)
        report = reg.client.download_artifacts(reg.deploy_run(parent2).info.run_id, "deploy_report.json")
        assert second["deployed"] and json.loads(open(report).read())["server"] == "sandbox"
    finally:
        deploy.stop_standby(standby)
    assert standby.proc.poll() is not None and not standby.base.exists()


def test_a_dead_sandbox_started_ahead_is_not_used(reg, pipeline_home, templates):
    standby = deploy.start_standby(MODEL)
    standby.stop()
    try:
        v1, parent1, first = _stage(reg, templates["v1"])
        report = reg.client.download_artifacts(reg.deploy_run(parent1).info.run_id, "deploy_report.json")
        assert first["deployed"] and json.loads(open(report).read())["server"] == "sandbox"
    finally:
        deploy.stop_standby(standby)


def test_canary_goes_under_its_label_until_promoted_and_retention_spares_the_aliased(reg, pipeline_home, templates):
    v1 = reg.place(templates["v1"], champion=-1)
    canary_cfg = DeployConfig(canary=True, keep_versions=1)
    v2, _, result = _stage(reg, templates["v2"], canary_cfg, answers=2)
    assert result["label"] == "canary" and reg.aliases() == {"champion": v1, "challenger": v2}
    entry = _config_entry(pipeline_home)
    assert entry.versions == (v2, v1) and entry.labels == (("canary", v2), ("stable", v1))

    promoted = deploy.promote(MODEL, canary_cfg, reason="looks good", by="test:promote")
    assert reg.aliases() == {"champion": v2, "previous": v1} and promoted["moved"] == {"champion": v2, "previous": v1}
    assert _config_entry(pipeline_home).labels == (("stable", v2),)
    assert registry.version_events(MODEL, v2)[-1] == {**registry.version_events(MODEL, v2)[-1], "action": "promote",
                                                     "alias": "champion", "reason": "looks good"}
    with pytest.raises(deploy.DeployError, match="no challenger to promote"):
        deploy.promote(MODEL, canary_cfg)

    # Retention (keep 1): v3 and v4 arrive unaliased; only the newest and the aliased stay on disk.
    v3, v4 = reg.place(templates["v3"]), reg.place(templates["v3"])
    removed = deploy.move_aliases(MODEL, {}, action="deploy", reason="", keep_versions=1)["removed_versions"]
    assert removed == [v3] and sorted(deploy.version_dirs(reg.model_dir)) == [v1, v2, v4]


def test_unblessed_version_is_not_deployed(reg, pipeline_home, templates):
    v1 = reg.place(templates["v1"], champion=-1)
    before = served_state(pipeline_home)
    version, _, result = _stage(reg, templates["v2"], blessed=False)
    assert result == {"model_name": MODEL, "version": version, "deployed": False,
                      "reason": "not blessed by the evaluation gate"}
    with pytest.raises(deploy.DeployError, match=f"version {version} is not blessed"):
        deploy.deploy_version(deploy.candidate_from_export(MODEL, version, reg.model_dir / f".staging-manual__test_{version}"),
                              DeployConfig(), blessed=False)
    assert served_state(pipeline_home) == before and reg.aliases() == {"champion": v1}


# ------------------------------------------------------------------------------------------ faults
@pytest.fixture
def champion_serving(reg, pipeline_home, templates):
    """Version 1 is the champion, served by a running server that follows models.config."""
    v1 = reg.place(templates["v1"], champion=-1)
    server = config_following_server(pipeline_home)
    try:
        server.wait_ready(MODEL, v1)
        yield server, v1
    finally:
        server.stop()


def _corrupt_variables(reg, templates):
    version, staging, parent = reg.export(templates["v2"])
    data = next((staging / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[: len(data.read_bytes()) // 2])
    return version, staging, parent


def _corrupt_graph(reg, templates):
    version, staging, parent = reg.export(templates["v2"])
    (staging / "saved_model.pb").write_bytes(b"\x08\x01garbage" * 10)
    return version, staging, parent


FAULTS = {
    # name: (make the candidate, config, what the error must say)
    "corrupt_graph": (_corrupt_graph, DeployConfig(), r"cannot be read: DecodeError"),
    "corrupt_variables": (_corrupt_variables, DeployConfig(), r"failed to load in the validation server: "),
    "removed_input": (lambda reg, t: reg.export(t["no_island"]), DeployConfig(),
                      r"would break clients of the champion \(version 1\): input 'island' \(DT_STRING\) was removed"),
    "retyped_input": (lambda reg, t: reg.export(t["bill_as_text"]), DeployConfig(),
                      r"input 'bill_length_mm' changed type from DT_FLOAT to DT_STRING"),
    # Allowed through the signature check, the candidate still has to take the test split's requests.
    "retyped_input_allowed": (
        lambda reg, t: reg.export(t["bill_as_text"]), DeployConfig(allow_signature_change=True),
        r"failed to load in the validation server: INVALID_ARGUMENT: Failed to warm up model penguins version \d+: "
        r"Expects arg\[0\] to be string but float is provided"),
    "wrong_answers": (lambda reg, t: reg.export(t["v2"], answers=expected(2) + 1e-3), DeployConfig(),
                      r"REST answers differ from the evaluation's predictions by 0.001 \(> 1e-05 \+ 4 float32 ulps\)"),
    "over_latency_budget": (lambda reg, t: reg.export(t["v2"], answers=2), DeployConfig(latency_budget_ms=1e-6),
                            r"p99 latency of (REST|GRPC) predicts is .* ms, over the budget of 1e-06 ms"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_publishes_nothing_and_the_champion_keeps_serving(fault, reg, pipeline_home, templates, champion_serving):
    server, v1 = champion_serving
    make, cfg, message = FAULTS[fault]
    before, config_before = served_state(pipeline_home), deploy.models_config_path().read_text()
    version, staging, parent = make(reg, templates)

    with pytest.raises(deploy.DeployError, match=message):
        deploy.run_deploy_stage(cfg, parent, MODEL, version, staging, blessed=True, reason="test")

    assert served_state(pipeline_home) == before and deploy.models_config_path().read_text() == config_before
    assert not list(reg.model_dir.glob(".deploy-*")), "the temporary copy is removed"
    assert reg.aliases() == {"champion": v1}
    run = reg.deploy_run(parent)
    assert run.info.status == "FAILED" and re.search(message, run.data.tags["pipeline.error"])
    assert run.data.tags["deployed"] == "false"
    response = server.post(f"/v1/models/{MODEL}/labels/stable:predict",
                           {"inputs": {"bill_length_mm": [39.1], "island": ["Biscoe"]}})
    assert response.status_code == 200
    assert answered_version(np.asarray(response.json()["outputs"]["probabilities"]), ["Biscoe"], [39.1]) == v1


def test_unwritable_serving_directory_through_the_stage(reg, pipeline_home, templates, monkeypatch):
    v1 = reg.place(templates["v1"], champion=-1)
    before = served_state(pipeline_home)
    version, staging, parent = reg.export(templates["v2"], answers=2)
    real_mkdtemp = tempfile.mkdtemp

    def refuse(*args, **kwargs):  # the serving directory refuses, as a read-only mount does (even for root)
        if str(kwargs.get("dir", "")).startswith(str(reg.model_dir)):
            raise PermissionError(13, "Permission denied", str(kwargs["dir"]))
        return real_mkdtemp(*args, **kwargs)

    with monkeypatch.context() as patch, \
            pytest.raises(deploy.DeployError, match=f"serving directory {reg.model_dir} is not writable"):
        patch.setattr(tempfile, "mkdtemp", refuse)
        deploy.run_deploy_stage(DeployConfig(), parent, MODEL, version, staging, blessed=True, reason="test")
    assert served_state(pipeline_home) == before and reg.aliases() == {"champion": v1}
    assert "is not writable" in reg.deploy_run(parent).data.tags["pipeline.error"]


# ------------------------------------------------------------------------------------------ integrity
def test_a_tampered_version_dir_is_never_trusted(reg, pipeline_home, templates):
    """A retried deploy reuses a published directory only when its digest is the one validated: a changed one is
    refused while it is served, and replaced by a freshly validated copy once it is not."""
    v1, _, first = _stage(reg, templates["v1"])
    published = reg.model_dir / str(v1)
    recorded = reg.client.get_model_version(MODEL, str(v1)).tags[deploy.DIGEST_TAG]
    assert recorded == deploy.content_digest(published)
    staging = reg.model_dir / f".staging-manual__test_{v1}"
    lineage_file = published / "assets.extra" / "pipeline_metadata.json"
    lineage_file.write_text(lineage_file.read_text().replace('"accuracy": 0.97', '"accuracy": 0.99'))
    tampered = served_state(pipeline_home)

    with pytest.raises(deploy.DeployError, match=rf"{re.escape(str(published))} is not trusted: its content digest is sha256 "
                                                 rf"\w+, not the {recorded} of the copy that was validated.*"
                                                 r"It is served \(champion"):
        deploy.deploy_version(deploy.candidate_from_export(MODEL, v1, staging), DeployConfig(), blessed=True)
    assert served_state(pipeline_home) == tampered and reg.aliases() == {"champion": v1}

    v2 = reg.place(templates["v2"], champion=-1)  # v1 is no longer served
    again = deploy.deploy_version(deploy.candidate_from_export(MODEL, v1, staging), DeployConfig(), blessed=True)
    assert "already_published" not in again and "not the" in again["revalidated"]
    assert again["rest_max_abs_diff"] <= 1e-5, "validated again"
    assert deploy.content_digest(published) == again["digest"] == recorded, "the validated copy, as first published"
    assert "0.97" in lineage_file.read_text() and reg.aliases() == {"champion": v1, "previous": v2}
    assert not list(reg.model_dir.glob(".trash-*")) and not list(reg.model_dir.glob(".deploy-*"))


def test_pipeline_deploy_leaves_the_training_run_alone(reg, pipeline_home, templates, capsys, monkeypatch):
    """`pipeline deploy --version N` records itself in a run of its own: the training run's status and tags, and its
    nested runs, are those the DAG run left."""
    from pipeline.commands.deploy import deploy_main

    version, staging, parent = reg.export(templates["v1"])
    monkeypatch.setattr(registry, "saved_model_dir", lambda name, v: staging)  # the test's versions have no artifacts
    before = reg.client.get_run(parent)
    children = f"tags.`mlflow.parentRunId` = '{parent}'"
    assert deploy_main(["--version", str(version), "--json"]) == 0, capsys.readouterr()
    after = reg.client.get_run(parent)
    assert (after.info.status, after.info.end_time, after.data.tags) == (
        before.info.status, before.info.end_time, before.data.tags)
    assert reg.client.search_runs([before.info.experiment_id], filter_string=children) == []
    run_id = reg.client.get_model_version(MODEL, str(version)).tags["deploy.run_id"]
    run = reg.client.get_run(run_id)
    assert run.data.tags["deploy.source_run_id"] == parent and run.data.tags["deployed"] == "true"
    assert run.info.status == "FINISHED" and reg.aliases() == {"champion": version}


def test_the_served_candidate_is_checked_on_a_sample_of_the_test_split(reg, templates, monkeypatch):
    import functools

    from pipeline import datasets

    # record batches of 2 rows: the sample is drawn across batches, never from one whole read
    monkeypatch.setattr(datasets, "iter_frames", functools.partial(datasets.iter_frames, batch_rows=2))
    version, staging, _ = reg.export(templates["v1"])
    whole = deploy.candidate_from_export(MODEL, version, staging, max_rows=0)
    sample = deploy.candidate_from_export(MODEL, version, staging, max_rows=3)
    assert len(whole.expected) == len(TEST_ROWS) and len(sample.expected) == 3
    lengths = whole.inputs["bill_length_mm"]
    rows = [int(np.flatnonzero((lengths == v) | (np.isnan(lengths) & np.isnan(v)))[0])
            for v in sample.inputs["bill_length_mm"]]
    assert rows == sorted(rows) and len(set(rows)) == 3  # distinct rows, in the split's order
    np.testing.assert_array_equal(sample.expected, whole.expected[rows])  # each with its own prediction
    for column, values in sample.inputs.items():
        np.testing.assert_array_equal(values, whole.inputs[column][rows])
    # the sandbox answers the sampled rows as the evaluation did
    report = deploy.deploy_version(sample, DeployConfig(check_rows=3), blessed=True)
    assert report["rows"] == 3 and report["rest_max_abs_diff"] <= 1e-5 and report["published"]
