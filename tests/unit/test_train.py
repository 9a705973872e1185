from __future__ import annotations

import keras
import numpy as np
import pandas as pd

from pipeline.config import ModelConfig, TrainingConfig
from pipeline.features import FeatureSpec
from pipeline.preprocess import fit_preprocessing
from pipeline.train import load_model, plan, precision_policy, train

SPEC = FeatureSpec(("x",), ("color",), "label", "classification")


def _prepared(tmp_path, frame, spec=SPEC):
    return fit_preprocessing(frame, spec)


def test_training_reduces_loss_and_saves_model(tmp_path, tiny_frame):
    meta = _prepared(tmp_path, tiny_frame)
    result = train(tiny_frame, tiny_frame, meta, ModelConfig("mlp", {"hidden_units": [8]}),
                   TrainingConfig(epochs=30, batch_size=4, learning_rate=0.05, early_stopping_patience=30, lr_schedule="constant"), tmp_path / "t")
    loss = result.history["loss"]
    assert loss[-1] < loss[0] * 0.5
    assert result.strategy == "cpu" and result.precision_policy == "float32"
    model = load_model(result.model_path, meta)
    from pipeline.export import predict_keras

    assert (predict_keras(model, tiny_frame, meta).argmax(axis=1) == [0] * 6 + [1] * 6).mean() >= 0.9
    assert not (tmp_path / "t" / "backup").exists()  # the resume checkpoint is cleaned after success


def test_retry_resumes_from_backup(tmp_path, tiny_frame):
    """A task killed mid-training resumes at the epoch it reached (BackupAndRestore), not from scratch."""
    meta = _prepared(tmp_path, tiny_frame)
    cfg = TrainingConfig(epochs=6, batch_size=4, early_stopping_patience=100)

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("worker lost")

    try:
        train(tiny_frame, tiny_frame, meta, ModelConfig("linear"), cfg, tmp_path / "t", callbacks=[Crash()])
    except RuntimeError:
        pass
    assert (tmp_path / "t" / "backup").exists()
    result = train(tiny_frame, tiny_frame, meta, ModelConfig("linear"), cfg, tmp_path / "t")
    assert result.resumed_from_epoch == 3
    assert result.epochs_run == 6 and len(result.history["loss"]) == 3


def _crash_at(epoch_index: int):
    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == epoch_index:
                raise RuntimeError("worker lost")
    return Crash()


def test_a_checkpoint_cut_short_resumes_from_the_one_before(tmp_path, tiny_frame):
    """A worker killed while Keras wrote the checkpoint leaves it truncated (seen on the production topology:
    every retry failed with h5py's "bad object header"): the retry resumes from the checkpoint before it."""
    meta = _prepared(tmp_path, tiny_frame)
    cfg = TrainingConfig(epochs=6, batch_size=4, early_stopping_patience=100)
    backup = tmp_path / "t" / "backup"
    try:
        train(tiny_frame, tiny_frame, meta, ModelConfig("linear"), cfg, tmp_path / "t", callbacks=[_crash_at(2)])
    except RuntimeError:
        pass
    latest = backup / "latest.weights.h5"
    assert (backup / "latest.weights.h5.bkp").exists()  # the epoch before the last, kept
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # the kill, half way through the write
    result = train(tiny_frame, tiny_frame, meta, ModelConfig("linear"), cfg, tmp_path / "t")
    assert result.resumed_from_epoch == 2 and result.epochs_run == 6


def test_an_unreadable_checkpoint_with_none_before_it_starts_over(tmp_path, tiny_frame, capsys):
    meta = _prepared(tmp_path, tiny_frame)
    cfg = TrainingConfig(epochs=3, batch_size=4, early_stopping_patience=100)
    backup = tmp_path / "t" / "backup"
    backup.mkdir(parents=True)
    (backup / "latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n cut short")
    (backup / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    result = train(tiny_frame, tiny_frame, meta, ModelConfig("linear"), cfg, tmp_path / "t")
    assert result.resumed_from_epoch == 0 and result.epochs_run == 3
    assert "unreadable" in capsys.readouterr().out


def test_regression_predicts_in_label_units(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, 200)
    frame = pd.DataFrame({"x": x, "y": 1000 + 50 * x})
    spec = FeatureSpec(("x",), (), "y", "regression")
    meta = _prepared(tmp_path, frame, spec)
    result = train(frame, frame, meta, ModelConfig("linear"),
                   TrainingConfig(epochs=60, batch_size=16, learning_rate=0.05, early_stopping_patience=60, lr_schedule="constant"), tmp_path / "t")
    from pipeline.export import predict_keras

    pred = predict_keras(load_model(result.model_path, meta), frame, meta)
    assert np.mean(np.abs(pred - frame["y"])) < 20  # label std is ~145: the model learned, in label units


def test_precision_policy():
    assert precision_policy("cpu", True) == "float32"
    assert precision_policy("gpu", True) == "mixed_float16"
    assert precision_policy("tpu", True) == "mixed_bfloat16"
    assert precision_policy("gpu", False) == "float32"


def test_plan_scales_with_the_data():
    cfg = TrainingConfig()
    small, large = plan(240, cfg), plan(300_000, cfg)
    assert (small.batch_size, small.epochs) == (32, cfg.max_epochs)          # 8 steps an epoch: the epoch cap
    assert large.batch_size == 512 and large.epochs == round(cfg.step_budget / large.steps_per_epoch)
    assert large.patience == max(10, large.epochs // 5)
    pinned = plan(300_000, TrainingConfig(epochs=3, batch_size=64, early_stopping_patience=2))
    assert (pinned.batch_size, pinned.epochs, pinned.patience) == (64, 3, 2)


def test_time_budget_stops_the_fit(tmp_path, tiny_frame):
    import time

    class Slow(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            time.sleep(0.4)

    meta = _prepared(tmp_path, tiny_frame)
    result = train(tiny_frame, tiny_frame, meta, ModelConfig("linear"),
                   TrainingConfig(epochs=500, batch_size=4, early_stopping_patience=500, max_minutes=0.01), tmp_path / "t",
                   callbacks=[Slow()])
    assert 1 <= result.epochs_run < 10  # 0.6 s of budget, 0.4 s an epoch


def test_builder_output_shape_is_checked(tmp_path, tiny_frame):
    import pytest

    from pipeline.train import build_body

    meta = _prepared(tmp_path, tiny_frame)
    bad = ModelConfig(module="tests.unit.test_train:wrong_head")
    with pytest.raises(ValueError, match=r"returned an output of shape .*\(batch, 2\)"):
        build_body(meta, bad)


def wrong_head(inputs, spec):
    import keras

    from models.layers import encode

    return keras.layers.Dense(5)(encode(inputs, spec))


def test_every_builder_trains_on_every_kind(tmp_path):
    """tabular, mlp and linear take numeric, categorical, high-cardinality, text and date inputs."""
    from tests.unit.test_preprocess import mixed_frame, mixed_spec

    df = mixed_frame(120)
    meta = fit_preprocessing(df, mixed_spec(df))
    for name in ("tabular", "mlp", "linear"):
        result = train(df, df, meta, ModelConfig(name), TrainingConfig(epochs=2, batch_size=32), tmp_path / name)
        assert len(result.history["loss"]) == 2


def test_class_weights_train_rare_classes_and_served_probabilities_stay_calibrated(tmp_path):
    """auto: a 9:1 table is fitted with class weights, and the saved model's probabilities are corrected back to
    the data's class frequencies (mean predicted probability of the rare class near its 10%)."""
    rng = np.random.default_rng(1)
    n = 2000
    y = (rng.random(n) < 0.1).astype(int)
    frame = pd.DataFrame({"x": rng.normal(size=n) + y * 0.7, "label": np.where(y == 1, "rare", "common")})
    spec = FeatureSpec(("x",), (), "label", "classification")
    meta = fit_preprocessing(frame, spec)
    cfg = TrainingConfig(epochs=20, batch_size=64, early_stopping_patience=20, learning_rate=0.05)
    result = train(frame, frame, meta, ModelConfig("linear"), cfg, tmp_path / "auto")
    model = load_model(result.model_path, meta)
    assert "prior_correction" in [layer.name for layer in model.get_layer(index=-1).layers]
    from pipeline.export import predict_keras

    proba = predict_keras(model, frame, meta)
    assert abs(proba[:, 1].mean() - 0.1) < 0.03
    uncorrected = train(frame, frame, meta, ModelConfig("linear"), TrainingConfig(**{**cfg.__dict__, "class_weight": "balanced"}),
                        tmp_path / "balanced")
    favoured = predict_keras(load_model(uncorrected.model_path, meta), frame, meta)
    assert favoured[:, 1].mean() > 0.3  # balanced weights, no correction: the rare class is favoured


CUSTOM_MODULE = '''
import keras


class Doubler(keras.layers.Layer):
    """A custom layer at the module's top level, not registered: the pipeline finds it when loading."""

    def call(self, x):
        return x * 2.0


def build(inputs, spec, *, units=4):
    from models.layers import encode, head

    return head(keras.layers.Dense(units)(Doubler()(encode(inputs, spec))), spec)
'''


def test_a_user_module_with_its_own_layer_trains_and_loads_back(tmp_path, tiny_frame):
    module = tmp_path / "my_layers.py"
    module.write_text(CUSTOM_MODULE)
    cfg = ModelConfig(module=str(module), params={"units": 3})
    meta = _prepared(tmp_path, tiny_frame)
    result = train(tiny_frame, tiny_frame, meta, cfg, TrainingConfig(epochs=2, batch_size=4), tmp_path / "t")
    from pipeline.train import release_loaded_model

    release_loaded_model()
    model = load_model(result.model_path, meta, cfg)  # a later task: the class comes from the module
    from pipeline.export import predict_keras

    assert predict_keras(model, tiny_frame, meta).shape == (12, 2)
