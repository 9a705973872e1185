"""Server-side dynamic batching: concurrent requests to one signature are merged into one model call.

Like TensorFlow Serving's ``BatchingSession``: a request is a task of ``rows`` rows; a batch thread takes the
oldest task, waits up to ``batch_timeout_micros`` for more (none when the queue already fills a batch), and
runs tasks whose inputs can be concatenated (same dtypes and inner shapes) as one call, splitting the outputs
back by rows. Work queued when a batcher closes still runs.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable

import numpy as np

from pipeline.serving.errors import Code, ServingError, from_exception, invalid
from pipeline.serving.options import BatchingOptions

log = logging.getLogger("pipeline.serving")

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def batch_rows(inputs: dict[str, np.ndarray]) -> int | None:
    """The shared 0-th dimension of a request's inputs, or None when they do not share one."""
    sizes = {array.shape[0] if array.ndim else None for array in inputs.values()}
    if len(sizes) != 1:
        return None
    return sizes.pop()


class _Task:
    __slots__ = ("inputs", "rows", "key", "future", "enqueued")

    def __init__(self, inputs: dict[str, np.ndarray], rows: int):
        self.inputs = inputs
        self.rows = rows
        self.key = tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items()))
        self.future: Future = Future()
        self.enqueued = time.monotonic()


class Batcher:
    """Batches calls of one signature of one servable version."""

    def __init__(self, run: RunFn, options: BatchingOptions, name: str,
                 on_batch: Callable[[int], None] | None = None):
        self._run = run
        self._options = options
        self._on_batch = on_batch
        self._queue: collections.deque[_Task] = collections.deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"batch-{name}-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, inputs: dict[str, np.ndarray], rows: int) -> Future:
        """Queue a request of ``rows`` rows; the future gets its outputs (or a ServingError)."""
        options = self._options
        if rows > options.max_batch_size:
            raise invalid(f"Task size {rows} is larger than maximum input batch size {options.max_batch_size}")
        task = _Task(inputs, rows)
        with self._cond:
            closed = self._closed
            if not closed and self._queued_rows + rows > options.max_enqueued_batches * options.max_batch_size:
                raise ServingError(Code.UNAVAILABLE,
                                   "The batch scheduling queue to which this task was submitted is full")
            if not closed:
                self._queue.append(task)
                self._queued_rows += rows
                self._cond.notify()
        if closed and task.future.set_running_or_notify_cancel():  # the version was unloaded after this
            self._run_alone(task)  # request resolved it: run unbatched
        return task.future

    def close(self) -> None:
        """Let the threads drain the queue and exit; later submits run inline."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _take(self) -> list[_Task] | None:
        options = self._options
        timeout = options.batch_timeout_micros / 1e6
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            if timeout > 0:
                deadline = self._queue[0].enqueued + timeout
                while self._queued_rows < options.max_batch_size and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._queue:
                        break
                    self._cond.wait(remaining)
                if not self._queue:
                    return []
            first = self._queue.popleft()
            batch, rows, kept = [first], first.rows, []
            while self._queue and rows < options.max_batch_size:
                task = self._queue.popleft()
                if task.key == first.key and rows + task.rows <= options.max_batch_size:
                    batch.append(task)
                    rows += task.rows
                else:
                    kept.append(task)
            self._queue.extendleft(reversed(kept))
            self._queued_rows -= rows
        # A task whose caller gave up (a timeout or a cancelled call cancels its future) is dropped here; once
        # running, a future can no longer be cancelled, so setting its result below cannot fail.
        return [task for task in batch if task.future.set_running_or_notify_cancel()]

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if batch:
                try:
                    self._process(batch)
                except BaseException as exc:  # never lose a batch thread (its tasks get the error)
                    log.exception("batcher: a batch failed unexpectedly")
                    for task in batch:
                        if not task.future.done():
                            task.future.set_exception(from_exception(exc))

    def _process(self, batch: list[_Task]) -> None:
        rows = sum(task.rows for task in batch)
        if self._on_batch is not None:
            self._on_batch(rows)
        try:
            if len(batch) == 1:
                batch[0].future.set_result(self._run(batch[0].inputs))
                return
            merged = {name: np.concatenate([task.inputs[name] for task in batch]) for name in batch[0].inputs}
            outputs = self._run(merged)
        except BaseException as exc:  # one failing batch fails its tasks, never the thread
            error = from_exception(exc)
            if len(batch) > 1 and error.code == Code.INVALID_ARGUMENT:
                for task in batch:  # a bad row must not fail its neighbours: run them apart
                    self._run_alone(task)
                return
            for task in batch:
                if not task.future.done():
                    task.future.set_exception(error)
            return
        if any(value.ndim == 0 or value.shape[0] != rows for value in outputs.values()):
            for task in batch:  # outputs not batch-major: cannot split, run apart
                self._run_alone(task)
            return
        offset = 0
        for task in batch:
            end = offset + task.rows
            task.future.set_result({name: value[offset:end] for name, value in outputs.items()})
            offset = end

    def _run_alone(self, task: _Task) -> None:
        try:
            task.future.set_result(self._run(task.inputs))
        except BaseException as exc:
            task.future.set_exception(from_exception(exc))
