"""Wiring: the model manager, the gRPC and REST servers, and a clean stop on SIGINT/SIGTERM.

On the first signal both servers stop accepting work, in-flight requests finish (up to
``--shutdown_grace_seconds``), then models are unloaded and the request log is flushed. A second signal stops
at once.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading

from pipeline.serving.errors import ServingError
from pipeline.serving.metrics import Metrics
from pipeline.serving.options import ServerOptions, parse_model_server_config
from pipeline.serving.request_log import RequestLog

log = logging.getLogger("pipeline.serving")


def serve(options: ServerOptions) -> int:
    """Run the server until a signal; returns the process exit code."""
    from pipeline.serving.service import Service

    metrics = Metrics()
    request_log = (RequestLog(options.request_log_dir, options.request_log_sample_rate)
                   if options.request_log else None)
    service = Service(options, metrics, request_log)
    try:
        service.manager.start(options.file_system_poll_s)
    except ServingError as exc:
        log.error("cannot start: %s", exc.message)
        service.manager.stop()
        return 1
    if options.model_config_file is not None and options.model_config_poll_s > 0:
        service.manager.watch_config_file(options.model_config_file, options.model_config_poll_s,
                                          parse_model_server_config)
    grpc_server = None
    try:
        if options.grpc_port:
            from pipeline.serving.grpc_api import make_server

            grpc_server, port = make_server(service, options.host, options.grpc_port)
            grpc_server.start()
            log.info("Running gRPC ModelServer at %s:%d ...", options.host, port)
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_run_rest(service, options, grpc_server))
    finally:
        service.manager.stop()
        if request_log is not None:
            request_log.close()
        log.info("stopped")


def _loop_factory():
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is in requirements.txt
        return None
    return uvloop.new_event_loop


async def _run_rest(service, options: ServerOptions, grpc_server) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    http_server = None

    def on_signal() -> None:
        if stopping.is_set():
            if http_server is not None:
                http_server.force_exit = True
            if grpc_server is not None:
                grpc_server.stop(0)
            return
        log.info("stopping: finishing in-flight requests")
        stopping.set()
        if http_server is not None:
            http_server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    grpc_done = threading.Event()
    if options.rest_port:
        import uvicorn

        from pipeline.serving.rest import RestApp

        app = RestApp(service)
        config = uvicorn.Config(app, host=options.host, port=options.rest_port, loop="asyncio", http="httptools",
                                lifespan="off", access_log=False, log_level="warning", server_header=False,
                                date_header=False, timeout_graceful_shutdown=options.shutdown_grace_s,
                                backlog=4096, timeout_keep_alive=75)
        http_server = _QuietSignalsServer(config)
        log.info("Exporting HTTP/REST API at:%s:%d ...", options.host, options.rest_port)
        serve_task = asyncio.create_task(http_server.serve())
        await stopping.wait() if not serve_task.done() else None
        if grpc_server is not None:  # stop taking gRPC work while REST drains
            grpc_done = grpc_server.stop(options.shutdown_grace_s)
        await serve_task
        app.executor.shutdown(wait=True)
    else:
        await stopping.wait()
        if grpc_server is not None:
            grpc_done = grpc_server.stop(options.shutdown_grace_s)
    await loop.run_in_executor(None, grpc_done.wait, options.shutdown_grace_s + 1)
    return 0


try:
    import uvicorn as _uvicorn

    class _QuietSignalsServer(_uvicorn.Server):
        """uvicorn's server, leaving signal handling to :func:`serve` (it stops gRPC too)."""

        @contextlib.contextmanager
        def capture_signals(self):
            yield
except ImportError:  # pragma: no cover - uvicorn is in requirements.txt
    _QuietSignalsServer = None
