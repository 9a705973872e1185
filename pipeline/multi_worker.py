"""Multi-worker training: ``training.distribution: multi_worker`` with ``training.workers: N``.

``MultiWorkerMirroredStrategy`` over N processes, each one replica per device it has, all-reducing the gradients
of every step. The train task (:func:`train_multi_worker`) writes what the workers need to a spec file in the
run's training directory, starts N worker processes on 127.0.0.1 (``python -m pipeline.multi_worker SPEC I``,
``TF_CONFIG`` naming all of them), relays the chief's epochs to its own callbacks (the MLflow logger, the
progress view, a tuning pruner) and waits. Worker 0 is the chief: it writes the resume checkpoint every epoch
and saves the model. When any worker dies the task stops the others and fails, naming the worker and the end of
its log; the retry resumes every worker from the chief's last checkpoint. In production the same module runs as
the pods of an indexed Kubernetes Job (docs/production.md): ``TF_CONFIG`` set by the Job, or built from
``PIPELINE_WORKER_HOSTS`` and ``JOB_COMPLETION_INDEX``; the training directory must then be on a volume all
pods share.

Keras 3's ``Model.fit`` does not run under this strategy (keras-team/keras#20585: "Attempt to convert a value
(PerReplica...)"), so the workers run their own loop (:func:`distributed_fit`): the model is the compiled body
of ``pipeline.train``, the step is Keras' own (``compute_loss`` on the forward pass, the optimizer's
``apply_gradients``, which all-reduces across replicas), and the epoch's callbacks are ``pipeline.train``'s
(early stopping with the best weights restored, the ``BackupAndRestore`` checkpoint, the time budget, the
plateau schedule, TensorBoard) driven through ``keras.callbacks.CallbackList``. The input: each worker builds
the same shuffled batches of ``batch_size / replicas`` rows and keeps every N-th (``Dataset.shard``), so a step
consumes one global batch of ``batch_size`` rows; the validation loss is computed by every worker on the whole
validation split (the same weights give the same value, so every worker takes the same early-stopping
decision; a stop any one worker asks for, such as the time budget's, is agreed by an all-reduce).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from pipeline.config import ModelConfig, TrainingConfig
from pipeline.preprocess import PreprocessMeta

if TYPE_CHECKING:
    import keras
    import pandas as pd
    import tensorflow as tf

    from pipeline.train import TrainResult

DIR = "multi_worker"   # under the run's training directory
SPEC, EPOCHS, STOP = "spec.json", "epochs.jsonl", "stop"
_TF_NOISE = ("WARNING: All log messages", "I0000", "W0000", "E0000", "To enable the following")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` now (bound to port 0 together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(hosts: Sequence[str], index: int) -> dict:
    """The ``TF_CONFIG`` of worker ``index`` in a cluster of ``hosts`` (``host:port`` each; 0 is the chief)."""
    return {"cluster": {"worker": list(hosts)}, "task": {"type": "worker", "index": int(index)}}


def cluster_from_environment() -> None:
    """Set ``TF_CONFIG`` from ``PIPELINE_WORKER_HOSTS`` (comma-separated ``host:port``) and the Kubernetes Job's
    ``JOB_COMPLETION_INDEX`` when it is not set already (an indexed Job gives each pod its index)."""
    if os.environ.get("TF_CONFIG") or not os.environ.get("PIPELINE_WORKER_HOSTS"):
        return
    hosts = [h.strip() for h in os.environ["PIPELINE_WORKER_HOSTS"].split(",") if h.strip()]
    index = os.environ.get("JOB_COMPLETION_INDEX")
    if index is None:
        raise RuntimeError("PIPELINE_WORKER_HOSTS is set but JOB_COMPLETION_INDEX is not: the worker's index "
                           "in the cluster is unknown")
    os.environ["TF_CONFIG"] = json.dumps(tf_config(hosts, int(index)))


def restore_backup(backup_dir: Path) -> int:
    """The epoch every worker resumes from, making the chief's checkpoint the one they all load: when the last
    checkpoint is unreadable (the chief killed while writing it) the one before replaces it, as Keras'
    ``BackupAndRestore(double_checkpoint=True)`` does; with neither readable the backup is removed (0: start
    over)."""
    import shutil

    from pipeline.train import _backup_epoch, _checkpoint_epoch

    weights, meta = backup_dir / "latest.weights.h5", backup_dir / "training_metadata.json"
    prev_weights, prev_meta = Path(f"{weights}.bkp"), Path(f"{meta}.bkp")
    if (backup_dir.exists() and _checkpoint_epoch(weights, meta) is None
            and _checkpoint_epoch(prev_weights, prev_meta) is not None):
        shutil.copyfile(prev_weights, weights)
        shutil.copyfile(prev_meta, meta)
    return _backup_epoch(backup_dir)


def _as_source(data: "pd.DataFrame | str | Path", path: Path) -> str:
    """A Parquet source the workers read: the given one, or the frame written to ``path``."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        data.to_parquet(path, index=False)
        return str(path)
    return str(data)


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the task process that started it dies (Linux), so a task killed
    outright (its Celery worker lost) leaves no worker training on beside its retry."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Relay:
    """The object the task's callbacks see as ``self.model``: a stop one of them asks for (a tuning pruner) is
    handed to the workers through the stop file."""

    def __init__(self, stop_file: Path):
        self.stop_file = stop_file
        self._stop = False

    @property
    def stop_training(self) -> bool:
        return self._stop

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        if value and not self._stop:
            self.stop_file.touch()
        self._stop = bool(value)


def train_multi_worker(train_df: "pd.DataFrame | str | Path", val_df: "pd.DataFrame | str | Path",
                       meta: PreprocessMeta, model_cfg: ModelConfig, cfg: TrainingConfig, work_dir: str | Path,
                       seed: int = 42, callbacks: Sequence["keras.callbacks.Callback"] = (),
                       poll_s: float = 0.2) -> "TrainResult":
    """Train on ``cfg.workers`` local worker processes; same arguments and result as ``pipeline.train.train``.

    Raises:
        RuntimeError: a worker failed or died (the others are stopped); its index, exit status and the end of
            its log (``<work_dir>/multi_worker/worker-<i>.log``) are in the message.
    """
    import keras

    from pipeline.datasets import parquet_rows
    from pipeline.train import plan

    work_dir = Path(work_dir)
    spec_path, resumed = prepare(train_df, val_df, meta, model_cfg, cfg, work_dir, seed)
    mw = spec_path.parent
    spec = json.loads(spec_path.read_text())
    hosts = [f"127.0.0.1:{p}" for p in free_ports(cfg.workers)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p and os.path.isdir(p)))
    print(f"train: multi-worker training on {cfg.workers} processes ({', '.join(hosts)})"
          + (f", resuming after epoch {resumed}" if resumed else ""), flush=True)
    sizes = plan(parquet_rows(spec["train"]), cfg)
    relay = keras.callbacks.CallbackList(list(callbacks), model=_Relay(mw / STOP), epochs=sizes.epochs,
                                         steps=sizes.steps_per_epoch, verbose=0)
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for i in range(cfg.workers):
            log = open(mw / f"worker-{i}.log", "wb")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "pipeline.multi_worker", str(mw / SPEC), str(i)],
                env={**env, "TF_CONFIG": json.dumps(tf_config(hosts, i))}, stdout=log, stderr=subprocess.STDOUT,
                cwd=os.getcwd(), preexec_fn=_die_with_parent))
        relay.on_train_begin()
        _follow(procs, mw, relay, poll_s)
        relay.on_train_end()
    finally:
        for p in procs:  # only the processes started here, by their ids
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    return collect(work_dir)


def prepare(train_df: "pd.DataFrame | str | Path", val_df: "pd.DataFrame | str | Path", meta: PreprocessMeta,
            model_cfg: ModelConfig, cfg: TrainingConfig, work_dir: str | Path, seed: int = 42) -> tuple[Path, int]:
    """Write what every worker reads to ``<work_dir>/multi_worker/`` (the spec, the encodings, the splits when
    they are frames) and make the chief's checkpoint the one to resume from; returns the spec's path and the
    epoch the workers resume after. The Kubernetes variant calls it before the Job (docs/production.md)."""
    import shutil

    work_dir = Path(work_dir)
    mw = work_dir / DIR
    shutil.rmtree(mw, ignore_errors=True)
    mw.mkdir(parents=True)
    (work_dir / "train_result.json").unlink(missing_ok=True)
    resumed = restore_backup(work_dir / "backup")
    meta.save(mw / "meta.json")
    spec = {"train": _as_source(train_df, mw / "train.parquet"), "val": _as_source(val_df, mw / "val.parquet"),
            "model": asdict(model_cfg), "training": asdict(cfg), "seed": int(seed), "work_dir": str(work_dir),
            "resumed": resumed}
    (mw / SPEC).write_text(json.dumps(spec, default=str))
    return mw / SPEC, resumed


def collect(work_dir: str | Path) -> "TrainResult":
    """The chief's result, once every worker has exited 0 (FileNotFoundError when the chief saved nothing)."""
    from pipeline.train import TrainResult

    return TrainResult(**json.loads((Path(work_dir) / "train_result.json").read_text()))


def _follow(procs: list[subprocess.Popen], mw: Path, relay: "keras.callbacks.CallbackList", poll_s: float) -> None:
    """Wait for every worker to exit 0, printing the chief's lines and relaying its epochs; raise on the first
    failure."""
    seen = 0
    chief_log, epochs_file = mw / "worker-0.log", mw / EPOCHS
    pending = b""
    with open(chief_log, "rb") as log:  # created before the workers start
        while True:
            codes = [p.poll() for p in procs]  # before reading: what a worker wrote before it exited is relayed
            pending += log.read()
            *lines, pending = pending.split(b"\n")
            for line in (ln.decode(errors="replace") for ln in lines):
                if line.strip() and not line.startswith(_TF_NOISE):
                    print(f"[worker 0] {line}", flush=True)
            if epochs_file.exists():
                text = epochs_file.read_text()
                records = [json.loads(ln) for ln in text[:text.rfind("\n") + 1].splitlines()]  # whole lines only
                for rec in records[seen:]:
                    relay.on_epoch_begin(rec["epoch"])
                    relay.on_epoch_end(rec["epoch"], rec["logs"])
                seen = len(records)
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:  # the caller stops the others (train_multi_worker's finally)
                i, code = failed[0]
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
                tail = "\n".join(_tail(mw / f"worker-{i}.log"))
                raise RuntimeError(f"multi-worker training: worker {i} (pid {procs[i].pid}) {how}; the other "
                                   f"workers were stopped. A retry resumes from the chief's last checkpoint. "
                                   f"End of {mw / f'worker-{i}.log'}:\n{tail}")
            if all(c == 0 for c in codes):
                return
            time.sleep(poll_s)


def _tail(path: Path, n: int = 15) -> list[str]:
    try:
        with open(path, errors="replace") as fh:
            return list(deque((ln.rstrip() for ln in fh if not ln.startswith(_TF_NOISE)), maxlen=n))
    except OSError:
        return []


# -- the worker ----------------------------------------------------------------------------------------------

def distributed_fit(model: "keras.Model", strategy: "tf.distribute.Strategy", train_ds: "tf.data.Dataset",
                    val_ds: "tf.data.Dataset | None", epochs: int, steps_per_epoch: int, initial_epoch: int,
                    callbacks: Sequence["keras.callbacks.Callback"], classification: bool,
                    stop_file: Path | None = None) -> None:
    """``model.fit`` for ``MultiWorkerMirroredStrategy``: ``train_ds`` a distributed dataset that repeats (each
    replica's batches), ``steps_per_epoch`` steps an epoch, from ``initial_epoch`` on; ``val_ds`` read whole by
    this worker. The logs are Keras': ``loss`` and the compiled metric (``accuracy`` or ``rmse``), with
    ``val_`` twins."""
    import keras
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    metric = "accuracy" if classification else "rmse"

    def batch_sums(x, y, w, y_pred, training):
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=w, training=training)
        n = tf.cast(tf.shape(y)[0], tf.float32)
        pred = tf.cast(y_pred, tf.float32)
        if classification:
            hit = tf.cast(tf.equal(tf.argmax(pred, axis=-1), tf.cast(tf.reshape(y, [-1]), tf.int64)), tf.float32)
            score = tf.reduce_sum(hit)
        else:
            score = tf.reduce_sum(tf.square(tf.reshape(pred, [-1]) - tf.cast(tf.reshape(y, [-1]), tf.float32)))
        return loss, tf.stack([tf.cast(loss, tf.float32) * n, score, n])

    def replica_step(batch):
        x, y, w = keras.utils.unpack_x_y_sample_weight(batch)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss, sums = batch_sums(x, y, w, y_pred, True)
            # the optimizer sums the replicas' gradients: each replica's mean loss is divided by their number
            scaled = model.optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return sums

    @tf.function
    def train_step(iterator):
        return strategy.reduce("SUM", strategy.run(replica_step, args=(next(iterator),)), axis=None)

    @tf.function
    def val_step(x, y):
        return batch_sums(x, y, None, model(x, training=False), False)[1]

    @tf.function
    def agree(flag):  # the sum of every replica's flag: above 0 when any worker asks for a stop
        return strategy.reduce("SUM", strategy.run(tf.identity, args=(flag,)), axis=None)

    def logs_of(sums, prefix=""):
        loss_sum, score, n = (float(v) for v in sums)
        value = score / max(n, 1.0) if classification else (score / max(n, 1.0)) ** 0.5
        return {f"{prefix}loss": loss_sum / max(n, 1.0), f"{prefix}{metric}": value}

    iterator = iter(train_ds)
    cbs = keras.callbacks.CallbackList(list(callbacks), model=model, epochs=epochs, steps=steps_per_epoch, verbose=0)
    model.stop_training = False
    cbs.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        cbs.on_epoch_begin(epoch)
        total = tf.zeros(3)
        for step in range(steps_per_epoch):
            total += train_step(iterator)
        logs = logs_of(total.numpy())
        if val_ds is not None:
            vtotal = tf.zeros(3)
            for batch in val_ds:
                x, y, _ = keras.utils.unpack_x_y_sample_weight(batch)
                vtotal += val_step(x, y)
            logs.update(logs_of(vtotal.numpy(), "val_"))
        cbs.on_epoch_end(epoch, logs)
        asked = bool(model.stop_training) or bool(stop_file and stop_file.exists())
        if float(agree(tf.constant(1.0 if asked else 0.0))) > 0:
            break
        model.stop_training = False
    cbs.on_train_end()


class _EpochWriter:
    """The chief's epochs, one JSON line each, for the task's callbacks (:func:`_follow`)."""

    def __new__(cls, path: Path):
        import keras

        class EpochWriter(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                with open(path, "a") as fh:
                    fh.write(json.dumps({"epoch": epoch, "logs": {k: float(v) for k, v in (logs or {}).items()}})
                             + "\n")

        return EpochWriter()


def worker_main(spec_path: str | Path) -> None:
    """One worker: the strategy first (it reads ``TF_CONFIG`` and joins the cluster), then the model, the input
    and :func:`distributed_fit`; the chief saves the model and ``train_result.json``."""
    import shutil

    cluster_from_environment()
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras

    from pipeline.datasets import parquet_rows
    from pipeline.preprocess import build_preprocessor, class_weights
    from pipeline.train import (TENSORBOARD_DIR, compiled_body, fit_dataset, plan, precision_policy, save_trained,
                                standard_callbacks)

    spec = json.loads(Path(spec_path).read_text())
    mw = Path(spec_path).parent
    cfg = TrainingConfig(**spec["training"])
    model_cfg = ModelConfig(**spec["model"])
    meta = PreprocessMeta.load(mw / "meta.json")
    work_dir, seed, resumed = Path(spec["work_dir"]), int(spec["seed"]), int(spec["resumed"])
    resolver = strategy.cluster_resolver
    workers = len(resolver.cluster_spec().as_dict().get("worker", [])) or 1
    chief = resolver.task_type in ("chief", None) or (resolver.task_type == "worker" and resolver.task_id == 0)
    gpus = tf.config.list_logical_devices("GPU")
    kind = f"multi_worker:{workers}x{len(gpus) or 1}{'gpu' if gpus else 'cpu'}"
    policy = precision_policy(kind, cfg.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(seed)

    train_rows = parquet_rows(spec["train"])
    sizes = plan(train_rows, cfg)
    replicas = strategy.num_replicas_in_sync
    local = max(1, sizes.batch_size // replicas)
    with strategy.scope():
        model = compiled_body(meta, model_cfg, cfg, sizes)
        from models.image import fine_tune_backbone

        if fine_tune_backbone(model) is not None:
            raise ValueError("training.distribution multi_worker: the transfer builder's freeze-then-fine-tune "
                             "schedule runs on one machine (distribution auto or mirrored)")
        model.optimizer.build(model.trainable_variables)  # its variables mirrored too, before any checkpoint loads
    by_class = class_weights(meta, cfg.class_weight)
    preprocessor = build_preprocessor(meta)
    has_val = parquet_rows(spec["val"]) > 0

    def input_fn(context: "tf.distribute.InputContext") -> "tf.data.Dataset":
        # every worker builds the same shuffled batches (one seed) and keeps its share of them
        ds = fit_dataset(spec["train"], meta, preprocessor, local, cfg, shuffle=True, seed=seed, class_weight=by_class)
        ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id).repeat()
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options)

    train_ds = strategy.distribute_datasets_from_function(input_fn)
    val_ds = fit_dataset(spec["val"], meta, preprocessor, 1024, cfg) if has_val else None
    steps = max(1, -(-train_rows // (local * replicas)))
    # Every worker saves what the chief saves, the others into a scratch directory of their own: reading some
    # variables (the optimizer's step, synchronised on read) is a collective operation all workers must join.
    own_dir = work_dir if chief else mw / f"worker-{resolver.task_id}"
    backup_dir = own_dir / "backup"
    if not chief and (work_dir / "backup").exists():  # resume from the chief's checkpoint, as the chief does
        shutil.rmtree(own_dir, ignore_errors=True)
        shutil.copytree(work_dir / "backup", backup_dir)
    tensorboard_dir = own_dir / TENSORBOARD_DIR if cfg.tensorboard else None
    history = keras.callbacks.History()
    fit_callbacks = standard_callbacks(cfg, sizes, has_val, backup_dir, tensorboard_dir)
    fit_callbacks += [history, *([_EpochWriter(mw / EPOCHS)] if chief else [])]
    if chief:
        print(f"train: {train_rows} rows, global batch {local * replicas} ({replicas} replicas of {local}), "
              f"up to {sizes.epochs} epochs ({steps} steps each), early stopping patience {sizes.patience}"
              + (f", class weights {by_class}" if by_class else ""), flush=True)
    with strategy.scope():  # as Keras' fit runs: callbacks that load or create variables do it in the scope
        distributed_fit(model, strategy, train_ds, val_ds, sizes.epochs, steps, resumed, fit_callbacks,
                        classification=meta.feature_spec.task == "classification", stop_file=mw / STOP)
    history_dict = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    save_trained(model, meta, cfg, own_dir, history_dict, "val_loss" if has_val else "loss", by_class,
                 kind, policy, resumed, sizes, tensorboard_dir)
    if chief:
        print("train: model saved", flush=True)


if __name__ == "__main__":  # python -m pipeline.multi_worker SPEC [INDEX]; the index is TF_CONFIG's
    worker_main(sys.argv[1])
