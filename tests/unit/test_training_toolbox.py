"""The training toolbox set from the config: learning-rate schedules, gradient clipping, label smoothing,
L1/L2, dropout and batch normalisation in the builders, and TensorBoard logs (``pipeline tensorboard``)."""
from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from pipeline.config import ConfigError, ModelConfig, TrainingConfig, from_dict
from pipeline.features import FeatureSpec
from pipeline.preprocess import fit_preprocessing
from pipeline.train import _optimizer, build_body, learning_rate, load_model, smoothed_sparse_crossentropy, train

SPEC = FeatureSpec(("x",), ("color",), "label", "classification")


def _config(**training):
    return from_dict({"source": "data.csv", "label": "y", "training": training})


# -- the config ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("training, key", [
    ({"clipnorm": 0}, "training.clipnorm"),
    ({"clipvalue": -1}, "training.clipvalue"),
    ({"clipnorm": 1.0, "clipvalue": 0.5}, "training.clipvalue"),
    ({"label_smoothing": 1}, "training.label_smoothing"),
    ({"label_smoothing": -0.1}, "training.label_smoothing"),
    ({"lr_schedule": "linear"}, "training.lr_schedule"),
    ({"lr_decay_rate": 1}, "training.lr_decay_rate"),
    ({"lr_decay_epochs": 0}, "training.lr_decay_epochs"),
    ({"lr_plateau_patience": 0}, "training.lr_plateau_patience"),
    ({"tensorboard": "yes"}, "training.tensorboard"),
])
def test_bad_training_values_name_their_key(training, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        _config(**training)


def test_label_smoothing_is_refused_for_a_regression_task():
    with pytest.raises(ConfigError, match=r"^training.label_smoothing: applies to classification only"):
        from_dict({"source": "data.csv", "label": "y", "task": "regression", "training": {"label_smoothing": 0.1}})


def test_the_new_keys_read_from_yaml(tmp_path):
    from pipeline.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("source: data.csv\nlabel: y\ntraining:\n  clipnorm: 1e-1\n  label_smoothing: 0.1\n"
                    "  lr_schedule: step\n  lr_decay_epochs: 3\n  tensorboard: true\n")
    t = load_config(path).training
    assert (t.clipnorm, t.label_smoothing, t.lr_schedule, t.lr_decay_epochs, t.tensorboard) == (0.1, 0.1, "step", 3, True)


@pytest.mark.parametrize("builder, params, key", [
    ("mlp", {"l2": -1}, "model.params.l2"),
    ("mlp", {"l1": "a lot"}, "model.params.l1"),
    ("linear", {"l1": -0.1}, "model.params.l1"),
    ("tabular", {"l2": 2}, "model.params.l2"),
    ("tabular", {"dropout": 1.0}, "model.params.dropout"),
    ("mlp", {"batch_norm": "yes"}, "model.params.batch_norm"),
])
def test_bad_builder_regularization_names_its_key(builder, params, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        from_dict({"source": "data.csv", "label": "y", "model": {"builder": builder, "params": params}})


# -- the optimizer and its learning rate -----------------------------------------------------------------------

def test_the_optimizer_gets_the_clipping_and_the_weight_decay():
    opt = _optimizer(TrainingConfig(clipnorm=1.5, weight_decay=0.01), 100)
    assert isinstance(opt, keras.optimizers.AdamW) and opt.clipnorm == 1.5 and opt.clipvalue is None
    assert opt.weight_decay == pytest.approx(0.01)
    opt = _optimizer(TrainingConfig(optimizer="sgd", clipvalue=0.25), 100)
    assert isinstance(opt, keras.optimizers.SGD) and opt.clipvalue == 0.25 and opt.clipnorm is None
    assert _optimizer(TrainingConfig(), 100).clipnorm is None


def _lr_at(schedule, step: int) -> float:
    return float(schedule(step)) if callable(schedule) else float(schedule)


@pytest.mark.parametrize("training, expected", [
    # 100 steps of 10 per epoch, learning rate 0.1
    ({"lr_schedule": "constant"}, {0: 0.1, 50: 0.1, 100: 0.1}),
    ({"lr_schedule": "cosine"}, {0: 0.1, 50: 0.1 * (0.02 + 0.98 * 0.5), 100: 0.1 * 0.02}),
    ({"lr_schedule": "warmup_cosine", "warmup_fraction": 0.1}, {0: 0.0, 5: 0.05, 10: 0.1, 100: 0.1 * 0.02}),
    ({"lr_schedule": "exponential"}, {0: 0.1, 50: 0.1 * math.sqrt(0.1), 100: 0.01}),
    ({"lr_schedule": "exponential", "lr_decay_rate": 0.5, "lr_decay_epochs": 5}, {25: 0.1 * 0.5 ** 0.5, 50: 0.05, 100: 0.025}),
    ({"lr_schedule": "step", "lr_decay_rate": 0.5, "lr_decay_epochs": 2}, {0: 0.1, 19: 0.1, 20: 0.05, 45: 0.025}),
    ({"lr_schedule": "step"}, {29: 0.1, 30: 0.01, 60: 0.001}),  # default: every third of the planned epochs
    ({"lr_schedule": "reduce_on_plateau"}, {0: 0.1, 100: 0.1}),  # a callback lowers it
])
def test_the_schedules_learning_rate_at_step_k(training, expected):
    schedule = learning_rate(TrainingConfig(learning_rate=0.1, **training), total_steps=100, steps_per_epoch=10)
    for step, value in expected.items():
        assert _lr_at(schedule, step) == pytest.approx(value, rel=1e-5, abs=1e-9), step


def test_reduce_on_plateau_lowers_the_learning_rate_during_the_fit(tmp_path, tiny_frame):
    """With a rate too small to move the loss by 1e-4 an epoch, every epoch after the first is a plateau."""
    meta = fit_preprocessing(tiny_frame, SPEC)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    cfg = TrainingConfig(epochs=4, batch_size=12, learning_rate=1e-6, early_stopping_patience=10, optimizer="sgd",
                         lr_schedule="reduce_on_plateau", lr_plateau_patience=1, lr_decay_rate=0.5)
    train(tiny_frame, tiny_frame, meta, ModelConfig("mlp", {"hidden_units": [4]}), cfg, tmp_path / "t",
          callbacks=[Record()])
    assert seen[0] == pytest.approx(1e-6) and seen[-1] < seen[0]


# -- label smoothing -------------------------------------------------------------------------------------------

def test_label_smoothing_changes_the_loss_on_a_known_example():
    y, p = np.array([0, 2]), np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6]], dtype="float32")
    plain = float(keras.losses.SparseCategoricalCrossentropy()(y, p))
    assert float(smoothed_sparse_crossentropy(0.0, 3)(y, p)) == pytest.approx(plain, rel=1e-5)
    on, off = 0.9 + 0.1 / 3, 0.1 / 3  # 0.1 of the mass spread evenly over the 3 classes
    expected = -np.mean([on * np.log(0.8) + off * np.log(0.1) * 2,
                         off * np.log(0.2) * 2 + on * np.log(0.6)])
    assert float(smoothed_sparse_crossentropy(0.1, 3)(y, p)) == pytest.approx(expected, rel=1e-4)
    assert expected > plain


def test_a_model_trained_with_label_smoothing_fits_saves_and_loads(tmp_path, tiny_frame):
    meta = fit_preprocessing(tiny_frame, SPEC)
    model_cfg = ModelConfig("mlp", {"hidden_units": [4]})
    base = dict(epochs=2, batch_size=12, learning_rate=0.01, lr_schedule="constant")
    plain = train(tiny_frame, tiny_frame, meta, model_cfg, TrainingConfig(**base), tmp_path / "plain")
    smooth = train(tiny_frame, tiny_frame, meta, model_cfg, TrainingConfig(**base, label_smoothing=0.3),
                   tmp_path / "smooth")
    assert smooth.history["loss"][0] != pytest.approx(plain.history["loss"][0], rel=1e-3)
    load_model(smooth.model_path, meta)  # compile=False: the registered loss is not needed, nor in the way


# -- the builders' regularization ------------------------------------------------------------------------------

def _body(tiny_frame, builder, **params):
    return build_body(fit_preprocessing(tiny_frame, SPEC), ModelConfig(builder, params))


@pytest.mark.parametrize("builder", ["mlp", "linear", "tabular"])
def test_l1_l2_penalize_the_builders_weights(tiny_frame, builder):
    plain = _body(tiny_frame, builder)
    assert not [layer for layer in plain.layers if getattr(layer, "kernel_regularizer", None)]
    body = _body(tiny_frame, builder, l1=1e-3, l2=1e-2)
    regs = [layer.kernel_regularizer for layer in body.layers if getattr(layer, "kernel_regularizer", None)]
    assert regs and all((float(r.l1), float(r.l2)) == pytest.approx((1e-3, 1e-2)) for r in regs)
    assert len(body.losses) == len(regs)


def test_mlp_batch_norm(tiny_frame):
    kinds = [type(layer).__name__ for layer in _body(tiny_frame, "mlp", hidden_units=[4, 3], batch_norm=True).layers]
    assert kinds.count("BatchNormalization") == 2
    assert "BatchNormalization" not in [type(layer).__name__ for layer in _body(tiny_frame, "mlp").layers]


# -- TensorBoard -----------------------------------------------------------------------------------------------

def _events(path):
    return list(path.rglob("events.out.tfevents.*"))


def test_tensorboard_logs_are_written_under_the_run_dir(tmp_path, tiny_frame):
    meta = fit_preprocessing(tiny_frame, SPEC)
    model_cfg = ModelConfig("mlp", {"hidden_units": [4]})
    on = train(tiny_frame, tiny_frame, meta, model_cfg, TrainingConfig(epochs=2, batch_size=12, tensorboard=True),
               tmp_path / "on")
    assert on.tensorboard_dir == str(tmp_path / "on" / "tensorboard")
    train_scalars = _scalars(tmp_path / "on" / "tensorboard" / "train")
    assert train_scalars["epoch_loss"] == pytest.approx(on.history["loss"], rel=1e-5)
    assert len(train_scalars["epoch_learning_rate"]) == 2
    val_scalars = _scalars(tmp_path / "on" / "tensorboard" / "validation")
    assert val_scalars["epoch_loss"] == pytest.approx(on.history["val_loss"], rel=1e-5)
    off = train(tiny_frame, tiny_frame, meta, model_cfg, TrainingConfig(epochs=1, batch_size=12), tmp_path / "off")
    assert off.tensorboard_dir == "" and not (tmp_path / "off" / "tensorboard").exists()


def _fake_logs(path):
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(path / "train"))
    with writer.as_default():
        tf.summary.write("epoch_loss", tf.constant(1.0), step=0)
    writer.close()
    return path


def _scalars(path):
    import tensorflow as tf

    out = {}
    for file in _events(path):
        for event in tf.compat.v1.train.summary_iterator(str(file)):
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                out.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return out


def test_pipeline_tensorboard_finds_the_logs_of_a_run(pipeline_home, tmp_path, capsys):
    from pipeline import paths
    from pipeline.commands import tensorboard as tb

    run_id = "manual__2026-01-01T00:00:00+00:00"
    logs = _fake_logs(paths.run_dir(run_id) / "train" / "tensorboard")
    assert tb.find_logdir(run_id) == logs
    assert tb.find_logdir(str(logs)) == logs
    assert tb.find_logdir(None) == pipeline_home / "runs"
    assert tb.main(["--print-logdir", run_id]) == 0 and capsys.readouterr().out.strip() == str(logs)
    assert tb.main(["no-such-run"]) == 1 and "no-such-run" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert tb.main([str(tmp_path / "empty")]) == 1


def test_pipeline_tensorboard_downloads_an_mlflow_runs_logs(pipeline_home, tmp_path):
    import mlflow

    from pipeline import tracking
    from pipeline.commands import tensorboard as tb

    tracking.configure()
    parent = tracking.parent_run("tb", "training_pipeline", "manual__1")
    with tracking.stage_run(parent, "train") as run:
        mlflow.log_artifacts(str(_fake_logs(tmp_path / "logs")), "tensorboard")
    for given in (run.info.run_id, parent):  # the train stage's run, or the DAG run's
        found = tb.find_logdir(given)
        assert found.is_relative_to(pipeline_home) and _events(found / "train")
    with tracking.stage_run(parent, "evaluate") as other:
        pass
    with pytest.raises(tb.NoLogs, match="no 'tensorboard' artifacts"):
        tb.find_logdir(other.info.run_id)


def test_pipeline_tensorboard_runs_tensorboard_on_127_0_0_1(pipeline_home, monkeypatch):
    from pipeline import cli, paths
    from pipeline.commands import tensorboard as tb

    logs = _fake_logs(paths.run_dir("r1") / "train" / "tensorboard")
    calls = []
    monkeypatch.setattr(tb.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(tb.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert cli.main(["tensorboard", "r1", "--port", "6123"]) == 0
    cmd = calls[0]
    assert cmd[1:3] == ["-m", "tensorboard.main"]
    assert cmd[cmd.index("--logdir") + 1] == str(logs)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "6123"
    monkeypatch.setattr(tb.importlib.util, "find_spec", lambda name: None)
    assert tb.main(["r1"]) == 1  # not installed: says so, and where the logs are


def test_the_train_stage_logs_the_tensorboard_logs_to_mlflow(pipeline_home, tmp_path, penguins):
    """Through the pipeline's stages: the logs are under the run's directory and in the train stage's MLflow
    run, where ``pipeline tensorboard <DAG run's MLflow run id>`` finds them."""
    from pipeline import paths, tasks
    from pipeline.commands import tensorboard as tb

    source = tmp_path / "penguins.csv"
    penguins.to_csv(source, index=False)
    conf = tmp_path / "c.yaml"
    conf.write_text(f"name: tb\nsource: {source}\nlabel: species\nmodel:\n  builder: linear\n"
                    "training:\n  epochs: 1\n  batch_size: 64\n  tensorboard: true\n  clipnorm: 1.0\n")
    params, ctx = {"config": str(conf)}, tasks.RunContext("training_pipeline", "manual__tb")
    ingested = tasks.ingest_task(params, ctx)
    validated = tasks.validate_task(params, ctx, ingested)
    splits = tasks.split_task(params, ctx, ingested, validated)
    preprocessed = tasks.preprocess_task(params, ctx, splits, validated)
    tasks.train_task(params, ctx, splits, preprocessed)
    in_run_dir = paths.run_dir(ctx.run_id) / "train" / "tensorboard"
    assert _scalars(in_run_dir / "train")["epoch_loss"] and tb.find_logdir(ctx.run_id) == in_run_dir
    downloaded = tb.find_logdir(ingested["parent_run_id"])
    assert downloaded != in_run_dir and _scalars(downloaded / "train")["epoch_loss"]
