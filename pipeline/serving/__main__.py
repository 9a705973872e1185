"""``pipeline serve`` / ``python -m pipeline.serving``: TensorFlow Serving's flags, our server."""
from __future__ import annotations

import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse TF Serving-style flags and serve until SIGINT/SIGTERM. Returns the exit code."""
    from pipeline.serving.options import parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    worker = os.environ.get("PIPELINE_SERVING_WORKER")  # "<index>/<count>" in a worker of --workers N
    where = f"[worker {worker.split('/')[0]}, pid %(process)d]" if worker else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s{where}: %(message)s",
                        stream=sys.stderr)
    try:
        options = parse_args(argv)
    except (OSError, ValueError) as exc:
        print(f"pipeline serve: {exc}", file=sys.stderr)
        return 2
    if options.workers > 1:  # a supervisor: it loads no model (pipeline/serving/workers.py)
        from pipeline.serving.workers import supervise

        ports = [port for port in (options.grpc_port, options.rest_port) if port]
        return supervise(options.host, ports, options.workers, argv)
    from pipeline.serving.server import serve

    return serve(options)


if __name__ == "__main__":
    from pipeline.cli import exit_now

    exit_now(main())
