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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        options = parse_args(argv)
    except (OSError, ValueError) as exc:
        print(f"pipeline serve: {exc}", file=sys.stderr)
        return 2
    from pipeline.serving.server import serve

    return serve(options)


if __name__ == "__main__":
    from pipeline.cli import exit_now

    exit_now(main())
