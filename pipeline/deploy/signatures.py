"""Serving signatures: what a SavedModel's ``serving_default`` takes and returns, and how a candidate's would break
the clients of the champion."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from pipeline.contracts import SIGNATURE
from pipeline.deploy.errors import DeployError


def serving_signature(version_dir: str | Path) -> dict[str, dict[str, str]]:
    """The ``serving_default`` inputs and outputs of a SavedModel as ``{"inputs": {alias: dtype}, ...}``.

    Raises:
        DeployError: the SavedModel cannot be read or has no ``serving_default`` signature.
    """
    from tensorflow.core.framework import types_pb2

    from pipeline.serving.servable import read_meta_graph

    try:
        signatures = read_meta_graph(Path(version_dir)).signature_def
    except Exception as exc:  # a corrupt saved_model.pb raises protobuf's DecodeError, a missing one OSError
        raise DeployError(f"the SavedModel in {version_dir} cannot be read: {type(exc).__name__}: {exc}") from exc
    if SIGNATURE not in signatures:
        raise DeployError(f"the SavedModel in {version_dir} has no {SIGNATURE!r} signature")
    signature = signatures[SIGNATURE]
    return {part: {alias: types_pb2.DataType.Name(info.dtype) for alias, info in getattr(signature, part).items()}
            for part in ("inputs", "outputs")}


def signature_breaks(current: Mapping[str, Mapping[str, str]], candidate: Mapping[str, Mapping[str, str]]) -> list[str]:
    """How a candidate's signature would break requests written for ``current``.

    TF Serving needs every signature input in a request and nothing else, so an input that is removed, added or
    retyped breaks every client; an output removed or retyped breaks those that read it; a new output is fine.
    """
    problems = []
    old_in, new_in = current["inputs"], candidate["inputs"]
    for name in sorted(set(old_in) - set(new_in)):
        problems.append(f"input {name!r} ({old_in[name]}) was removed")
    for name in sorted(set(new_in) - set(old_in)):
        problems.append(f"input {name!r} ({new_in[name]}) was added: current requests do not send it")
    for name in sorted(set(old_in) & set(new_in)):
        if old_in[name] != new_in[name]:
            problems.append(f"input {name!r} changed type from {old_in[name]} to {new_in[name]}")
    old_out, new_out = current["outputs"], candidate["outputs"]
    for name in sorted(set(old_out) - set(new_out)):
        problems.append(f"output {name!r} ({old_out[name]}) was removed")
    for name in sorted(set(old_out) & set(new_out)):
        if old_out[name] != new_out[name]:
            problems.append(f"output {name!r} changed type from {old_out[name]} to {new_out[name]}")
    return problems

