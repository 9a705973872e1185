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
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_run(service, options))
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


async def _run(service, options: ServerOptions) -> int:
    """Serve gRPC (``grpc.aio``) and REST (uvicorn) on this one event loop until a signal."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    http_server = grpc_server = grpc_pool = None
    stop_tasks: list[asyncio.Task] = []

    def on_signal() -> None:
        if stopping.is_set():
            if http_server is not None:
                http_server.force_exit = True
            if grpc_server is not None:
                stop_tasks.append(loop.create_task(grpc_server.stop(0)))
            return
        log.info("stopping: finishing in-flight requests")
        stopping.set()
        if http_server is not None:
            http_server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    if options.grpc_port:
        from pipeline.serving.grpc_api import make_server

        try:
            grpc_server, port, grpc_pool = make_server(service, options.host, options.grpc_port)
        except OSError as exc:
            log.error("cannot start: %s", exc)
            return 1
        await grpc_server.start()
        log.info("Running gRPC ModelServer at %s:%d ...", options.host, port)
    try:
        if options.rest_port:
            import uvicorn

            from pipeline.serving.rest import RestApp

            app = RestApp(service)
            config = uvicorn.Config(app, host=options.host, port=options.rest_port, loop="asyncio",
                                    http="httptools", lifespan="off", access_log=False, log_level="warning",
                                    server_header=False, date_header=False,
                                    timeout_graceful_shutdown=options.shutdown_grace_s, backlog=4096,
                                    timeout_keep_alive=75)
            http_server = _QuietSignalsServer(config)
            log.info("Exporting HTTP/REST API at:%s:%d ...", options.host, options.rest_port)
            serve_task = asyncio.create_task(http_server.serve())
            await stopping.wait() if not serve_task.done() else None
            grpc_stop = loop.create_task(grpc_server.stop(options.shutdown_grace_s)) if grpc_server else None
            await serve_task  # REST drains while gRPC stops taking work
            app.executor.shutdown(wait=True)
            if grpc_stop is not None:
                await grpc_stop
        else:
            await stopping.wait()
            if grpc_server is not None:
                await grpc_server.stop(options.shutdown_grace_s)
        for task in stop_tasks:
            await task
    finally:
        if grpc_pool is not None:
            grpc_pool.shutdown(wait=True)
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
