"""Wiring: the model manager, the REST and gRPC servers, and a clean stop on SIGINT/SIGTERM.

On the first signal both servers stop accepting work, in-flight requests finish (up to
``--shutdown_grace_seconds``), then models are unloaded and the request log is flushed. A second signal stops
at once. A worker of ``--workers N`` (pipeline/serving/workers.py) also stops when its supervisor is gone, shares
both ports with its siblings, writes its metrics where the others read them, and follows the configs they are
sent.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from pipeline.serving.errors import ServingError
from pipeline.serving.metrics import Metrics
from pipeline.serving.options import ServerOptions, model_configs_from_proto, parse_model_server_config
from pipeline.serving.request_log import RequestLog
from pipeline.serving.workers import ConfigBroadcast, Worker, current_worker, listen_socket

log = logging.getLogger("pipeline.serving")


def serve(options: ServerOptions) -> int:
    """Run the server until a signal; returns the process exit code."""
    from pipeline.serving.service import Service

    worker = current_worker()
    metrics = Metrics(os.environ.get("PROMETHEUS_MULTIPROC_DIR") if worker is not None else None)
    request_log = (RequestLog(options.request_log_dir, options.request_log_sample_rate)
                   if options.request_log else None)
    service = Service(options, metrics, request_log)
    models = None
    if worker is not None:
        service.broadcast = ConfigBroadcast(worker)
        latest = service.broadcast.latest()
        if latest is not None:  # a restarted worker serves what the others were last told to
            from tensorflow_serving.config import model_server_config_pb2

            models = model_configs_from_proto(model_server_config_pb2.ModelServerConfig.FromString(latest))
            service.broadcast.applied = service.broadcast.digest(latest)
    try:
        service.manager.start(options.file_system_poll_s, models)
    except ServingError as exc:
        log.error("cannot start: %s", exc.message)
        service.manager.stop()
        return 1
    if options.model_config_file is not None and options.model_config_poll_s > 0:
        service.manager.watch_config_file(options.model_config_file, options.model_config_poll_s,
                                          parse_model_server_config)
    if service.broadcast is not None:
        service.manager.every("config-broadcast", service.broadcast.poll_s, service.follow_broadcast)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_run(service, options, worker))
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


async def _run(service, options: ServerOptions, worker: Worker | None) -> int:
    """Serve REST (uvicorn) on this event loop and gRPC (grpc's threaded server) beside it until a signal."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    http_server = grpc_server = None

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
    if worker is not None and worker.lifeline_fd is not None:
        def on_lifeline() -> None:  # readable only at end-of-file: the supervisor is gone
            loop.remove_reader(worker.lifeline_fd)
            if not stopping.is_set():
                log.warning("the supervisor is gone")
                on_signal()
        loop.add_reader(worker.lifeline_fd, on_lifeline)

    if options.grpc_port:
        from pipeline.serving.grpc_api import make_server

        try:
            grpc_server, port = make_server(service, options.host, options.grpc_port, reuse_port=worker is not None)
        except OSError as exc:
            log.error("cannot start: %s", exc)
            return 1
        grpc_server.start()
        log.info("Running gRPC ModelServer at %s:%d ...", options.host, port)
    grpc_stopped = None
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
        http_server.should_exit = stopping.is_set()  # a signal that came while the model loaded is not lost
        sockets = None
        if worker is not None:
            try:
                sockets = [listen_socket(options.host, options.rest_port, config.backlog)]
            except OSError as exc:
                log.error("cannot start: REST port %s:%d: %s", options.host, options.rest_port, exc)
                if grpc_server is not None:
                    grpc_server.stop(0)
                return 1
        log.info("Exporting HTTP/REST API at:%s:%d ...", options.host, options.rest_port)
        serve_task = asyncio.create_task(http_server.serve(sockets=sockets))
        while not http_server.started and not serve_task.done():
            await asyncio.sleep(0.01)
        if worker is not None and http_server.started:
            worker.notify_ready()
        await stopping.wait() if not serve_task.done() else None
        if grpc_server is not None:  # gRPC stops taking work while REST drains
            grpc_stopped = grpc_server.stop(options.shutdown_grace_s)
        await serve_task
        app.executor.shutdown(wait=True)
    else:
        if worker is not None:
            worker.notify_ready()
        await stopping.wait()
        if grpc_server is not None:
            grpc_stopped = grpc_server.stop(options.shutdown_grace_s)
    if grpc_stopped is not None:
        await loop.run_in_executor(None, grpc_stopped.wait)
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
