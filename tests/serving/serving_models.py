"""Small SavedModels in TensorFlow Serving's layout, written by the tests themselves.

- ``penguins``: the contract signature of docs/contracts.md: ``bill_length_mm`` DT_FLOAT [-1] and ``island``
  DT_STRING [-1] in, ``probabilities`` [-1, 3] and ``classes`` [-1, 3] out. The version number is baked into
  the graph, so a response tells which version answered (:func:`penguins_expected`).
- ``half_plus_two``: one input ``x`` -> one output ``y = 0.5 * x + 2`` (plus ``version - 1``); a second signature
  ``double`` and an int64 signature ``int_times_two``; optionally warmup requests.
- ``examples``: classify / regress / predict signatures over serialized ``tf.Example``s with feature ``x``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

CLASS_NAMES = ["Adelie", "Chinstrap", "Gentoo"]
ISLANDS = ["Biscoe", "Dream", "Torgersen"]


def penguins_expected(bill_length_mm: list[float], island: list[str], version: int) -> np.ndarray:
    """The probabilities version ``version`` of the penguins model returns (computed in float32)."""
    x = np.asarray(bill_length_mm, np.float32)
    onehot = np.asarray([[1.0 if i == isl else 0.0 for i in ISLANDS] for isl in island], np.float32)
    x = np.where(np.isnan(x), np.float32(0.0), x)
    logits = np.stack([x * np.float32(0.01), -x * np.float32(0.01), np.zeros_like(x)], axis=1)
    logits = logits + onehot * np.float32(version)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def write_penguins(path: Path, version: int) -> Path:
    import tensorflow as tf

    class Penguins(tf.Module):
        def __init__(self):
            super().__init__()
            self.scale = tf.Variable(0.01, dtype=tf.float32)
            self.version = tf.Variable(float(version), dtype=tf.float32)
            self.islands = tf.constant(ISLANDS)
            self.class_names = tf.constant(CLASS_NAMES)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="bill_length_mm"),
                                      tf.TensorSpec([None], tf.string, name="island")])
        def serve(self, bill_length_mm, island):
            x = tf.where(tf.math.is_nan(bill_length_mm), tf.zeros_like(bill_length_mm), bill_length_mm)
            onehot = tf.cast(tf.equal(island[:, None], self.islands[None, :]), tf.float32)
            logits = tf.stack([x * self.scale, -x * self.scale, tf.zeros_like(x)], axis=1)
            probabilities = tf.nn.softmax(logits + onehot * self.version)
            classes = tf.tile(self.class_names[None, :], [tf.shape(x)[0], 1])
            return {"probabilities": probabilities, "classes": classes}

    module = Penguins()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def write_half_plus_two(path: Path, version: int = 1, warmup: int = 0) -> Path:
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        def __init__(self):
            super().__init__()
            self.a = tf.Variable(0.5)
            self.b = tf.Variable(2.0 + version - 1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": self.a * x + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def double(self, x):
            return {"y": 2.0 * x}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="n")])
        def int_times_two(self, n):
            return {"m": n * 2}

    module = HalfPlusTwo()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.serve, "double": module.double, "int_times_two": module.int_times_two})
    if warmup:
        write_warmup(path, warmup)
    return path


def write_warmup(path: Path, records: int) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    (path / "assets.extra").mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(path / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        for _ in range(records):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "half_plus_two"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0], tf.float32))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def write_examples_model(path: Path) -> Path:
    """Classify (``classes``/``scores``) and regress (``outputs``) signatures over tf.Examples."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    spec = {"x": tf.io.FixedLenFeature([], tf.float32, default_value=0.0)}

    class Examples(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs):
            x = tf.io.parse_example(inputs, spec)["x"]
            pos = tf.sigmoid(x)
            scores = tf.stack([1.0 - pos, pos], axis=1)
            classes = tf.tile(tf.constant([["neg", "pos"]]), [tf.shape(x)[0], 1])
            return {"classes": classes, "scores": scores}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs):
            x = tf.io.parse_example(inputs, spec)["x"]
            return {"outputs": 0.5 * x + 2.0}

    module = Examples()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.regress, "classify_x": module.classify, "regress_x": module.regress})
    # TF2 exports every signature as "predict"; TF Serving tells classify/regress apart by method_name.
    saved_model = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    signatures = saved_model.meta_graphs[0].signature_def
    signatures["classify_x"].method_name = "tensorflow/serving/classify"
    signatures["regress_x"].method_name = "tensorflow/serving/regress"
    (path / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    return path


def write_broken(path: Path) -> Path:
    """A version directory that looks complete but does not load."""
    (path / "variables").mkdir(parents=True, exist_ok=True)
    (path / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    (path / "variables" / "variables.index").write_bytes(b"nor is this")
    return path


def copy_version(template: Path, base: Path, version: int) -> Path:
    target = base / str(version)
    shutil.copytree(template, target)
    return target


def build_templates(root: Path) -> dict[str, Path]:
    """Every model the tests use, written once per session under ``root``."""
    templates = {
        "penguins_1": write_penguins(root / "penguins_1", 1),
        "penguins_2": write_penguins(root / "penguins_2", 2),
        "penguins_3": write_penguins(root / "penguins_3", 3),
        "half_plus_two_1": write_half_plus_two(root / "half_plus_two_1", 1, warmup=3),
        "half_plus_two_2": write_half_plus_two(root / "half_plus_two_2", 2),
        "examples_1": write_examples_model(root / "examples_1"),
        "slow_1": write_slow(root / "slow_1"),
        "bad_warmup": write_bad_warmup(root / "bad_warmup"),
    }
    return templates


def write_slow(path: Path) -> Path:
    """``y = x`` after ``x[0]`` rounds of a 256x256 matmul: a request that stays in flight for a while."""
    import tensorflow as tf

    class Slow(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            m = tf.eye(256) * 0.5

            def body(i, acc):
                return i + 1, tf.matmul(acc, m) + tf.eye(256)
            _, acc = tf.while_loop(lambda i, acc: i < tf.cast(x[0], tf.int32), body, (tf.constant(0), m))
            return {"y": x + 0.0 * tf.reduce_sum(acc)}

    module = Slow()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def write_bad_warmup(path: Path) -> Path:
    """A valid model whose warmup requests name an input it does not have: it must never take traffic."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    write_half_plus_two(path, 1)
    (path / "assets.extra").mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(path / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        request = predict_pb2.PredictRequest()
        request.inputs["nope"].CopyFrom(tf.make_tensor_proto([1.0], tf.float32))
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(log.SerializeToString())
    return path
