"""Train: build the model named in the config on top of the adapted preprocessor and fit it.

Input comes through ``tf.data``; early stopping restores the best weights; ``BackupAndRestore`` checkpoints
every epoch into the run's work directory so that a retried Airflow task resumes where it stopped. The
``tf.distribute`` strategy is chosen from the hardware: TPU, several GPUs (mirrored), one GPU, or CPU.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pipeline.config import ModelConfig, TrainingConfig
from pipeline.preprocess import PreprocessMeta, load_preprocessor, make_dataset, model_inputs

if TYPE_CHECKING:
    import keras
    import pandas as pd
    import tensorflow as tf

MODEL_FILE = "model.keras"


@dataclass(frozen=True)
class TrainResult:
    model_path: str
    epochs_run: int
    best_epoch: int
    history: dict[str, list[float]]
    strategy: str
    precision_policy: str
    resumed_from_epoch: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_strategy() -> tuple["tf.distribute.Strategy", str]:
    """The distribution strategy for this machine: TPU if one is reachable, else mirrored over several GPUs,
    one GPU, or the default (CPU) strategy."""
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver), "tpu"
    except (ValueError, RuntimeError, tf.errors.NotFoundError, tf.errors.UnimplementedError):
        pass
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy(), f"mirrored:{len(gpus)}gpu"
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy("/gpu:0"), "gpu"
    return tf.distribute.get_strategy(), "cpu"


def precision_policy(kind: str, mixed_precision: bool) -> str:
    """Mixed precision only where it pays: float16 on GPUs, bfloat16 on TPUs; CPUs stay float32."""
    if not mixed_precision or kind == "cpu":
        return "float32"
    return "mixed_bfloat16" if kind == "tpu" else "mixed_float16"


def build_model(preprocessor: "keras.Model", meta: PreprocessMeta, model_cfg: ModelConfig) -> "keras.Model":
    """Raw feature inputs -> preprocessor -> the configured builder's body -> task head (in label units)."""
    import keras

    from models import get_builder

    spec = meta.feature_spec
    inputs = model_inputs(spec)
    x = preprocessor(inputs)
    n_outputs = len(meta.class_names) if spec.task == "classification" else 1
    out = get_builder(model_cfg.builder)(x, task=spec.task, n_outputs=n_outputs, **dict(model_cfg.params))
    if spec.task == "regression":
        # The body predicts a standardized value; rescaling inside the model keeps the endpoint in label units.
        out = keras.layers.Rescaling(meta.label_std, offset=meta.label_mean, dtype="float32", name="value")(out)
        out = keras.layers.Reshape((), name="value_flat")(out)
    return keras.Model(inputs, out, name=f"{model_cfg.builder}_{spec.task}")


def _optimizer(cfg: TrainingConfig):
    import keras

    cls = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "sgd": keras.optimizers.SGD,
           "rmsprop": keras.optimizers.RMSprop}[cfg.optimizer]
    return cls(learning_rate=cfg.learning_rate)


def train(train_df: "pd.DataFrame", val_df: "pd.DataFrame", preprocessor_path: str, meta: PreprocessMeta,
          model_cfg: ModelConfig, cfg: TrainingConfig, work_dir: str | Path, seed: int = 42,
          callbacks: Sequence["keras.callbacks.Callback"] = ()) -> TrainResult:
    """Fit the model and save it to ``work_dir/model.keras``.

    Args:
        train_df, val_df: the training and validation splits (raw feature columns plus the label).
        preprocessor_path: the preprocessor adapted on ``train_df``.
        work_dir: the run-keyed training directory; ``backup/`` in it holds the resume checkpoint.
        callbacks: extra Keras callbacks (the tracking layer passes its per-epoch MLflow logger here).
    """
    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    strategy, kind = select_strategy()
    policy = precision_policy(kind, cfg.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    work_dir = Path(work_dir)
    backup_dir = work_dir / "backup"
    resumed = _backup_epoch(backup_dir)

    with strategy.scope():
        model = build_model(load_preprocessor(preprocessor_path), meta, model_cfg)
        if meta.feature_spec.task == "classification":
            loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
        else:
            loss, metrics = "mse", ["mae"]
        model.compile(optimizer=_optimizer(cfg), loss=loss, metrics=metrics)

    has_val = len(val_df) > 0
    monitor = "val_loss" if has_val else "loss"
    history_cb = keras.callbacks.History()
    fit_callbacks = [
        keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.early_stopping_patience, restore_best_weights=True),
        keras.callbacks.BackupAndRestore(str(backup_dir)),
        history_cb,
        *callbacks,
    ]
    train_ds = make_dataset(train_df, meta, cfg.batch_size, shuffle=True, seed=seed)
    val_ds = make_dataset(val_df, meta, cfg.batch_size) if has_val else None
    model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=fit_callbacks, verbose=2)

    history = {k: [float(v) for v in vs] for k, vs in history_cb.history.items()}
    losses = history.get(monitor, [])
    work_dir.mkdir(parents=True, exist_ok=True)
    model_path = work_dir / MODEL_FILE
    model.save(model_path)
    shutil.rmtree(backup_dir, ignore_errors=True)
    keras.mixed_precision.set_global_policy("float32")
    result = TrainResult(str(model_path), resumed + len(losses), resumed + int(np.argmin(losses)) + 1 if losses else 0,
                         history, kind, policy, resumed)
    (work_dir / "train_result.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _backup_epoch(backup_dir: Path) -> int:
    """How many epochs a previous attempt completed (0 when starting fresh), from Keras' backup metadata,
    which records the next epoch to run."""
    meta = backup_dir / "training_metadata.json"
    try:
        return int(json.loads(meta.read_text()).get("epoch", 0))
    except (OSError, ValueError):
        return 0


_LOADED: dict[tuple, "keras.Model"] = {}


def load_model(path: str | Path) -> "keras.Model":
    """The trained model saved at ``path``. The last one loaded is kept for as long as the file is unchanged
    (same size and modification time): when the stages run in one process (``pipeline train``), evaluate and
    export share one load. Callers only predict with it and export it; they must not change it."""
    import keras

    from pipeline.preprocess import fill_missing_layer

    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _LOADED:
        fill_missing_layer()
        model = keras.models.load_model(path)
        _LOADED.clear()
        _LOADED[key] = model
    return _LOADED[key]
