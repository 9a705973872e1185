"""Calling a SavedModel signature with as little Python as TensorFlow allows.

A loaded signature is a ``ConcreteFunction``; calling it (``fn(**tensors)``) binds the keyword arguments against its
structured signature with ``inspect``-style machinery, flattens them, checks for gradient tapes and distribution
strategies and packs the outputs again, and ``tf.constant`` checks and copies each input: together more than half
of a one-row call of the penguins model, all of it holding the GIL (docs/serving.md has the measurements). The
graph function underneath takes the input tensors in ``tf.nest`` order followed by the captured variables, so the
server builds the tensors and calls that function directly.

Both steps use TensorFlow internals: ``call_flat`` of the ``AtomicFunction`` that ``ConcreteFunction.inference_fn``
(public, ``tf.types.experimental``) returns, and the ``EagerTensor`` constructor that ``tf.constant`` ends in.
All of it is in :func:`direct_call`. When it is missing, or the direct call fails where the public call works,
:class:`SignatureCall` uses the public call (and logs it once); ``tests/serving/test_units.py`` fails loudly so
that the loss is noticed.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger("pipeline.serving")


def direct_call(fn: Any) -> tuple[Callable[..., Any], Callable[[np.ndarray, int], Any], list[str], list[str]] | None:
    """The direct call of a loaded signature's graph function, or None when this TensorFlow does not offer it.

    Returns:
        ``(call, tensor, input_names, output_names)``: ``tensor(array, datatype_enum)`` makes an input tensor;
        ``call(*tensors)`` takes them in ``input_names`` order and returns the output tensors in
        ``output_names`` order (both ``tf.nest`` order: sorted names).
    """
    import tensorflow as tf

    try:
        from tensorflow.python.eager import context  # private: the eager context tf.constant uses
        from tensorflow.python.framework import ops  # private: EagerTensor, tf.constant's last step

        eager_tensor, current = ops.EagerTensor, context.context
        atomic = fn.inference_fn  # tf.types.experimental.ConcreteFunction.inference_fn
        call_flat = atomic.call_flat  # private: what ConcreteFunction._call_flat ends in
        args, kwargs = fn.structured_input_signature
        outputs = fn.structured_outputs
        captures = tuple(fn.captured_inputs)
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    if args or not isinstance(kwargs, dict) or not isinstance(outputs, dict):
        return None  # positional or nested signatures (not SavedModel signatures): the public call
    if not all(isinstance(spec, tf.TensorSpec) for spec in (*kwargs.values(), *outputs.values())):
        return None
    if tf.distribute.has_strategy():  # captured distributed variables need the wrapper's own handling
        return None

    def call(*tensors):
        return call_flat(*tensors, *captures)

    def tensor(array: np.ndarray, datatype: int):
        return eager_tensor(array, current().device_name, datatype)

    return call, tensor, sorted(kwargs), sorted(outputs)


class SignatureCall:
    """Runs one signature on numpy inputs (named and typed as it expects); TensorFlow's errors propagate.

    Args:
        fn: the signature, ``tf.saved_model.load(...).signatures[name]``.
        dtypes: input alias -> ``tf.DType``.
        name: for the log line when the direct call has to be given up.
    """

    def __init__(self, fn: Any, dtypes: dict[str, Any], name: str = ""):
        self._fn, self._dtypes, self._name = fn, dtypes, name
        found = direct_call(fn)
        self.direct = found is not None and set(found[2]) == set(dtypes)  # the direct call is (still) in use
        if not self.direct:
            log.warning("signature %s: no direct graph-function call in this TensorFlow; using the public call", name)
            found = (None, None, [], [])
        self._flat, self._tensor, input_names, self._output_names = found
        self._inputs = [(alias, dtypes[alias].as_datatype_enum) for alias in input_names]

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.direct or len(inputs) != len(self._inputs):
            return self.public(inputs)
        import tensorflow as tf

        try:
            return self._call_direct(inputs)
        except tf.errors.OpError:
            raise  # the graph refused the inputs: the error the public call gives too
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            outputs = self.public(inputs)  # bad inputs fail here too, with the public call's error
            self.direct = False  # they did not: the direct call itself is broken
            log.warning("signature %s: the direct call failed (%r); using the public call from now on",
                        self._name, exc)
            return outputs

    def _call_direct(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensor = self._tensor
        values = self._flat(*[tensor(inputs[alias], datatype) for alias, datatype in self._inputs])
        if len(values) != len(self._output_names):
            raise ValueError(f"{len(values)} outputs for {len(self._output_names)} names")
        return {alias: value.numpy() for alias, value in zip(self._output_names, values)}

    def public(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The signature called through TensorFlow's public API."""
        import tensorflow as tf

        tensors = {alias: tf.constant(value, dtype=self._dtypes[alias]) for alias, value in inputs.items()}
        return {alias: value.numpy() for alias, value in self._fn(**tensors).items()}
