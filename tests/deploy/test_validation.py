"""Tests of pipeline.deploy.validation: the p99 and the bounded requests the checks send."""
from __future__ import annotations

import pytest

from pipeline.deploy import validation


@pytest.mark.parametrize("p99_input, p99_ms", [([0.001] * 99 + [0.5], 500.0), ([0.002] * 100, 2.0), ([], 0.0)])
def test_p99_is_the_nearest_rank(p99_input, p99_ms):
    assert validation.p99(p99_input) == pytest.approx(p99_ms)


def test_checks_send_the_test_split_in_bounded_requests():
    import numpy as np

    from pipeline.deploy.validation import _in_chunks

    calls = []

    def predict(part):
        calls.append(len(part["x"]))
        return part["x"] * 2

    inputs = {"x": np.arange(10, dtype=np.float32), "c": np.array(list("abcdefghij"))}
    np.testing.assert_array_equal(_in_chunks(predict, inputs, rows=4), np.arange(10) * 2)
    assert calls == [4, 4, 2]
