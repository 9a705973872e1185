"""One loaded version of a model: its SignatureDefs (for metadata) and its callable signatures.

The TF concrete functions of ``tf.saved_model.load`` are called directly (no Keras), with numpy in and out.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline import contracts
from pipeline.serving.codec import DTYPE_NAMES, NUMPY_DTYPES
from pipeline.serving.errors import Code, ServingError, from_exception, invalid
from pipeline.serving.tf_call import SignatureCall

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = contracts.SIGNATURE
WARMUP_FILE = Path(contracts.WARMUP_FILE)
MAX_WARMUP_RECORDS = 1000


@dataclass(frozen=True)
class Signature:
    """A callable signature: its input/output aliases with dtypes, and the function to call."""

    name: str
    method_name: str
    inputs: dict[str, int]  # alias -> DataType
    feeds: dict[str, str]  # alias -> tensor name (for messages)
    outputs: dict[str, int]
    fn: Any  # the loaded ConcreteFunction
    call: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # numpy in, numpy out (tf_call.SignatureCall)


def version_ready(path: Path) -> bool:
    """Whether a version directory looks completely written: the graph and the variables index exist."""
    if not ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()):
        return False
    variables = path / "variables"
    return not variables.exists() or (variables / "variables.index").is_file()


def fingerprint(path: Path) -> tuple:
    """Names, sizes and modification times of every file of a version: equal twice = stable."""
    entries = []
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                stat = os.stat(os.path.join(root, name))
            except OSError:
                continue
            entries.append((os.path.relpath(os.path.join(root, name), path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


def read_meta_graph(path: Path):
    """The ``serve``-tagged MetaGraphDef of a SavedModel (for its SignatureDefs)."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    if (path / "saved_model.pb").is_file():
        saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    else:
        text_format.Parse((path / "saved_model.pbtxt").read_text(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ServingError(Code.NOT_FOUND, f"Could not find meta graph def matching supplied tags: {{ serve }}. "
                                       f"To inspect available tag-sets in the SavedModel, please use the "
                                       f"SavedModel CLI: `saved_model_cli`")


class Servable:
    """A loaded SavedModel version. Immutable once constructed; safe to call from many threads."""

    def __init__(self, name: str, version: int, path: Path):
        import tensorflow as tf

        self.name = name
        self.version = version
        self.path = path
        meta_graph = read_meta_graph(path)
        self.signature_defs = meta_graph.signature_def
        self._loaded = tf.saved_model.load(str(path), tags=["serve"])
        self.signatures: dict[str, Signature] = {}
        for sig_name, sig_def in self.signature_defs.items():
            fn = self._loaded.signatures.get(sig_name) if sig_name in self._loaded.signatures else None
            if fn is None:
                continue
            inputs = {alias: info.dtype for alias, info in sig_def.inputs.items()}
            self.signatures[sig_name] = Signature(
                name=sig_name,
                method_name=sig_def.method_name,
                inputs=inputs,
                feeds={alias: info.name for alias, info in sig_def.inputs.items()},
                outputs={alias: info.dtype for alias, info in sig_def.outputs.items()},
                fn=fn,
                call=SignatureCall(fn, {alias: tf.dtypes.as_dtype(dtype) for alias, dtype in inputs.items()},
                                   f"{name}/{version}/{sig_name}"),
            )
        self._batchers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.closed = False

    # ------------------------------------------------------------------------------------------- calls
    def run(self, signature: Signature, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call a signature on numpy inputs (already named and typed as it expects)."""
        try:
            return signature.call(inputs)
        except Exception as exc:  # TF op errors keep their code; anything else is a bad input
            raise from_exception(exc) from None

    def batcher(self, signature: Signature, factory: Callable[[], Any]):
        """The dynamic batcher of one signature, created on first use; None once unloaded."""
        batcher = self._batchers.get(signature.name)
        if batcher is not None or self.closed:
            return batcher
        with self._lock:
            if self.closed:
                return None
            if signature.name not in self._batchers:
                self._batchers[signature.name] = factory()
            return self._batchers[signature.name]

    def close(self) -> None:
        """Stop taking batched work; queued requests still finish (requests holding us run unbatched)."""
        with self._lock:
            self.closed = True
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.close()

    # ------------------------------------------------------------------------------------ validation
    def signature_for_predict(self, name: str, rest: bool) -> Signature:
        """Look a signature up by name (empty = serving_default); REST and gRPC word the miss differently."""
        key = name or DEFAULT_SIGNATURE
        signature = self.signatures.get(key)
        if signature is None:
            if key in self.signature_defs:
                raise ServingError(Code.UNIMPLEMENTED, f"Signature {key} cannot be called by this server")
            if rest:
                raise invalid(f'Serving signature name: "{key}" not found in signature def')
            raise ServingError(Code.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
        return signature

    def signature_for(self, name: str, method: str) -> Signature:
        """A classify/regress signature (``GetClassificationSignature`` / ``GetRegressionSignature``)."""
        key = name or DEFAULT_SIGNATURE
        signature = self.signatures.get(key)
        if signature is None:
            raise invalid(f"No signature was found with the name: {key}")
        kind = "classification" if method == CLASSIFY_METHOD else "regression"
        if signature.method_name != method:
            raise invalid(f"Expected {kind} signature method_name to be {method}. "
                          f"Was: {signature.method_name}")
        return signature

    @staticmethod
    def check_inputs(signature: Signature, inputs: dict[str, np.ndarray]) -> None:
        """``PreProcessPrediction`` + ``GetInputValues``: names and dtypes of request tensors."""
        sent, wanted = set(inputs), set(signature.inputs)
        if len(sent) != len(wanted):
            raise invalid(
                f"input size does not match signature: {len(sent)}!={len(wanted)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
                f"Missing but required: {{{','.join(sorted(wanted - sent))}}}.")
        for alias in sorted(wanted):
            if alias not in inputs:
                raise invalid(
                    f"Signature input alias: {alias}(feed name: {signature.feeds[alias]}) not found in request "
                    f"and no default value provided. Inputs expected to be in the request "
                    f"{{{','.join(sorted(sent))}}}, or default input alias set: ")
        for index, alias in enumerate(sorted(wanted)):
            expected = signature.inputs[alias]
            np_dtype = NUMPY_DTYPES.get(expected)
            array = inputs[alias]
            ok = (array.dtype == object or array.dtype.kind in "SU") if np_dtype is object else (
                np_dtype is not None and array.dtype == np.dtype(np_dtype))
            if not ok:
                raise invalid(f"Expects arg[{index}] to be {DTYPE_NAMES.get(expected, expected)} but "
                              f"{_dtype_name(array)} is provided")


def _dtype_name(array: np.ndarray) -> str:
    if array.dtype == object or array.dtype.kind in "SU":
        return "string"
    for enum, np_dtype in NUMPY_DTYPES.items():
        if np_dtype is not object and array.dtype == np.dtype(np_dtype):
            return DTYPE_NAMES[enum]
    return str(array.dtype)
