"""Tests of pipeline.deploy.signatures: which signature changes break the clients of the champion."""
from __future__ import annotations

import pytest

from pipeline.deploy import DeployError, signatures


def test_signature_breaks_name_removed_retyped_and_added_inputs(templates):
    base = signatures.serving_signature(templates["v1"])
    assert base == {"inputs": {"bill_length_mm": "DT_FLOAT", "island": "DT_STRING"},
                    "outputs": {"probabilities": "DT_FLOAT", "classes": "DT_STRING"}}
    assert signatures.signature_breaks(base, signatures.serving_signature(templates["v2"])) == []
    assert signatures.signature_breaks(base, signatures.serving_signature(templates["no_island"])) == [
        "input 'island' (DT_STRING) was removed"]
    assert signatures.signature_breaks(base, signatures.serving_signature(templates["bill_as_text"])) == [
        "input 'bill_length_mm' changed type from DT_FLOAT to DT_STRING"]
    assert signatures.signature_breaks(signatures.serving_signature(templates["no_island"]), base) == [
        "input 'island' (DT_STRING) was added: current requests do not send it"]
    fewer_outputs = {**base, "outputs": {"classes": "DT_STRING", "probabilities": "DT_DOUBLE"}}
    assert signatures.signature_breaks(base, fewer_outputs) == [
        "output 'probabilities' changed type from DT_FLOAT to DT_DOUBLE"]
    assert signatures.signature_breaks(fewer_outputs | {"outputs": {"extra": "DT_FLOAT", **fewer_outputs["outputs"]}},
                                   fewer_outputs) == ["output 'extra' (DT_FLOAT) was removed"]


def test_signature_of_a_corrupt_savedmodel_is_a_clear_error(tmp_path, templates):
    from serving_models import write_broken

    with pytest.raises(DeployError, match="cannot be read: DecodeError"):
        signatures.serving_signature(write_broken(tmp_path / "broken"))
    with pytest.raises(DeployError, match="cannot be read"):
        signatures.serving_signature(tmp_path / "missing")
