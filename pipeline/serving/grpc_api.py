"""The gRPC front end: ``PredictionService`` and ``ModelService`` from ``tensorflow-serving-api``'s protos, on
grpc's threaded server (``grpc.server``).

Each call runs start to end on one of ``--grpc_max_threads`` handler threads: the request is read and checked,
the model called (on the batcher with ``--enable_batching``, else right there) and the answer written, with no
hop to an event loop and back; grpc's C core does the network I/O without the GIL. Against ``grpc.aio`` in the
REST server's event loop with the model call on a pool, this answered twice the calls per second on 2 cores
(docs/serving.md, "Design and performance"). Status codes are the TF codes one to one, messages truncated
like the real server's (1024 characters + ``...TRUNCATED``).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc, regression_pb2)

from pipeline.serving.errors import ServingError, from_exception, invalid
from pipeline.serving.options import model_configs_from_proto
from pipeline.serving.request_log import new_request_id
from pipeline.serving.servable import CLASSIFY_METHOD, DEFAULT_SIGNATURE, REGRESS_METHOD, Servable
from pipeline.serving.service import (Service, classification_rows, examples_inputs, regression_values,
                                      serialized_examples, tensor_from_proto, tensor_to_proto)

_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}
_MAX_MESSAGE = 1024


def _abort(context: grpc.ServicerContext, error: ServingError):
    message = error.message
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "...TRUNCATED"
    context.abort(_GRPC_CODES[int(error.code)], message)


def _spec(model_spec) -> tuple[str, int | None, str | None]:
    choice = model_spec.WhichOneof("version_choice")
    version = model_spec.version.value if choice == "version" else None
    label = model_spec.version_label if choice == "version_label" else None
    return model_spec.name, version, label


def _fill_spec(target, servable: Servable, signature_name: str | None) -> None:
    target.name = servable.name
    target.version.value = servable.version
    if signature_name is not None:
        target.signature_name = signature_name or DEFAULT_SIGNATURE


def _remaining(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e8 else max(remaining, 0.0)


def _request_id(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return value if isinstance(value, str) else value.decode("latin-1")
    return new_request_id()


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, service: Service):
        self.service = service

    def _guard(self, api: str, context, model_spec, work):
        """Run a handler: errors become gRPC statuses, every request is counted."""
        started = time.perf_counter()
        try:
            response, model, version = work()
            self.service.record(model, version, "GRPC", api, "OK", started)
            return response
        except ServingError as exc:
            version = str(model_spec.version.value) if model_spec.HasField("version") else ""
            self.service.record(model_spec.name, version, "GRPC", api, exc.code.name, started)
            _abort(context, exc)
        except Exception as exc:
            if isinstance(exc, grpc.RpcError) or type(exc).__name__ in ("AbortError", "_AbortionException"):
                raise
            _abort(context, from_exception(exc))

    def _predict_inputs(self, request):
        """``(servable, signature, inputs, wanted outputs)`` of a PredictRequest, checked."""
        service = self.service
        name, version, label = _spec(request.model_spec)
        servable = service.manager.resolve(name, version, label)
        signature = servable.signature_for_predict(request.model_spec.signature_name, rest=False)
        inputs = {alias: tensor_from_proto(proto, alias) for alias, proto in request.inputs.items()}
        Servable.check_inputs(signature, inputs)
        wanted = list(request.output_filter)
        seen: set[str] = set()
        for alias in wanted:
            if alias in seen:
                raise invalid(f"duplicate output tensor alias: {alias}")
            seen.add(alias)
            if alias not in signature.outputs:
                raise invalid(f"output tensor alias not found in signature: {alias} Outputs expected to be "
                              f"in the set {{{','.join(sorted(signature.outputs))}}}.")
        return servable, signature, inputs, wanted

    def Predict(self, request, context):
        def work():
            service = self.service
            servable, signature, inputs, wanted = self._predict_inputs(request)
            sampled = service.request_log is not None and service.request_log.sampled()
            outputs = service.call(servable, signature, inputs, _remaining(context))
            if wanted:
                outputs = {alias: outputs[alias] for alias in wanted}
            response = predict_pb2.PredictResponse()
            for alias, value in outputs.items():
                tensor_to_proto(value, response.outputs[alias])
            _fill_spec(response.model_spec, servable, request.model_spec.signature_name)
            if sampled:
                service.log_request(_request_id(context), servable, request.model_spec.signature_name, "grpc",
                                    inputs, outputs)
            return response, servable.name, str(servable.version)
        return self._guard("predict", context, request.model_spec, work)

    def GetModelMetadata(self, request, context):
        def work():
            if not request.metadata_field:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != "signature_def":
                    raise invalid(f"Metadata field {field} is not supported")
            name, version, label = _spec(request.model_spec)
            servable = self.service.manager.resolve(name, version, label)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for key, value in servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(value)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.metadata["signature_def"].Pack(signature_map)
            return response, servable.name, str(servable.version)
        return self._guard("metadata", context, request.model_spec, work)

    def _examples(self, request, method: str, context):
        name, version, label = _spec(request.model_spec)
        servable = self.service.manager.resolve(name, version, label)
        signature = servable.signature_for(request.model_spec.signature_name, method)
        examples = serialized_examples(request.input)
        outputs = self.service.call(servable, signature, examples_inputs(signature, examples), _remaining(context))
        return servable, outputs, len(examples)

    def Classify(self, request, context):
        def work():
            servable, outputs, count = self._examples(request, CLASSIFY_METHOD, context)
            response = classification_pb2.ClassificationResponse()
            for row in classification_rows(outputs, count):
                item = response.result.classifications.add()
                for label, score in row:
                    item.classes.add(label=label, score=score)
            _fill_spec(response.model_spec, servable, request.model_spec.signature_name)
            return response, servable.name, str(servable.version)
        return self._guard("classify", context, request.model_spec, work)

    def Regress(self, request, context):
        def work():
            servable, outputs, count = self._examples(request, REGRESS_METHOD, context)
            response = regression_pb2.RegressionResponse()
            for value in regression_values(outputs, count):
                response.result.regressions.add(value=value)
            _fill_spec(response.model_spec, servable, request.model_spec.signature_name)
            return response, servable.name, str(servable.version)
        return self._guard("regress", context, request.model_spec, work)

    def MultiInference(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not supported by this server")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, service: Service):
        self.service = service

    def GetModelStatus(self, request, context):
        try:
            name, version, _label = _spec(request.model_spec)  # the label is ignored, as in GetModelStatusImpl
            if not name:
                raise invalid("Missing model name in request.")
            return self.service.status_response(name, version)
        except ServingError as exc:
            _abort(context, exc)

    def HandleReloadConfigRequest(self, request, context):
        from tensorflow_serving.apis import model_management_pb2

        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid("ServerCore is configured to use a model_config_list; the request has none")
            try:
                configs = model_configs_from_proto(request.config)
            except ValueError as exc:
                raise invalid(str(exc)) from None
            self.service.reload_config(configs, request.config, _remaining(context))
        except ServingError as exc:
            _abort(context, exc)
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0
        return response


def make_server(service: Service, host: str, port: int, reuse_port: bool = False) -> tuple[grpc.Server, int]:
    """A threaded gRPC server bound to ``host:port`` (not started); returns it and the bound port.

    Args:
        reuse_port: share the port with the other worker processes (``SO_REUSEPORT``); off, a port another
            process listens on is an error rather than silently shared.
    """
    limit = service.options.max_request_bytes
    server = grpc.server(
        ThreadPoolExecutor(service.options.grpc_threads, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", 2**31 - 1),
                 ("grpc.so_reuseport", 1 if reuse_port else 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(service), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(service), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC to {host}:{port}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    return server, bound
