"""The API logic both transports share: version resolution, predict/classify/regress execution (batched or
not), metadata and status messages, request logging and metrics. REST and gRPC only translate wire formats.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np

from pipeline.serving.batching import Batcher, batch_rows
from pipeline.serving.errors import Code, ServingError, invalid
from pipeline.serving.manager import ModelManager
from pipeline.serving.metrics import Metrics
from pipeline.serving.options import ServerOptions, model_configs_from_proto
from pipeline.serving.request_log import RequestLog
from pipeline.serving.servable import (CLASSIFY_METHOD, DEFAULT_SIGNATURE, MAX_WARMUP_RECORDS, REGRESS_METHOD,
                                       WARMUP_FILE, Servable, Signature)

log = logging.getLogger("pipeline.serving")


class Service:
    """Everything a request needs, independent of its transport."""

    def __init__(self, options: ServerOptions, metrics: Metrics, request_log: RequestLog | None):
        self.options = options
        self.metrics = metrics
        self.request_log = request_log
        self.broadcast = None  # workers.ConfigBroadcast in a worker of --workers N
        self.manager = ModelManager(
            options.models, self.load, serve_base=options.serve_base,
            allow_unavailable_labels=options.allow_labels_for_unavailable,
            on_load=lambda name, ok: metrics.loads.inc(name, "OK" if ok else "ERROR"))

    # ------------------------------------------------------------------------------------- loading
    def load(self, name: str, version: int, path) -> Servable:
        """Load a version and replay its warmup requests before it may take traffic."""
        servable = Servable(name, version, path)
        if self.options.enable_warmup and (path / WARMUP_FILE).is_file():
            try:
                self.warmup(servable, path / WARMUP_FILE)
            except ServingError as exc:
                servable.close()
                raise ServingError(exc.code, f"Failed to warm up model {name} version {version}: {exc.message}") \
                    from None
        return servable

    def warmup(self, servable: Servable, path) -> int:
        """Run the ``PredictionLog`` records of ``assets.extra/tf_serving_warmup_requests`` on a servable."""
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        count = 0
        for record in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            kind = log.WhichOneof("log_type")
            if kind == "predict_log":
                request = log.predict_log.request
                signature = servable.signature_for_predict(request.model_spec.signature_name, rest=False)
                inputs = {alias: tensor_from_proto(t, alias) for alias, t in request.inputs.items()}
                Servable.check_inputs(signature, inputs)
                servable.run(signature, inputs)
            elif kind in ("classify_log", "regress_log"):
                request = getattr(log, kind).request
                method = CLASSIFY_METHOD if kind == "classify_log" else REGRESS_METHOD
                signature = servable.signature_for(request.model_spec.signature_name, method)
                servable.run(signature, examples_inputs(signature, serialized_examples(request.input)))
            else:
                raise invalid(f"Unsupported log_type for warmup: {kind}")
            count += 1
        return count

    # ---------------------------------------------------------------------------------------- calls
    def submit(self, servable: Servable, signature: Signature, inputs: dict[str, np.ndarray]) -> Future | None:
        """Queue a call on the signature's batcher; None when not batching (the caller runs it)."""
        batching = self.options.batching
        if batching is None:
            return None
        rows = batch_rows(inputs)
        if not rows:
            return None
        batcher = servable.batcher(signature, functools.partial(
            Batcher, functools.partial(servable.run, signature), batching,
            f"{servable.name}-{servable.version}-{signature.name}",
            functools.partial(self._observe_batch, servable.name, str(servable.version), signature.name)))
        if batcher is None:
            return None
        return batcher.submit(inputs, rows)

    def _observe_batch(self, model: str, version: str, signature: str, rows: int) -> None:
        self.metrics.batch_size.observe(rows, model, version, signature)

    def call(self, servable: Servable, signature: Signature, inputs: dict[str, np.ndarray],
             timeout: float | None) -> dict[str, np.ndarray]:
        """Run a signature for a request handled on a thread of its own (gRPC): on the batcher when batching, else
        right here. ``timeout`` (seconds) bounds the wait for the batcher; an unbatched call cannot be cut."""
        future = self.submit(servable, signature, inputs)
        if future is None:
            return servable.run(signature, inputs)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise ServingError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded") from None

    async def call_async(self, servable: Servable, signature: Signature, inputs: dict[str, np.ndarray],
                         timeout: float | None, executor: Executor) -> dict[str, np.ndarray]:
        """Run a signature for a request handled on the event loop: on the batcher when batching, else on
        ``executor``; never on the loop itself, so one slow call cannot stall other connections, and ``timeout``
        (seconds) is applied (the call itself runs on, its answer dropped)."""
        future = self.submit(servable, signature, inputs)
        if future is None:
            future = executor.submit(servable.run, signature, inputs)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            raise ServingError(Code.DEADLINE_EXCEEDED, "Deadline Exceeded") from None

    def reload_config(self, configs, proto=None, timeout: float | None = None) -> None:
        """``HandleReloadConfigRequest``: serve ``configs`` (the parsed ``ModelServerConfig`` ``proto``), in every
        worker of ``--workers N`` (waiting up to ``timeout`` seconds for the others).

        Raises:
            ServingError: when the config cannot be applied here (the old one keeps serving).
        """
        self.manager.apply_config(configs)
        if self.broadcast is not None and proto is not None:
            late = self.broadcast.publish(proto.SerializeToString(deterministic=True), timeout)
            if late:
                log.warning("reloaded config not yet applied by workers %s", ", ".join(map(str, late)))

    def follow_broadcast(self) -> None:
        """Apply a config another worker was sent (``HandleReloadConfigRequest``), once; acknowledge it."""
        from tensorflow_serving.config import model_server_config_pb2

        data = self.broadcast.pending()
        if data is None:
            return
        digest = self.broadcast.digest(data)
        error = ""
        try:
            self.manager.apply_config(model_configs_from_proto(
                model_server_config_pb2.ModelServerConfig.FromString(data)))
            log.info("applied the config reloaded through another worker")
        except (ServingError, ValueError) as exc:
            error = getattr(exc, "message", str(exc))
            log.error("config reloaded through another worker: %s", error)
        self.broadcast.applied = digest
        self.broadcast.acknowledge(digest, error)

    # ----------------------------------------------------------------------------- observability
    def record(self, model: str, version: str, entrypoint: str, api: str, status: str, started: float) -> None:
        """Count a request. The labels come from the client's URL or request, so a model the server does not
        serve is counted as ``model_name=""`` and a version it does not have as ``version=""``: clients asking
        for made-up names must not grow the metrics without bound."""
        if not self.manager.knows(model, version):
            model, version = (model, "") if self.manager.knows(model) else ("", "")
        self.metrics.requests.inc(model, version, entrypoint, api, status)
        self.metrics.latency.observe((time.perf_counter() - started) * 1e6, model, api, entrypoint)

    def log_request(self, request_id: str, servable: Servable, signature_name: str, api: str,
                    inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        self.request_log.log(request_id=request_id, model_name=servable.name, model_version=servable.version,
                             signature_name=signature_name or DEFAULT_SIGNATURE, api=api, features=inputs,
                             outputs=outputs)

    # ------------------------------------------------------------------------------- messages
    def status_response(self, name: str, version: int | None):
        from tensorflow_serving.apis import get_model_status_pb2

        response = get_model_status_pb2.GetModelStatusResponse()
        for number, status in self.manager.status(name, version):
            item = response.model_version_status.add()
            item.version = number
            item.state = get_model_status_pb2.ModelVersionStatus.State.Value(status.state)
            item.status.error_code = Code[status.error_code].value
            item.status.error_message = status.error_message
        return response


# DataType -> (numpy dtype, TensorProto repeated field) of the typed fields read without TensorFlow
_FAST_FIELDS = {1: (np.float32, "float_val"), 2: (np.float64, "double_val"), 3: (np.int32, "int_val"),
                9: (np.int64, "int64_val"), 10: (np.bool_, "bool_val"), 7: (object, "string_val")}


def examples_inputs(signature: Signature, examples: np.ndarray) -> dict[str, np.ndarray]:
    """Classify/regress: serialized tf.Examples as the signature's single string input."""
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    return {next(iter(signature.inputs)): examples}


def tensor_from_proto(proto, alias: str) -> np.ndarray:
    """A request TensorProto as numpy (``Tensor::FromProto``). The common case (a typed ``*_val`` field holding
    every element, as clients write small tensors) is read directly, at a tenth of ``tf.make_ndarray``'s cost
    (28 us a tensor); the rest goes through TensorFlow."""
    fast = _FAST_FIELDS.get(proto.dtype)
    if fast is not None and not proto.tensor_content:
        shape_proto = proto.tensor_shape
        if not shape_proto.unknown_rank:
            values = getattr(proto, fast[1])
            count = len(values)
            dims = shape_proto.dim
            if len(dims) == 1:  # a batch of scalars: the usual feature tensor
                shape: list[int] | None = [dims[0].size] if dims[0].size == count else None
            else:
                shape = [d.size for d in dims]
                total = 1
                for size in shape:
                    total *= size
                if total != count or min(shape, default=0) < 0:
                    shape = None
            if shape is not None and count > 0:
                if fast[0] is object:
                    array = np.array(list(values), dtype=object)
                else:
                    array = np.fromiter(values, dtype=fast[0], count=count)
                return array if len(shape) == 1 else array.reshape(shape)
    import tensorflow as tf

    try:
        array = tf.make_ndarray(proto)
    except Exception:
        raise invalid(f"tensor parsing error: {alias}") from None
    if array.dtype.kind == "S":  # fixed-width bytes from make_ndarray: keep them as Python bytes
        array = array.astype(object)
    return array


# numpy dtype -> (DataType, TensorProto repeated field)
_TYPED_FIELDS = {np.dtype(np.float32): (1, "float_val"), np.dtype(np.float64): (2, "double_val"),
                 np.dtype(np.int32): (3, "int_val"), np.dtype(np.uint8): (4, "int_val"),
                 np.dtype(np.int16): (5, "int_val"), np.dtype(np.int8): (6, "int_val"),
                 np.dtype(np.int64): (9, "int64_val"), np.dtype(np.bool_): (10, "bool_val"),
                 np.dtype(np.uint16): (17, "int_val"), np.dtype(np.uint32): (22, "uint32_val"),
                 np.dtype(np.uint64): (23, "uint64_val")}


def tensor_to_proto(array: np.ndarray, proto=None):
    """An output as a TensorProto with typed ``*_val`` fields (not ``tensor_content``), like TF Serving; written
    into ``proto`` (e.g. ``response.outputs[alias]``, saving a copy) when given."""
    if proto is None:
        from tensorflow.core.framework import tensor_pb2

        proto = tensor_pb2.TensorProto()
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add().size = size
    flat = array.reshape(-1)
    if array.dtype == object or array.dtype.kind in "SU":
        proto.dtype = 7  # DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat.tolist())
        return proto
    if array.dtype == np.float16:
        proto.dtype = 19  # DT_HALF
        proto.half_val.extend(flat.view(np.uint16).tolist())
        return proto
    typed = _TYPED_FIELDS.get(array.dtype)
    if typed is None:
        raise ServingError(Code.UNIMPLEMENTED, f"Unsupported output dtype: {array.dtype}")
    proto.dtype, field = typed
    getattr(proto, field).extend(flat.tolist())
    return proto


def examples_to_protos(context: dict | None, examples: list[dict]) -> np.ndarray:
    """REST classify/regress features as serialized tf.Examples (context merged into each)."""
    from tensorflow.core.example import example_pb2

    def build(features: dict) -> Any:
        example = example_pb2.Example()
        for name, feature in features.items():
            target = example.features.feature[name]
            if feature["kind"] == "int64":
                target.int64_list.value.extend(feature["values"])
            elif feature["kind"] == "float":
                target.float_list.value.extend(feature["values"])
            elif feature["kind"] == "bytes":
                target.bytes_list.value.extend(feature["values"])
        return example

    context_proto = build(context) if context is not None else None
    serialized = []
    for features in examples:
        example = build(features)
        if context_proto is not None:
            merged = example_pb2.Example()
            merged.MergeFrom(context_proto)
            merged.MergeFrom(example)
            example = merged
        serialized.append(example.SerializeToString())
    array = np.empty(len(serialized), dtype=object)
    array[:] = serialized
    return array


def serialized_examples(input_proto) -> np.ndarray:
    """A gRPC ``Input`` (example list, with or without context) as serialized tf.Examples."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        serialized = [e.SerializeToString() for e in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = input_proto.example_list_with_context
        context = with_context.context.SerializeToString()
        serialized = [context + e.SerializeToString() for e in with_context.examples]
    else:
        serialized = []
    if not serialized:
        raise invalid("Input is empty.")
    array = np.empty(len(serialized), dtype=object)
    array[:] = serialized
    return array


def classification_rows(outputs: dict[str, np.ndarray], count: int) -> list[list[tuple[str, float]]]:
    """``classes``/``scores`` outputs as per-example (label, score) lists (``PostProcessClassificationResult``)."""
    classes, scores = outputs.get("classes"), outputs.get("scores")
    if classes is None and scores is None:
        raise invalid("Expected classification signature outputs to contain classes or scores")
    for name, value in (("classes", classes), ("scores", scores)):
        if value is not None and (value.ndim != 2 or value.shape[0] != count):
            raise invalid(f"Expected {name} Tensor of shape [batch_size num_classes] but got "
                          f"{list(value.shape)}")
    rows = []
    for i in range(count):
        n = (classes if classes is not None else scores).shape[1]
        rows.append([(_text(classes[i][j]) if classes is not None else "",
                      float(scores[i][j]) if scores is not None else 0.0) for j in range(n)])
    return rows


def regression_values(outputs: dict[str, np.ndarray], count: int) -> list[float]:
    """The ``outputs`` output as one value per example (``PostProcessRegressionResult``)."""
    values = outputs.get("outputs")
    if values is None:
        raise invalid("No regression outputs found in SignatureDef")
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or values.shape[0] != count:
        raise invalid(f"Expected output Tensor shape to be [batch_size] or [batch_size, 1] but got "
                      f"{list(values.shape)}")
    return [float(v) for v in values.tolist()]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def signature_def_json(servable: Servable) -> dict:
    """All SignatureDefs of the MetaGraph as TF Serving's metadata JSON prints them."""
    from google.protobuf import json_format

    return {name: json_format.MessageToDict(sig, preserving_proto_field_name=True,
                                            always_print_fields_with_no_presence=True)
            for name, sig in sorted(servable.signature_defs.items())}
