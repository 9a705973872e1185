from __future__ import annotations

import keras
import numpy as np
import pandas as pd

from pipeline.config import ModelConfig, TrainingConfig
from pipeline.features import FeatureSpec
from pipeline.preprocess import build_preprocessor, save_preprocessor
from pipeline.train import load_model, precision_policy, train

SPEC = FeatureSpec(("x",), ("color",), "label", "classification")


def _prepared(tmp_path, frame, spec=SPEC):
    pre, meta = build_preprocessor(frame, spec)
    return save_preprocessor(pre, meta, tmp_path / "pre")["preprocessor"], meta


def test_training_reduces_loss_and_saves_model(tmp_path, tiny_frame):
    pre_path, meta = _prepared(tmp_path, tiny_frame)
    result = train(tiny_frame, tiny_frame, pre_path, meta, ModelConfig("mlp", {"hidden_units": [8]}),
                   TrainingConfig(epochs=30, batch_size=4, learning_rate=0.05, early_stopping_patience=30), tmp_path / "t")
    loss = result.history["loss"]
    assert loss[-1] < loss[0] * 0.5
    assert result.strategy == "cpu" and result.precision_policy == "float32"
    model = load_model(result.model_path)
    from pipeline.export import predict_keras

    assert (predict_keras(model, tiny_frame, meta).argmax(axis=1) == [0] * 6 + [1] * 6).mean() >= 0.9
    assert not (tmp_path / "t" / "backup").exists()  # the resume checkpoint is cleaned after success


def test_retry_resumes_from_backup(tmp_path, tiny_frame):
    """A task killed mid-training resumes at the epoch it reached (BackupAndRestore), not from scratch."""
    pre_path, meta = _prepared(tmp_path, tiny_frame)
    cfg = TrainingConfig(epochs=6, batch_size=4, early_stopping_patience=100)

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("worker lost")

    try:
        train(tiny_frame, tiny_frame, pre_path, meta, ModelConfig("linear"), cfg, tmp_path / "t", callbacks=[Crash()])
    except RuntimeError:
        pass
    assert (tmp_path / "t" / "backup").exists()
    result = train(tiny_frame, tiny_frame, pre_path, meta, ModelConfig("linear"), cfg, tmp_path / "t")
    assert result.resumed_from_epoch == 3
    assert result.epochs_run == 6 and len(result.history["loss"]) == 3


def test_regression_predicts_in_label_units(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, 200)
    frame = pd.DataFrame({"x": x, "y": 1000 + 50 * x})
    spec = FeatureSpec(("x",), (), "y", "regression")
    pre_path, meta = _prepared(tmp_path, frame, spec)
    result = train(frame, frame, pre_path, meta, ModelConfig("linear"),
                   TrainingConfig(epochs=60, batch_size=16, learning_rate=0.05, early_stopping_patience=60), tmp_path / "t")
    from pipeline.export import predict_keras

    pred = predict_keras(load_model(result.model_path), frame, meta)
    assert np.mean(np.abs(pred - frame["y"])) < 20  # label std is ~145: the model learned, in label units


def test_precision_policy():
    assert precision_policy("cpu", True) == "float32"
    assert precision_policy("gpu", True) == "mixed_float16"
    assert precision_policy("tpu", True) == "mixed_bfloat16"
    assert precision_policy("gpu", False) == "float32"
