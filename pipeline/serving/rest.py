"""The REST front end: a bare ASGI application (served by uvicorn with httptools and uvloop).

No web framework: routing is TensorFlow Serving's two regular expressions, so the per-request cost stays a
regex match, a JSON parse and the model call. Paths outside ``/v1/`` get libevent's bare HTML 404, unmatched
``/v1/`` paths and wrong methods ``400 Malformed request``, like the real server.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

from pipeline.serving import codec
from pipeline.serving.errors import HTTP_STATUS, ServingError, from_exception, invalid
from pipeline.serving.request_log import new_request_id
from pipeline.serving.servable import CLASSIFY_METHOD, REGRESS_METHOD, Servable
from pipeline.serving.service import (Service, classification_rows, examples_inputs, examples_to_protos,
                                      regression_values, signature_def_json)

_POST = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)",
                   re.IGNORECASE)
_GET = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?", re.IGNORECASE)
_V1 = re.compile(r"/v1/", re.IGNORECASE)
_INT64_MAX = 2**63 - 1
LARGE_BODY = 64 << 10  # request bodies from this size are parsed off the event loop

_JSON_HEADERS = [(b"content-type", b"application/json")]
_NOT_FOUND_HTML = ("<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
                   "The requested URL {path} was not found on this server.</BODY></HTML>\n")


class _EmptyError(Exception):
    """The real server answers 400 with an empty body when a version does not fit int64."""


class RestApp:
    """ASGI callable serving TensorFlow Serving's REST API."""

    def __init__(self, service: Service):
        self.service = service
        self.options = service.options
        self.executor = ThreadPoolExecutor(self.options.rest_threads, thread_name_prefix="rest-model")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            return
        method = scope["method"]
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            path += "?" + scope["query_string"].decode("latin-1")
        monitoring = self.options.monitoring_path
        if monitoring is not None and path.split("?")[0] == monitoring:
            await self._reply(send, 200, self.service.metrics.render(), [(b"content-type", b"text/plain")])
            return
        if not _V1.match(path):
            body = _NOT_FOUND_HTML.format(path=path.replace("<", "&lt;").replace(">", "&gt;")).encode()
            await self._reply(send, 404, body, [(b"content-type", b"text/html")])
            return
        limit = self.options.max_request_bytes
        length = _content_length(scope)
        if length is not None and length > limit:
            await self._too_large(send, length)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(send, size)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        status, payload = await self.handle(method, path, body, _header(scope, b"x-request-id"))
        await self._reply(send, status, payload, _JSON_HEADERS)

    @staticmethod
    async def _reply(send, status: int, body: bytes, headers) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _too_large(self, send, size: int) -> None:
        body = codec.error_body(f"Request body of {size} bytes exceeds the limit of "
                                f"{self.options.max_request_bytes} bytes")
        await send({"type": "http.response.start", "status": 413,
                    "headers": _JSON_HEADERS + [(b"content-length", str(len(body)).encode()),
                                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------------------------- routing
    async def handle(self, method: str, path: str, body: bytes, request_id: str | None) -> tuple[int, bytes]:
        """One /v1 request to (HTTP status, JSON body)."""
        started = time.perf_counter()
        model, version_text, api = "", "", "unknown"
        try:
            match = _POST.fullmatch(path) if method == "POST" else None
            if match is not None:
                name, version_text, label, verb = match.groups()
                api = verb
                model = unquote(name)
                if verb not in ("predict", "classify", "regress"):  # the verb compare is case-sensitive
                    raise invalid(f"Malformed request: {method} {path}")
                version = _version(version_text)
                label = unquote(label) if label is not None else None
                return 200, await self._infer(verb, model, version, label, body, request_id,
                                              started)
            match = _GET.fullmatch(path) if method == "GET" else None
            if match is not None:
                name, version_text, label, metadata = match.groups()
                api = "metadata" if metadata else "status"
                if not name:
                    raise invalid("Missing model name in request.")
                model = unquote(name)
                version = _version(version_text)
                if metadata:
                    return 200, self._metadata(model, version, unquote(label) if label is not None else None)
                return 200, self._status(model, version)
            raise invalid(f"Malformed request: {method} {path}")
        except _EmptyError:
            return 400, b""
        except ServingError as exc:
            if api in ("predict", "classify", "regress"):
                self.service.record(model, version_text or "", "REST", api, exc.code.name, started)
            return HTTP_STATUS[exc.code], codec.error_body(exc.message)
        except Exception as exc:  # never let a request take the server down
            error = from_exception(exc)
            return HTTP_STATUS[error.code], codec.error_body(error.message)

    def _status(self, model: str, version: int | None) -> bytes:
        from google.protobuf import json_format

        response = self.service.status_response(model, version)
        return json_format.MessageToJson(response, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True, indent=1).encode()

    def _metadata(self, model: str, version: int | None, label: str | None) -> bytes:
        servable = self.service.manager.resolve(model, version, label)
        return json.dumps({
            "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": {"signature_def": signature_def_json(servable)}},
        }, indent=1).encode()

    async def _infer(self, verb: str, model: str, version: int | None, label: str | None, body: bytes,
                     request_id: str | None, started: float) -> bytes:
        """One predict/classify/regress. Nothing slow runs on the event loop, which serves every connection
        (status and metrics included): the model call runs on the batcher or the REST pool under
        ``--rest_api_timeout_in_ms``, and a body of ``LARGE_BODY`` bytes or more is parsed (and its answer
        encoded) on the pool too."""
        service = self.service
        loop = asyncio.get_running_loop()
        large = len(body) >= LARGE_BODY
        if large:
            servable, signature, inputs, finish = await loop.run_in_executor(
                self.executor, self._prepare, verb, model, version, label, body, request_id)
        else:
            servable, signature, inputs, finish = self._prepare(verb, model, version, label, body, request_id)
        outputs = await service.call_async(servable, signature, inputs, self.options.rest_timeout_s, self.executor)
        payload = await loop.run_in_executor(self.executor, finish, outputs) if large else finish(outputs)
        service.record(model, str(servable.version), "REST", verb, "OK", started)
        return payload

    def _prepare(self, verb: str, model: str, version: int | None, label: str | None, body: bytes,
                 request_id: str | None):
        """Parse and check a request: ``(servable, signature, inputs, finish)``, where ``finish(outputs)`` is the
        response body (and logs the request when it is sampled)."""
        service = self.service
        doc = codec.parse_json(body)
        signature_name = codec.signature_name_of(doc)
        if verb == "predict":
            servable = service.manager.resolve(model, version, label)
            signature = servable.signature_for_predict(signature_name, rest=True)
            fmt, inputs = codec.predict_tensors(doc, signature.inputs, signature_name)
            Servable.check_inputs(signature, inputs)
            sampled = service.request_log is not None and service.request_log.sampled()

            def finish(outputs):
                if sampled:
                    service.log_request(request_id or new_request_id(), servable, signature_name, "rest", inputs,
                                        outputs)
                return codec.predict_response(outputs, fmt)
        else:
            context, examples = codec.examples_from_json(doc)
            serialized = examples_to_protos(context, examples)
            servable = service.manager.resolve(model, version, label)
            method = CLASSIFY_METHOD if verb == "classify" else REGRESS_METHOD
            signature = servable.signature_for(signature_name, method)
            inputs = examples_inputs(signature, serialized)

            def finish(outputs):
                if verb == "classify":
                    return codec.classify_response(classification_rows(outputs, len(serialized)))
                return codec.regress_response(regression_values(outputs, len(serialized)))
        return servable, signature, inputs, finish


def _version(text: str | None) -> int | None:
    if not text:
        return None
    value = int(text)
    if value > _INT64_MAX:
        raise _EmptyError
    return value


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _content_length(scope) -> int | None:
    text = _header(scope, b"content-length")
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None
