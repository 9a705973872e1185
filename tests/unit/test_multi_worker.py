"""``training.distribution: multi_worker``: MultiWorkerMirroredStrategy over 2 local worker processes trains a model
as good as one process does, relays its epochs to the task's callbacks, and a worker killed mid-fit fails the
task cleanly while the retry resumes from the chief's checkpoint. Every side runs in a fresh interpreter (the
strategy has to be created before TensorFlow initialises, and the test kills processes it started)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.multi_worker import cluster_from_environment, free_ports, tf_config

ROOT = Path(__file__).resolve().parents[2]

# scikit-learn's digits (8x8 pixels, 10 classes) split 1200/300/297; prints the test accuracy, the strategy and the
# epochs a relayed callback saw.
SIDE = textwrap.dedent("""
    import json, sys
    import keras
    from pipeline.config import load_config
    from pipeline.features import resolve_features
    from sklearn.datasets import load_digits
    from pipeline.preprocess import fit_preprocessing, label_array
    from pipeline.export import predict_keras
    from pipeline.train import load_model, train
    work, distribution, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    df = load_digits(as_frame=True).frame.sample(frac=1.0, random_state=0)
    df["digit"] = "d" + df.pop("target").astype(str)
    tr, va, te = df.iloc[:1200], df.iloc[1200:1500], df.iloc[1500:]
    over = {"training.epochs": epochs, "training.distribution": distribution, "training.batch_size": 64}
    if distribution == "multi_worker":
        over["training.workers"] = 2
    cfg = load_config(None, over)
    spec = resolve_features(tr, "digit", "classification")
    meta = fit_preprocessing(tr, spec)
    seen = []
    class Seen(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append([epoch, sorted(logs)])
    result = train(tr, va, meta, cfg.model, cfg.training, work, seed=5, callbacks=[Seen()])
    model = load_model(result.model_path, meta)
    accuracy = float((predict_keras(model, te, meta).argmax(axis=1) == label_array(te, meta)).mean())
    print("RESULT " + json.dumps({"strategy": result.strategy, "accuracy": accuracy, "epochs": result.epochs_run,
                                  "resumed": result.resumed_from_epoch, "seen": seen,
                                  "history": sorted(result.history)}))
""")


def _env(tmp_path: Path) -> dict:
    return {"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}


def _side(tmp_path: Path, work: Path, distribution: str, epochs: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", SIDE, str(work), distribution, str(epochs)], capture_output=True,
                          text=True, timeout=900, cwd=ROOT, env=_env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])


def test_two_workers_train_a_model_as_good_as_one_process(tmp_path):
    one = _side(tmp_path, tmp_path / "one", "auto", 15)
    two = _side(tmp_path, tmp_path / "two", "multi_worker", 15)
    assert (one["strategy"], two["strategy"]) == ("cpu", "multi_worker:2x1cpu")
    # within noise: two standard errors of a difference of two accuracies on the 297 test rows
    p = (one["accuracy"] + two["accuracy"]) / 2
    noise = 2 * math.sqrt(2 * p * (1 - p) / 297)
    assert one["accuracy"] > 0.85 and abs(one["accuracy"] - two["accuracy"]) <= noise, (one, two, noise)
    assert two["history"] == one["history"]  # the same logs: loss, accuracy and their val_ twins
    # the task's callbacks saw every epoch of the chief, with Keras' log keys
    assert [e for e, _ in two["seen"]] == list(range(two["epochs"]))
    assert all(keys == one["history"] for _, keys in two["seen"])
    assert not (tmp_path / "two" / "backup").exists()


def _workers_of(pid: int) -> dict[int, int]:
    """Worker index -> pid of the multi-worker processes the side process ``pid`` started."""
    import psutil

    found = {}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "pipeline.multi_worker" in cmd:
            found[int(cmd[-1])] = child.pid
    return found


def test_a_worker_killed_mid_fit_fails_the_task_and_the_retry_resumes(tmp_path):
    work = tmp_path / "run"
    epochs_file = work / "multi_worker" / "epochs.jsonl"
    side = subprocess.Popen([sys.executable, "-c", SIDE, str(work), "multi_worker", "40"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=_env(tmp_path),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and side.poll() is None:
            if epochs_file.exists() and len(epochs_file.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        workers = _workers_of(side.pid)
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], signal.SIGKILL)  # a process this test's side started, by its id
        out, _ = side.communicate(timeout=300)
    finally:
        if side.poll() is None:
            os.killpg(side.pid, signal.SIGKILL)
            side.wait()
    assert side.returncode != 0
    assert "worker 1" in out and "SIGKILL" in out and "resumes from the chief's last checkpoint" in out, out[-3000:]
    assert not (work / "model.keras").exists() and not (work / "train_result.json").exists()
    assert not _workers_alive(workers)

    retry = _side(tmp_path, work, "multi_worker", 40)
    assert retry["resumed"] >= 1 and retry["epochs"] > retry["resumed"], retry
    assert (work / "model.keras").exists() and retry["accuracy"] > 0.85


def _workers_alive(workers: dict[int, int]) -> bool:
    import psutil

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return any(alive(pid) for pid in workers.values())


def test_workers_and_distribution_must_agree():
    with pytest.raises(ConfigError, match="workers"):
        load_config(None, {"training.distribution": "multi_worker"})
    with pytest.raises(ConfigError, match="workers"):
        load_config(None, {"training.workers": 3})
    assert load_config(None, {"training.distribution": "multi_worker", "training.workers": 3}).training.workers == 3


def test_an_indexed_job_pod_builds_its_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setenv("PIPELINE_WORKER_HOSTS", "train-0.svc:2222, train-1.svc:2222")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    cluster_from_environment()
    assert json.loads(os.environ["TF_CONFIG"]) == tf_config(["train-0.svc:2222", "train-1.svc:2222"], 1)
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    with pytest.raises(RuntimeError, match="JOB_COMPLETION_INDEX"):
        cluster_from_environment()


def test_free_ports_are_distinct():
    ports = free_ports(4)
    assert len(set(ports)) == 4
