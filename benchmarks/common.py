"""Helpers the benchmark scripts share: their section of docs/benchmarks.md, free ports, stopping a server's
process group."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(section: str, begin: str, end: str, doc: Path = DOC) -> None:
    """Replace the text from ``begin`` to ``end`` in ``doc`` with ``section`` (which carries both markers), or
    append it when the markers are not there yet."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
