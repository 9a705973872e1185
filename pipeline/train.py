"""Train: build the model named in the config (or the user's module) on the processed features and fit it.

Input comes through ``tf.data``, the preprocessor mapped over it on the host; the sizes of the fit (batch,
epochs, patience) follow the data unless the config sets them (:func:`plan`); AdamW with a warmup-then-cosine
learning rate by default (or cosine, exponential, step, reduce-on-plateau, constant), gradient clipping and
label smoothing when configured, TensorBoard logs when asked; imbalanced classes get class weights; early
stopping restores the best weights; ``BackupAndRestore`` checkpoints every epoch into the run's work directory
so that a retried Airflow task resumes where it stopped. The ``tf.distribute`` strategy is chosen from the
hardware: TPU, several GPUs (mirrored), one GPU, or CPU.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pipeline.config import ModelConfig, TrainingConfig
from pipeline.preprocess import PreprocessMeta

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
    batch_size: int = 0
    planned_epochs: int = 0
    tensorboard_dir: str = ""  # the TensorBoard logs (training.tensorboard), "" when off

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_strategy(distribution: str = "auto") -> tuple["tf.distribute.Strategy", str]:
    """The distribution strategy for this machine (``training.distribution``). ``auto``: TPU if one is
    reachable, else mirrored over several GPUs, one GPU, or the default (CPU) strategy. ``mirrored``:
    MirroredStrategy over every GPU, else over every logical CPU device (one unless the process configured
    more with ``tf.config.set_logical_device_configuration``, as the tests do)."""
    import tensorflow as tf

    if distribution == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        kind = "gpu" if devices[0].device_type == "GPU" else "cpu"
        return tf.distribute.MirroredStrategy([d.name for d in devices]), f"mirrored:{len(devices)}{kind}"

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
    if not mixed_precision or kind.endswith("cpu"):  # "cpu", "mirrored:2cpu"
        return "float32"
    return "mixed_bfloat16" if kind == "tpu" else "mixed_float16"


def build_body(meta: PreprocessMeta, model_cfg: ModelConfig) -> "keras.Model":
    """Processed features -> the configured builder (or the user's module) -> the task's output: the model that
    is fitted; the preprocessor runs in front of it in ``tf.data`` (and inside the exported model)."""
    import keras

    mspec = meta.model_spec()
    inputs = mspec.inputs()
    if mspec.images and not model_cfg.module and model_cfg.builder == ModelConfig().builder and not model_cfg.params:
        # the default builder reads tables; data with images gets the image one unless the config chose
        import dataclasses

        model_cfg = dataclasses.replace(model_cfg, builder="cnn")
        print("train: the data has image column(s): model builder 'cnn' (model.builder chooses another)")
    out = model_cfg.build_fn()(inputs, mspec, **dict(model_cfg.params))
    expected = (mspec.n_outputs,) if mspec.task == "classification" else (1,)
    if tuple(out.shape[1:]) != expected:
        raise ValueError(f"model builder {model_cfg.label} returned an output of shape {tuple(out.shape)}; "
                         f"the {mspec.task} head must be (batch, {expected[0]})")
    return keras.Model(inputs, out, name=f"{'module' if model_cfg.module else model_cfg.builder}_{mspec.task}")


@dataclass(frozen=True)
class Plan:
    """The fit's sizes, decided from the data where the config leaves them empty."""

    batch_size: int
    epochs: int
    steps_per_epoch: int
    patience: int


def plan(rows: int, cfg: TrainingConfig) -> Plan:
    import math

    from pipeline.preprocess import auto_batch_size

    batch = cfg.batch_size or auto_batch_size(rows)
    steps = max(1, math.ceil(rows / batch))
    epochs = cfg.epochs or int(min(cfg.max_epochs, max(cfg.min_epochs, round(cfg.step_budget / steps))))
    # The validation loss is noisy while the learning rate is high (warmup, then the top of the cosine): a short
    # patience stops the fit there, before the decay it was planned with (randhie: R² 0.13 at patience 6, 0.19 at 10).
    patience = cfg.early_stopping_patience or max(10, epochs // 5)
    return Plan(batch, epochs, steps, patience)


def learning_rate(cfg: TrainingConfig, total_steps: int, steps_per_epoch: int = 1):
    """The optimizer's learning rate: a number (``constant``, ``reduce_on_plateau``: the callback lowers it) or a
    Keras schedule of the optimizer step (``training.lr_schedule``)."""
    import keras

    lr, schedules = cfg.learning_rate, keras.optimizers.schedules
    if cfg.lr_schedule in ("warmup_cosine", "cosine"):
        warmup = int(total_steps * cfg.warmup_fraction) if cfg.lr_schedule == "warmup_cosine" else 0
        return schedules.CosineDecay(
            0.0 if warmup else lr, decay_steps=max(1, total_steps - warmup), alpha=0.02,
            warmup_target=lr if warmup else None, warmup_steps=warmup)
    if cfg.lr_schedule in ("exponential", "step"):
        epochs = max(1, total_steps // max(1, steps_per_epoch))
        every = cfg.lr_decay_epochs or (epochs if cfg.lr_schedule == "exponential" else max(1, epochs // 3))
        return schedules.ExponentialDecay(lr, decay_steps=max(1, every * steps_per_epoch),
                                          decay_rate=cfg.lr_decay_rate, staircase=cfg.lr_schedule == "step")
    return lr


def _optimizer(cfg: TrainingConfig, total_steps: int, steps_per_epoch: int = 1):
    import keras

    lr = learning_rate(cfg, total_steps, steps_per_epoch)
    clip = {k: getattr(cfg, k) for k in ("clipnorm", "clipvalue") if getattr(cfg, k) is not None}
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=cfg.weight_decay, **clip)
    cls = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}[cfg.optimizer]
    return cls(learning_rate=lr, **clip)


_LOSS_CLASSES: dict[str, type] = {}


def smoothed_sparse_crossentropy(label_smoothing: float, n_classes: int):
    """Cross-entropy of integer labels with label smoothing: Keras' SparseCategoricalCrossentropy has no
    ``label_smoothing``, so the labels are made one-hot inside the loss (registered, so a saved model loads)."""
    import keras

    if "cls" not in _LOSS_CLASSES:
        @keras.saving.register_keras_serializable(package="pipeline")
        class SmoothedSparseCrossentropy(keras.losses.Loss):
            def __init__(self, label_smoothing=0.0, n_classes=2, name="smoothed_sparse_crossentropy", **kwargs):
                super().__init__(name=name, **kwargs)
                self.label_smoothing, self.n_classes = float(label_smoothing), int(n_classes)

            def call(self, y_true, y_pred):
                ops = keras.ops
                y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
                one_hot = ops.one_hot(y_true, self.n_classes, dtype=y_pred.dtype)
                return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

            def get_config(self):
                return {**super().get_config(), "label_smoothing": self.label_smoothing, "n_classes": self.n_classes}

        _LOSS_CLASSES["cls"] = SmoothedSparseCrossentropy
    return _LOSS_CLASSES["cls"](label_smoothing=label_smoothing, n_classes=n_classes)


TENSORBOARD_DIR = "tensorboard"  # under the training directory, and the MLflow artifact directory


def _tensorboard(log_dir: Path):
    """A callback writing each epoch's metrics and learning rate as TensorBoard scalars, laid out as Keras'
    ``TensorBoard`` callback does (``train/`` and ``validation/``, tags ``epoch_<metric>``). Written with
    TensorFlow's own summary ops: Keras' callback needs the ``tensorboard`` package even to write scalars, which
    only viewing them should need (``pipeline tensorboard``)."""
    import keras
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()

    class EpochScalars(keras.callbacks.Callback):
        writers: dict = {}

        def on_train_begin(self, logs=None):
            self.writers = {}

        def _write(self, split: str, tag: str, value: float, step: int) -> None:
            if split not in self.writers:
                self.writers[split] = tf.summary.create_file_writer(str(log_dir / split))
            with self.writers[split].as_default():
                tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step, metadata=metadata)

        def on_epoch_end(self, epoch, logs=None):
            for key, value in (logs or {}).items():
                split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
                if name != "learning_rate":
                    self._write(split, f"epoch_{name}", value, epoch)
            lr = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            self._write("train", "epoch_learning_rate", lr, epoch)
            for writer in self.writers.values():
                writer.flush()

        def on_train_end(self, logs=None):
            for writer in self.writers.values():
                writer.close()
            self.writers = {}

    return EpochScalars()


def _time_budget(minutes: float):
    """A callback that stops the fit at the end of the epoch during which ``minutes`` ran out (early stopping
    then restores the best weights, as for any stop)."""
    import time

    import keras

    class TimeBudget(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start = time.monotonic()
            self.stopped = False

        def on_epoch_end(self, epoch, logs=None):
            if time.monotonic() - self.start > minutes * 60:
                self.model.stop_training = True
                if not self.stopped:
                    print(f"train: training.max_minutes ({minutes}) reached after epoch {epoch + 1}; stopping")
                self.stopped = True

    return TimeBudget()


def _release_each_epoch():
    """A callback handing freed memory back to the OS after every epoch: without it the process grew by about
    30 MB an epoch on the 303k-row flights table (glibc keeping what each epoch's batches freed), with it it stays
    flat (``pipeline.memory``)."""
    import keras

    from pipeline import memory

    class ReleaseMemory(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            memory.trim()  # not a garbage collection: that takes ~0.3 s in a process holding Airflow and MLflow

    return ReleaseMemory()


def train(train_df: "pd.DataFrame | str | Path", val_df: "pd.DataFrame | str | Path", meta: PreprocessMeta,
          model_cfg: ModelConfig, cfg: TrainingConfig, work_dir: str | Path, seed: int = 42,
          callbacks: Sequence["keras.callbacks.Callback"] = ()) -> TrainResult:
    """Fit the model and save it to ``work_dir/model.keras`` (the body: processed features in).

    Args:
        train_df, val_df: the training and validation splits (raw feature columns plus the label): frames in
            memory, or Parquet sources (a file or a directory of shards), read record batch by record batch
            (:func:`pipeline.datasets.parquet_dataset`), never whole.
        meta: the encodings fitted on the training split (the preprocessor is rebuilt from them).
        work_dir: the run-keyed training directory; ``backup/`` in it holds the resume checkpoint.
        callbacks: extra Keras callbacks (the tracking layer passes its per-epoch MLflow logger here).
    """
    import keras

    from pipeline.preprocess import build_preprocessor, class_weights

    if cfg.distribution == "multi_worker":
        from pipeline.multi_worker import train_multi_worker

        return train_multi_worker(train_df, val_df, meta, model_cfg, cfg, work_dir, seed, callbacks)
    keras.utils.set_random_seed(seed)
    strategy, kind = select_strategy(cfg.distribution)
    policy = precision_policy(kind, cfg.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    work_dir = Path(work_dir)
    backup_dir = work_dir / "backup"
    resumed = _backup_epoch(backup_dir)
    train_rows = _rows(train_df)
    sizes = plan(train_rows, cfg)

    with strategy.scope():
        model = compiled_body(meta, model_cfg, cfg, sizes)

    by_class = class_weights(meta, cfg.class_weight)
    preprocessor = build_preprocessor(meta)
    has_val = _rows(val_df) > 0
    history_cb = keras.callbacks.History()
    tensorboard_dir = work_dir / TENSORBOARD_DIR if cfg.tensorboard else None
    fit_callbacks = standard_callbacks(cfg, sizes, has_val, backup_dir, tensorboard_dir) + [history_cb, *callbacks]
    train_ds = fit_dataset(train_df, meta, preprocessor, sizes.batch_size, cfg, shuffle=True, seed=seed,
                           class_weight=by_class)
    val_ds = fit_dataset(val_df, meta, preprocessor, 1024, cfg) if has_val else None
    print(f"train: {train_rows} rows, batch size {sizes.batch_size}, up to {sizes.epochs} epochs "
          f"({sizes.steps_per_epoch} steps each), early stopping patience {sizes.patience}"
          + (f", class weights {by_class}" if by_class else ""))
    from models.image import fine_tune_backbone

    backbone = fine_tune_backbone(model)
    if backbone is None:
        model.fit(train_ds, validation_data=val_ds, epochs=sizes.epochs, callbacks=fit_callbacks, verbose=2,
                  shuffle=False)
    else:
        _fit_fine_tuning(model, backbone, meta, cfg, sizes, strategy, train_ds, val_ds, work_dir, resumed,
                         fit_callbacks, [history_cb, *callbacks, _release_each_epoch()])
    history = {k: [float(v) for v in vs] for k, vs in history_cb.history.items()}
    return save_trained(model, meta, cfg, work_dir, history, "val_loss" if has_val else "loss", by_class,
                        kind, policy, resumed, sizes, tensorboard_dir)


FROZEN_BACKUP_DIR = "backup_frozen"   # the resume checkpoint of a transfer model's frozen phase


def _fit_fine_tuning(model: "keras.Model", backbone: "keras.layers.Layer", meta: PreprocessMeta,
                     cfg: TrainingConfig, sizes: Plan, strategy, train_ds, val_ds, work_dir: Path, resumed: int,
                     fit_callbacks: list, phase_one_callbacks: list) -> None:
    """Freeze, then fine-tune (``models.image.build_transfer``): the backbone frozen for its ``freeze_epochs``
    while the new head learns, then its last ``layers`` unfrozen (batch normalisation stays frozen) and the fit
    goes on from that epoch, recompiled with the learning rate times ``learning_rate``. Recompiling is what
    Keras needs for a change of ``trainable`` to take effect, so the two phases are two ``fit`` calls; the
    frozen phase has its own resume checkpoint, and a resumed run whose fine-tuning phase had checkpointed
    skips it."""
    import dataclasses

    from models.image import set_backbone_trainable

    plan_ = backbone.fine_tune
    freeze = min(int(plan_["freeze_epochs"]), sizes.epochs)
    steps = sizes.steps_per_epoch
    if plan_["layers"] == 0 or freeze >= sizes.epochs:  # frozen throughout: one fit with the usual callbacks
        set_backbone_trainable(backbone, False)
        _recompile(model, meta, cfg, sizes.epochs * steps, steps, strategy)
        model.fit(train_ds, validation_data=val_ds, epochs=sizes.epochs, callbacks=fit_callbacks, verbose=2,
                  shuffle=False)
        return
    if freeze and resumed < freeze:
        import keras

        set_backbone_trainable(backbone, False)
        _recompile(model, meta, cfg, freeze * steps, steps, strategy)
        print(f"train: backbone frozen for {freeze} epoch(s) while the head learns")
        backup = keras.callbacks.BackupAndRestore(str(work_dir / FROZEN_BACKUP_DIR), double_checkpoint=True)
        model.fit(train_ds, validation_data=val_ds, epochs=freeze, callbacks=[backup, *phase_one_callbacks],
                  verbose=2, shuffle=False)
    trainable = set_backbone_trainable(backbone, True, plan_["layers"])
    tuned = dataclasses.replace(cfg, learning_rate=cfg.learning_rate * plan_["learning_rate"])
    _recompile(model, meta, tuned, (sizes.epochs - freeze) * steps, steps, strategy)
    print(f"train: fine-tuning {trainable} backbone layer(s) from epoch {freeze + 1}, learning rate "
          f"{tuned.learning_rate:g}")
    model.fit(train_ds, validation_data=val_ds, initial_epoch=freeze, epochs=sizes.epochs, callbacks=fit_callbacks,
              verbose=2, shuffle=False)


def _recompile(model: "keras.Model", meta: PreprocessMeta, cfg: TrainingConfig, total_steps: int,
               steps_per_epoch: int, strategy) -> None:
    loss, metrics = _loss_and_metrics(meta, cfg)
    with strategy.scope():
        model.compile(optimizer=_optimizer(cfg, max(1, total_steps), steps_per_epoch), loss=loss, metrics=metrics)


def _loss_and_metrics(meta: PreprocessMeta, cfg: TrainingConfig, quiet: bool = True) -> tuple[Any, list]:
    import keras

    if meta.feature_spec.task == "classification":
        loss, metrics = "sparse_categorical_crossentropy", ["accuracy"]
        if cfg.label_smoothing:
            loss = smoothed_sparse_crossentropy(cfg.label_smoothing, len(meta.class_names))
        return loss, metrics
    if cfg.label_smoothing and not quiet:
        print("train: training.label_smoothing ignored: the task is regression")
    return "mse", [keras.metrics.RootMeanSquaredError(name="rmse")]


def compiled_body(meta: PreprocessMeta, model_cfg: ModelConfig, cfg: TrainingConfig, sizes: Plan) -> "keras.Model":
    """The body compiled with the configured loss, metrics and optimizer (call it in the strategy's scope)."""
    model = build_body(meta, model_cfg)
    loss, metrics = _loss_and_metrics(meta, cfg, quiet=False)
    model.compile(optimizer=_optimizer(cfg, sizes.epochs * sizes.steps_per_epoch, sizes.steps_per_epoch),
                  loss=loss, metrics=metrics)
    return model


def standard_callbacks(cfg: TrainingConfig, sizes: Plan, has_val: bool, backup_dir: Path | None,
                       tensorboard_dir: Path | None) -> list["keras.callbacks.Callback"]:
    """Early stopping (best weights restored), the resume checkpoint (none when ``backup_dir`` is None), the
    time budget, the plateau schedule, TensorBoard scalars and the per-epoch memory release, as configured."""
    import keras

    monitor = "val_loss" if has_val else "loss"
    return [
        keras.callbacks.EarlyStopping(monitor=monitor, patience=sizes.patience, restore_best_weights=True),
        # double_checkpoint: the checkpoint before the last is kept, and loaded when the last one is unreadable
        # (its writer killed half way: a worker lost mid-save would otherwise fail every retry)
        *([keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True)] if backup_dir else []),
        *([_time_budget(cfg.max_minutes)] if cfg.max_minutes else []),
        *([keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=cfg.lr_decay_rate,
                                             patience=cfg.lr_plateau_patience or max(1, sizes.patience // 2))]
          if cfg.lr_schedule == "reduce_on_plateau" else []),
        *([_tensorboard(tensorboard_dir)] if tensorboard_dir else []),
        _release_each_epoch(),
    ]


def save_trained(model: "keras.Model", meta: PreprocessMeta, cfg: TrainingConfig, work_dir: Path,
                 history: dict[str, list[float]], monitor: str, by_class: dict[int, float] | None, kind: str,
                 policy: str, resumed: int, sizes: Plan, tensorboard_dir: Path | None) -> TrainResult:
    """Save the fitted body (with the prior correction of class weights) to ``work_dir/model.keras`` and its
    ``train_result.json``, both atomically; the resume checkpoint is removed once the model is saved."""
    import keras
    import numpy as np

    losses = history.get(monitor, [])
    work_dir.mkdir(parents=True, exist_ok=True)
    model_path = work_dir / MODEL_FILE
    tmp_path = work_dir / f".{MODEL_FILE}.tmp.keras"
    if by_class is not None and cfg.class_weight == "auto":
        from pipeline.encoders import layers

        weights_in_order = [by_class[i] for i in range(len(meta.class_names))]
        corrected = layers()["PriorCorrection"](weights_in_order, name="prior_correction")(model.outputs[0])
        model = keras.Model(model.input, corrected, name=model.name)
    model.save(tmp_path)
    tmp_path.replace(model_path)
    shutil.rmtree(work_dir / "backup", ignore_errors=True)
    shutil.rmtree(work_dir / FROZEN_BACKUP_DIR, ignore_errors=True)
    keras.mixed_precision.set_global_policy("float32")
    result = TrainResult(str(model_path), resumed + len(losses), resumed + int(np.argmin(losses)) + 1 if losses else 0,
                         history, kind, policy, resumed, sizes.batch_size, sizes.epochs,
                         str(tensorboard_dir) if tensorboard_dir else "")
    write_result(result, work_dir)
    return result


def write_result(result: TrainResult, work_dir: Path) -> None:
    tmp_json = work_dir / ".train_result.json.tmp"
    tmp_json.write_text(json.dumps(result.to_dict(), indent=2))
    tmp_json.replace(work_dir / "train_result.json")


def _rows(data: "pd.DataFrame | str | Path") -> int:
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return len(data)
    from pipeline.datasets import parquet_rows

    return parquet_rows(data)


def fit_dataset(data: "pd.DataFrame | str | Path", meta: PreprocessMeta, preprocessor: "keras.Model",
                batch_size: int, cfg: TrainingConfig, shuffle: bool = False, seed: int = 0,
                class_weight: dict[int, float] | None = None) -> "tf.data.Dataset":
    """The ``tf.data`` pipeline the fit reads: from a frame (``processed_dataset``) or from Parquet
    (``parquet_dataset``: processed rows kept in memory up to ``training.in_memory_mb``, streamed beyond)."""
    import numpy as np
    import pandas as pd

    from pipeline.preprocess import label_array, processed_dataset

    if isinstance(data, pd.DataFrame):
        weights = None
        if class_weight is not None:
            y = label_array(data, meta)
            weights = np.array([class_weight.get(int(c), 1.0) for c in y], dtype=np.float32)
        return processed_dataset(data, meta, preprocessor, batch_size, shuffle=shuffle, seed=seed, weights=weights)
    from pipeline.datasets import parquet_dataset

    return parquet_dataset(data, meta, preprocessor, batch_size, shuffle=shuffle, seed=seed,
                           class_weight=class_weight, shuffle_buffer=cfg.shuffle_buffer,
                           cache_bytes=cfg.in_memory_mb << 20)


def _backup_epoch(backup_dir: Path) -> int:
    """How many epochs a previous attempt completed (0 when starting fresh), from the checkpoint Keras'
    BackupAndRestore will resume from: the last one, or the one before when the last is unreadable (an attempt
    killed while writing it). With neither readable, the backup is removed: the fit starts over instead of
    failing on every retry."""
    weights = backup_dir / "latest.weights.h5"
    meta = backup_dir / "training_metadata.json"
    for weights_file, meta_file in ((weights, meta), (Path(f"{weights}.bkp"), Path(f"{meta}.bkp"))):
        epoch = _checkpoint_epoch(weights_file, meta_file)
        if epoch is not None:
            return epoch
    if backup_dir.exists():
        print(f"train: the checkpoint in {backup_dir} is unreadable (an attempt killed while writing it): "
              "starting over")
        shutil.rmtree(backup_dir)
    return 0


def _checkpoint_epoch(weights: Path, meta: Path) -> int | None:
    """The next epoch a checkpoint records, None when its weights or metadata cannot be read in full."""
    import h5py

    try:
        epoch = int(json.loads(meta.read_text())["epoch"])
        with h5py.File(weights, "r") as f:  # every array read: a file cut short can still open
            f.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return epoch


_LOADED: dict[tuple, "keras.Model"] = {}


def custom_objects(model_cfg: ModelConfig | None) -> dict[str, Any]:
    """The Keras classes a user's module defines at its top level (layers, losses, ...), so a model built with
    them loads back from its ``.keras`` file in a later task; classes registered with
    ``keras.saving.register_keras_serializable`` load anyway."""
    import inspect
    import sys

    if model_cfg is None or not model_cfg.module:
        return {}
    module = sys.modules.get(model_cfg.build_fn().__module__)
    return {name: obj for name, obj in vars(module).items()
            if inspect.isclass(obj) and getattr(obj, "__module__", None) == module.__name__}


def load_model(path: str | Path, meta: PreprocessMeta, model_cfg: ModelConfig | None = None) -> "keras.Model":
    """The served model: the preprocessor rebuilt from ``meta`` chained with the trained body saved at ``path``
    (raw features in, label units out); ``model_cfg`` names the user's module whose classes the body may use.
    The last one loaded is kept for as long as the file is unchanged (same size and modification time): when
    the stages run in one process (``pipeline train``), evaluate and export share one load. Callers only predict
    with it and export it; they must not change it."""
    import keras

    from pipeline.encoders import layers
    from pipeline.preprocess import full_model

    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, json.dumps(asdict(meta), sort_keys=True))
    if key not in _LOADED:
        layers()
        body = keras.models.load_model(path, compile=False, custom_objects=custom_objects(model_cfg))
        model = full_model(meta, body)  # compile=False: no optimizer state in the export
        _LOADED.clear()
        _LOADED[key] = model
    return _LOADED[key]


def release_loaded_model() -> None:
    """Drop the model :func:`load_model` keeps (export is its last user in a run)."""
    _LOADED.clear()
