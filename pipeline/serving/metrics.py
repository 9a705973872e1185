"""Prometheus metrics, named and printed as TensorFlow Serving exports them.

The values live in ``prometheus_client`` metrics: in memory for a single server, and in its multiprocess mode
(one memory-mapped file per process under ``PROMETHEUS_MULTIPROC_DIR``, summed when scraped) for the workers of
``--workers N``, so that whichever worker answers the scrape reports the whole server. The text is written
here rather than by ``prometheus_client.generate_latest`` to keep TF Serving's exposition: counters under their
own name (no ``_total`` suffix, no ``_created`` series), labels in their declared order, whole numbers without
``.0``. Names follow ``util/prometheus_exporter.cc``'s sanitising of TF monitoring names
(``/tensorflow/serving/x`` -> ``:tensorflow:serving:x``).
"""
from __future__ import annotations

import math
import threading

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
BATCH_SIZE = ":tensorflow:serving:batching_session:processed_batch_size"
MODEL_LOADS = ":tensorflow:serving:model_load_count"

# Microseconds, as TF Serving's request_latency buckets.
LATENCY_BUCKETS_US = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
                      1000000, 2500000, 5000000, 10000000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _Series:
    """One metric: ``inc``/``observe`` by label values, the labelled children cached (no lookup lock after the
    first use of a label set)."""

    def __init__(self, metric, kind: str, name: str, help_: str, label_names: tuple[str, ...]):
        self.kind, self.name, self.help, self.label_names = kind, name, help_, label_names
        self._metric = metric
        self._children: dict[tuple[str, ...], object] = {}
        self._lock = threading.Lock()

    def _child(self, labels: tuple[str, ...]):
        child = self._children.get(labels)
        if child is None:
            with self._lock:
                child = self._children.get(labels)
                if child is None:
                    child = self._children[labels] = self._metric.labels(*labels)
        return child

    def inc(self, *labels: str) -> None:
        self._child(labels).inc()

    def observe(self, value: float, *labels: str) -> None:
        self._child(labels).observe(value)


class Metrics:
    """The server's metrics. Cheap enough to update on every request.

    Args:
        multiprocess_dir: the directory of ``prometheus_client``'s multiprocess mode (the workers of
            ``--workers N``): the scrape sums every process's files there. None for a single server.
            ``PROMETHEUS_MULTIPROC_DIR`` must name it before ``prometheus_client`` is first imported.
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self._multiprocess_dir = multiprocess_dir
        self._registry = None if multiprocess_dir else CollectorRegistry(auto_describe=False)

        def series(kind, name: str, help_: str, labels: tuple[str, ...], buckets=None) -> _Series:
            extra = {"buckets": buckets} if buckets is not None else {}
            metric = (Counter if kind == "counter" else Histogram)(name, help_, labels, registry=self._registry,
                                                                   **extra)
            return _Series(metric, kind, name, help_, labels)

        self.requests = series("counter", REQUEST_COUNT, "The total number of requests.",
                               ("model_name", "version", "entrypoint", "API", "status"))
        self.latency = series("histogram", REQUEST_LATENCY,
                              "Distribution of wall time (in microseconds) for requests.",
                              ("model_name", "API", "entrypoint"), LATENCY_BUCKETS_US)
        self.batch_size = series("histogram", BATCH_SIZE, "Rows per model call made by the dynamic batcher.",
                                 ("model_name", "version", "signature_name"), BATCH_BUCKETS)
        self.loads = series("counter", MODEL_LOADS, "Version loads by outcome.", ("model_name", "status"))
        self._series = (self.requests, self.latency, self.batch_size, self.loads)

    def _collect(self) -> dict[str, list]:
        """Samples by metric name: ``(sample name, labels dict, value)``."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = self._registry
        if registry is None:
            registry = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(registry, path=self._multiprocess_dir)
        return {family.name: [(s.name, s.labels, s.value) for s in family.samples] for family in registry.collect()}

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (summed over the workers in multiprocess mode)."""
        collected = self._collect()
        lines: list[str] = []
        for series in self._series:
            lines += [f"# HELP {series.name} {series.help}", f"# TYPE {series.name} {series.kind}"]
            samples = collected.get(series.name, [])
            if series.kind == "counter":
                rows = sorted((tuple(labels.get(n, "") for n in series.label_names), value)
                              for name, labels, value in samples if name == series.name + "_total")
                lines += [f"{series.name}{_labels(series.label_names, key)} {_number(value)}" for key, value in rows]
            else:
                lines += _histogram_lines(series, samples)
        return ("\n".join(lines) + "\n").encode()


def _histogram_lines(series: _Series, samples: list) -> list[str]:
    by_key: dict[tuple[str, ...], dict] = {}
    for name, labels, value in samples:
        key = tuple(labels.get(n, "") for n in series.label_names)
        entry = by_key.setdefault(key, {"buckets": [], "sum": 0.0, "count": 0.0})
        if name == series.name + "_bucket":
            entry["buckets"].append((float(labels["le"]), value))
        elif name == series.name + "_sum":
            entry["sum"] = value
        elif name == series.name + "_count":
            entry["count"] = value
    lines = []
    name, names = series.name, series.label_names
    for key in sorted(by_key):
        entry = by_key[key]
        for bound, count in sorted(entry["buckets"]):
            le = 'le="' + ("+Inf" if math.isinf(bound) else _number(bound)) + '"'
            lines.append(f"{name}_bucket{_labels(names, key, le)} {_number(count)}")
        lines.append(f"{name}_sum{_labels(names, key)} {_number(entry['sum'])}")
        lines.append(f"{name}_count{_labels(names, key)} {_number(entry['count'])}")
    return lines


def _number(value: float) -> str:
    """Whole numbers as integers (``5``, not ``5.0``), like TF Serving's exporter."""
    if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
