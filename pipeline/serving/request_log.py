"""The sampled request log read by the monitor (format: ``docs/contracts.md``, "The request log").

One JSON object per instance row, appended to ``<dir>/<model_name>/<YYYY-MM-DD>/<HH>-<pid>.jsonl`` (UTC).
Sampling keeps or drops whole requests. Records are built and written by one background thread so that
logging costs a request only a queue put. Non-finite floats are written as ``null`` (strict JSON; readers
see NaN); strings that are not UTF-8 as ``{"b64": ...}``.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import math
import os
import queue
import random
import threading
import random
from pathlib import Path
from typing import Any

import numpy as np

_STOP = object()


_RANDOM = random.Random()  # seeded from os.urandom once


def new_request_id() -> str:
    """A random 32-hex-digit id for a request that brought none. Not ``uuid.uuid4``: its ``os.urandom`` syscall
    hands the GIL to the model threads, and the event loop then waited for it back (a third of the loop's time at
    64 concurrent batched requests, measured with cProfile). The ids are names, not secrets."""
    return f"{_RANDOM.getrandbits(128):032x}"


def _plain(value: Any) -> Any:
    """A numpy element or nested list as strict-JSON-able Python values."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _values(array: np.ndarray) -> Any:
    """A tensor as nested Python values; float32 numbers as their shortest repr (39.1, not 39.09999847)."""
    if array.dtype == np.float32:
        flat = [float(str(v)) for v in array.reshape(-1)]
        return _plain(np.asarray(flat, dtype=np.float64).reshape(array.shape).tolist())
    return _plain(array.tolist())


def _row(array: np.ndarray, index: int) -> Any:
    return _values(array[index : index + 1].reshape(array.shape[1:]))


class RequestLog:
    """Appends sampled requests to JSONL files from a background thread."""

    def __init__(self, directory: Path, sample_rate: float = 1.0):
        self.directory = Path(directory)
        self.sample_rate = sample_rate
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._files: dict[Path, Any] = {}
        self._thread = threading.Thread(target=self._loop, name="request-log", daemon=True)
        self._thread.start()

    def sampled(self) -> bool:
        """Whether to log the request about to be served (decided once per request)."""
        return self.sample_rate >= 1.0 or random.random() < self.sample_rate

    def log(self, *, request_id: str, model_name: str, model_version: int, signature_name: str, api: str,
            features: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Queue one request (all its rows); returns at once."""
        self._queue.put((dt.datetime.now(dt.timezone.utc), request_id, model_name, model_version,
                         signature_name, api, features, outputs))

    def close(self) -> None:
        """Write everything queued, then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout=30)

    # ----------------------------------------------------------------------------------------- thread
    def _records(self, item) -> tuple[Path, list[str]]:
        now, request_id, model_name, version, signature_name, api, features, outputs = item
        path = self.directory / model_name / now.strftime("%Y-%m-%d") / f"{now.strftime('%H')}-{os.getpid()}.jsonl"
        arrays = list(features.values()) + list(outputs.values())
        rows = {a.shape[0] for a in arrays if a.ndim > 0}
        ts = now.isoformat()
        lines = []
        if len(rows) == 1 and all(a.ndim > 0 for a in arrays):
            for index in range(rows.pop()):
                lines.append(json.dumps({
                    "request_id": request_id, "row": index, "ts": ts, "model_name": model_name,
                    "model_version": version, "signature_name": signature_name, "api": api,
                    "features": {k: _row(v, index) for k, v in features.items()},
                    "outputs": {k: _row(v, index) for k, v in outputs.items()},
                }, ensure_ascii=False, allow_nan=False))
        else:  # tensors without a shared batch dimension: one record holding them whole
            lines.append(json.dumps({
                "request_id": request_id, "row": 0, "ts": ts, "model_name": model_name,
                "model_version": version, "signature_name": signature_name, "api": api,
                "features": {k: _values(v) for k, v in features.items()},
                "outputs": {k: _values(v) for k, v in outputs.items()},
            }, ensure_ascii=False, allow_nan=False))
        return path, lines

    def _write(self, path: Path, lines: list[str]) -> None:
        handle = self._files.get(path)
        if handle is None:
            for old in [p for p in self._files if (p.parent.name, p.name) != (path.parent.name, path.name)]:
                self._files.pop(old).close()  # a new hour: the previous hour's files are complete
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = self._files[path] = open(path, "a", encoding="utf-8")
        handle.write("".join(line + "\n" for line in lines))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            stop = item is _STOP
            while not stop:
                try:
                    self._write(*self._records(item))
                except Exception as exc:  # a bad record must not stop logging
                    print(f"request log: dropped a record: {exc!r}", flush=True)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                stop = item is _STOP
            for handle in self._files.values():
                handle.flush()
            if stop:
                for handle in self._files.values():
                    handle.close()
                self._files.clear()
                return
