"""Prometheus metrics in the text exposition format, named as TensorFlow Serving exports them.

Hand-rolled (counters and histograms only) so the server needs no extra package. Names follow
``util/prometheus_exporter.cc``'s sanitising of TF monitoring names (``/tensorflow/serving/x`` ->
``:tensorflow:serving:x``).
"""
from __future__ import annotations

import bisect
import threading

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
BATCH_SIZE = ":tensorflow:serving:batching_session:processed_batch_size"
MODEL_LOADS = ":tensorflow:serving:model_load_count"

# Microseconds, as TF Serving's request_latency buckets.
LATENCY_BUCKETS_US = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
                      1000000, 2500000, 5000000, 10000000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Counter:
    def __init__(self, name: str, help_: str, label_names: tuple[str, ...]):
        self.name, self.help, self.label_names = name, help_, label_names
        self._values: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0) + 1

    def value(self, *labels: str) -> int:
        return self._values.get(labels, 0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = sorted(self._values.items())
        lines += [f"{self.name}{_labels(self.label_names, k)} {v}" for k, v in items]
        return lines


class Histogram:
    def __init__(self, name: str, help_: str, label_names: tuple[str, ...], buckets: tuple[float, ...]):
        self.name, self.help, self.label_names, self.buckets = name, help_, label_names, buckets
        self._values: dict[tuple[str, ...], list] = {}  # labels -> [bucket counts..., sum, count]
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            row = self._values.get(labels)
            if row is None:
                row = self._values[labels] = [0] * (len(self.buckets) + 1) + [0.0, 0]
            row[index] += 1
            row[-2] += value
            row[-1] += 1

    def count(self, *labels: str) -> int:
        row = self._values.get(labels)
        return row[-1] if row else 0

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._values.items())
        for labels, row in items:
            cumulative = 0
            for bound, count in zip(self.buckets, row):
                cumulative += count
                bucket = _labels(self.label_names, labels, 'le="' + str(bound) + '"')
                lines.append(f"{self.name}_bucket{bucket} {cumulative}")
            bucket = _labels(self.label_names, labels, 'le="+Inf"')
            lines.append(f"{self.name}_bucket{bucket} {row[-1]}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {row[-2]}")
            lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {row[-1]}")
        return lines


class Metrics:
    """The server's metrics. Cheap enough to update on every request."""

    def __init__(self) -> None:
        self.requests = Counter(REQUEST_COUNT, "The total number of requests.",
                                ("model_name", "version", "entrypoint", "API", "status"))
        self.latency = Histogram(REQUEST_LATENCY, "Distribution of wall time (in microseconds) for requests.",
                                 ("model_name", "API", "entrypoint"), LATENCY_BUCKETS_US)
        self.batch_size = Histogram(BATCH_SIZE, "Rows per model call made by the dynamic batcher.",
                                    ("model_name", "version", "signature_name"), BATCH_BUCKETS)
        self.loads = Counter(MODEL_LOADS, "Version loads by outcome.", ("model_name", "status"))

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in (self.requests, self.latency, self.batch_size, self.loads):
            lines += metric.render()
        return ("\n".join(lines) + "\n").encode()
