"""In-process tests of the pure parts: JSON codec, text protos, version policies, batcher, request log."""
from __future__ import annotations

import json
import math
import os
import threading

import numpy as np
import pytest

from pipeline.serving import codec
from pipeline.serving.batching import Batcher
from pipeline.serving.errors import Code, ServingError
from pipeline.serving.options import (BatchingOptions, ModelConfig, parse_args, parse_model_server_config,
                                      parse_text_proto, read_batching_parameters, read_monitoring_config)
from pipeline.serving.request_log import RequestLog


@pytest.mark.parametrize("value,text", [
    (2.0, "2.0"), (0.1, "0.1"), (0.3, "0.3"), (1e6, "1e+06"), (9000000.0, "9e+06"), (3e-05, "3e-05"),
    (0.246913403, "0.246913403"), (-0.0, "-0.0"), (math.nan, "NaN"), (math.inf, "Infinity"),
    (-math.inf, "-Infinity"), (123456.0, "123456.0"), (1234567.0, "1234567.0"),
])
def test_float32_formatting(value, text):
    assert codec.format_float32(float(np.float32(value))) == text


def test_float64_formatting_widens_to_17_digits():
    assert codec.format_float64(0.1) == "0.1"
    assert codec.format_float64(1 / 3) == "0.33333333333333331"


def test_row_format_builds_batch_major_tensors():
    fmt, tensors = codec.predict_tensors({"instances": [{"a": [1, 2], "b": "x"}, {"a": [3, 4], "b": "y"}]},
                                         {"a": codec.DT_FLOAT, "b": codec.DT_STRING}, "")
    assert fmt == codec.ROW
    assert tensors["a"].dtype == np.float32 and tensors["a"].shape == (2, 2)
    assert tensors["b"].tolist() == [b"x", b"y"]


def test_columnar_inputs_may_differ_in_dim0():
    fmt, tensors = codec.predict_tensors({"inputs": {"a": [1.0, 2.0, 3.0], "b": ["x"]}},
                                         {"a": codec.DT_FLOAT, "b": codec.DT_STRING}, "")
    assert fmt == codec.COLUMNAR and tensors["a"].shape == (3,) and tensors["b"].shape == (1,)


def test_scalar_output_cannot_be_a_row():
    with pytest.raises(ServingError) as info:
        codec.predict_response({"y": np.float32(1.0).reshape(())}, codec.ROW)
    assert info.value.message == "Tensor name: y has no shape information "


def test_inconsistent_output_batch():
    with pytest.raises(ServingError) as info:
        codec.predict_response({"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)}, codec.ROW)
    assert info.value.message == "Tensor name: b has inconsistent batch size: 3 expecting: 2"


def test_bytes_outputs_are_b64():
    body = codec.predict_response({"img_bytes": np.array([b"\x00\x01"], dtype=object)}, codec.ROW)
    assert json.loads(body) == {"predictions": [{"b64": "AAE="}]}


def test_unsupported_input_dtype_is_unimplemented_in_columnar_form():
    with pytest.raises(ServingError) as info:
        codec.predict_tensors({"inputs": [1.0]}, {"h": 19}, "")  # DT_HALF
    assert (info.value.code, info.value.message) == (Code.UNIMPLEMENTED, "Conversion of JSON Value: 1.0 to type: half")
    with pytest.raises(ServingError) as info:  # the row form wraps every element error as INVALID_ARGUMENT
        codec.predict_tensors({"instances": [1.0]}, {"h": 19}, "")
    assert info.value.code == Code.INVALID_ARGUMENT


def test_text_proto_reader():
    parsed = parse_text_proto('# comment\nprometheus_config { enable: true, path: "/m" }\nx: 1 x: 2\n')
    assert parsed == {"prometheus_config": {"enable": True, "path": "/m"}, "x": [1, 2]}


def test_batching_and_monitoring_files(tmp_path):
    (tmp_path / "b").write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 500 }\n"
                                "num_batch_threads { value: 3 }")
    assert read_batching_parameters(tmp_path / "b") == BatchingOptions(8, 500, 100, 3)
    (tmp_path / "m").write_text("prometheus_config { enable: true }")
    assert read_monitoring_config(tmp_path / "m") == "/monitoring/prometheus/metrics"
    (tmp_path / "m").write_text("prometheus_config { enable: false }")
    assert read_monitoring_config(tmp_path / "m") is None


def test_models_config_policies_and_labels():
    (first, second, third) = parse_model_server_config("""
        model_config_list {
          config { name: "a" base_path: "/m/a" model_platform: "tensorflow" }
          config { name: "b" base_path: "/m/b" model_version_policy { specific { versions: 1 versions: 3 } }
                   version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 3 } }
          config { name: "c" base_path: "/m/c" model_version_policy { latest { num_versions: 2 } } }
        }""")
    assert first.aspired({1, 2, 3}) == {3}
    assert second.aspired({1, 2}) == {1} and second.labels == (("canary", 3), ("stable", 1))
    assert third.aspired({1, 2, 3}) == {2, 3}
    assert ModelConfig("d", first.base_path, policy="all").aspired({1, 2}) == {1, 2}
    with pytest.raises(ValueError):
        parse_model_server_config("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'x' } }")


def test_flags_follow_tf_serving(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    options = parse_args(["--model_name=m", f"--model_base_path={tmp_path}", "--enable_batching=true",
                          "--rest_api_timeout_in_ms=250", "--request_log"])
    assert [m.name for m in options.models] == ["m"] and options.batching == BatchingOptions()
    assert options.rest_timeout_s == 0.25 and options.request_log
    assert options.request_log_dir == tmp_path / "request_logs"
    default = parse_args([])
    assert (default.grpc_port, default.rest_port, default.host) == (8500, 8501, "127.0.0.1")
    assert default.serve_base == tmp_path / "serving" and default.batching is None and not default.request_log
    assert default.workers == 1 and parse_args(["--workers", "0"]).workers == (os.cpu_count() or 1)
    assert default.grpc_threads == default.rest_threads == max(4, 2 * (os.cpu_count() or 1))
    with pytest.raises(SystemExit):
        parse_args(["--workers", "-1"])


def test_batcher_merges_and_splits():
    calls = []
    entered, gate = threading.Event(), threading.Event()

    def run(inputs):
        entered.set()
        gate.wait(10)
        calls.append(inputs["x"].shape[0])
        return {"y": inputs["x"] * 2}

    batcher = Batcher(run, BatchingOptions(max_batch_size=8, batch_timeout_micros=0, num_batch_threads=1), "t")
    first = batcher.submit({"x": np.array([1.0], np.float32)}, 1)  # occupies the thread at the gate
    assert entered.wait(10)
    rest = [batcher.submit({"x": np.array([float(i), float(i)], np.float32)}, 2) for i in range(2, 5)]
    gate.set()
    assert first.result(10)["y"].tolist() == [2.0]
    assert [f.result(10)["y"].tolist() for f in rest] == [[4.0, 4.0], [6.0, 6.0], [8.0, 8.0]]
    assert calls == [1, 6]
    with pytest.raises(ServingError) as info:
        batcher.submit({"x": np.zeros(9, np.float32)}, 9)
    assert info.value.message == "Task size 9 is larger than maximum input batch size 8"
    batcher.close()
    assert batcher.submit({"x": np.array([5.0], np.float32)}, 1).result(10)["y"].tolist() == [10.0]


def test_batcher_keeps_a_bad_request_from_failing_its_neighbours():
    def run(inputs):
        if np.isnan(inputs["x"]).any():
            raise ServingError(Code.INVALID_ARGUMENT, "nan")
        return {"y": inputs["x"]}

    entered, gate = threading.Event(), threading.Event()
    batcher = Batcher(lambda i: (entered.set(), gate.wait(10), run(i))[2], BatchingOptions(8, 0, 100, 1), "t")
    blocker = batcher.submit({"x": np.array([0.0], np.float32)}, 1)
    assert entered.wait(10)
    good = batcher.submit({"x": np.array([1.0], np.float32)}, 1)
    bad = batcher.submit({"x": np.array([np.nan], np.float32)}, 1)
    gate.set()
    blocker.result(10)
    assert good.result(10)["y"].tolist() == [1.0]
    with pytest.raises(ServingError):
        bad.result(10)
    batcher.close()


def test_batcher_survives_callers_that_gave_up():
    """A request that timed out (or whose call was cancelled) cancels its future while queued: the batcher
    drops it and goes on serving, instead of losing its thread to ``InvalidStateError``."""
    entered, gate = threading.Event(), threading.Event()
    calls = []

    def run(inputs):
        entered.set()
        gate.wait(10)
        calls.append(inputs["x"].tolist())
        return {"y": inputs["x"]}

    batcher = Batcher(run, BatchingOptions(8, 0, 100, 1), "t")
    blocker = batcher.submit({"x": np.array([0.0], np.float32)}, 1)
    assert entered.wait(10)
    gone = batcher.submit({"x": np.array([1.0], np.float32)}, 1)
    assert gone.cancel()
    kept = batcher.submit({"x": np.array([2.0], np.float32)}, 1)
    gate.set()
    assert blocker.result(10)["y"].tolist() == [0.0] and kept.result(10)["y"].tolist() == [2.0]
    assert calls == [[0.0], [2.0]]  # the cancelled request was never run
    assert batcher.submit({"x": np.array([3.0], np.float32)}, 1).result(10)["y"].tolist() == [3.0]
    batcher.close()


def test_request_log_sampling_and_columnar_records(tmp_path):
    assert not RequestLog(tmp_path, 0.0).sampled()
    log = RequestLog(tmp_path, 1.0)
    assert log.sampled()
    log.log(request_id="r", model_name="m", model_version=2, signature_name="serving_default", api="rest",
            features={"a": np.array([1.0, 2.0], np.float32), "b": np.array([b"x"], dtype=object)},
            outputs={"y": np.array([3.0], np.float32)})
    log.close()
    (path,) = list((tmp_path / "m").glob("*/*.jsonl"))
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert record["row"] == 0 and record["features"] == {"a": [1.0, 2.0], "b": ["x"]}
    assert record["outputs"] == {"y": [3.0]} and record["model_version"] == 2


def test_request_tensors_read_without_tensorflow_equal_make_ndarray():
    """The fast path of tensor_from_proto (typed *_val fields) gives what tf.make_ndarray gives, dtype and shape
    included; tensor_content and other encodings still go through TensorFlow."""
    import tensorflow as tf

    from pipeline.serving.service import tensor_from_proto

    cases = [np.array([1.5, 2.0], np.float32), np.array([[1, 2], [3, 4]], np.int64), np.array([b"a", b"bc"], object),
             np.array([True, False]), np.array(3.0, np.float64), np.array([7], np.int32), np.array([["x"]], object),
             np.zeros((0, 3), np.float32), np.array([1.0, 2.0], np.float16)]
    for case in cases:
        typed = tf.make_tensor_proto(case.tolist() if case.ndim else case.item(), dtype=tf.as_dtype(case.dtype),
                                     shape=case.shape)
        for proto in (tf.make_tensor_proto(case), typed):
            got, want = tensor_from_proto(proto, "x"), tf.make_ndarray(proto)
            want = want.astype(object) if want.dtype.kind == "S" else want
            assert got.dtype == want.dtype and got.shape == want.shape and (got == want).all(), (case, got, want)


def test_signatures_are_called_directly_and_answer_as_the_public_call_does(templates):
    """The server calls a signature's graph function directly (pipeline/serving/tf_call.py: half the CPU of
    ``fn(**tensors)``), through TensorFlow internals. If this fails, TensorFlow changed them: the server still
    answers (through the public call) but slower; update ``direct_call``."""
    import tensorflow as tf

    from pipeline.serving.tf_call import SignatureCall, direct_call

    fn = tf.saved_model.load(str(templates["penguins_1"])).signatures["serving_default"]
    assert direct_call(fn) is not None, "TensorFlow internals used by pipeline/serving/tf_call.py changed"
    call = SignatureCall(fn, {"bill_length_mm": tf.float32, "island": tf.string}, "penguins")
    inputs = {"bill_length_mm": np.array([39.1, np.nan], np.float32),
              "island": np.array([b"Biscoe", b"Nowhere"], dtype=object)}
    got, want = call(inputs), call.public(inputs)
    assert call.direct, "the direct call failed and was given up (see the log)"
    assert set(got) == set(want) == {"probabilities", "classes"}
    for alias in want:
        assert got[alias].dtype == want[alias].dtype and (got[alias] == want[alias]).all()
    with pytest.raises(tf.errors.InvalidArgumentError):  # a graph error keeps its class (and so its code)
        call({"bill_length_mm": np.array([[1.0, 2.0]], np.float32), "island": np.array([b"Biscoe"], dtype=object)})
    assert call.direct


def test_a_broken_direct_call_falls_back_to_the_public_call(templates):
    import tensorflow as tf

    from pipeline.serving.tf_call import SignatureCall

    fn = tf.saved_model.load(str(templates["penguins_1"])).signatures["serving_default"]
    call = SignatureCall(fn, {"bill_length_mm": tf.float32, "island": tf.string}, "penguins")
    inputs = {"bill_length_mm": np.array([39.1], np.float32), "island": np.array([b"Biscoe"], dtype=object)}

    def changed(*tensors):
        raise TypeError("call_flat() got an unexpected keyword argument")
    call._flat = changed  # as if TensorFlow had changed the private call
    assert (call(inputs)["probabilities"] == call.public(inputs)["probabilities"]).all()
    assert not call.direct
    with pytest.raises(ValueError, match="could not convert string to float"):  # bad inputs: the public error
        call({"bill_length_mm": np.array(["x"], dtype=object), "island": np.array([b"Biscoe"], dtype=object)})
