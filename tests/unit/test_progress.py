"""The command line's live view: events from tasks and the fit, drawn as plain lines or redrawn on a terminal,
and the process's own output sent to a log file meanwhile."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np

from pipeline import progress


def _events(view):
    with progress.attached(view):
        progress.emit("task", task="ingest", state="running")
        progress.emit("task", task="ingest", state="success")
        progress.emit("task", task="train", state="running")
        progress.emit("fit", epochs=2, steps=4)
        progress.emit("batch", epoch=1, step=2, loss=0.9)
        progress.emit("epoch", epoch=1, logs={"loss": 0.8, "accuracy": 0.5, "val_loss": 0.7, "val_accuracy": 0.6})
        progress.emit("task", task="train", state="failed", error="ValueError: column 'x' is all missing")
    progress.emit("task", task="deploy", state="running")  # detached: not drawn


def test_plain_lines_without_a_terminal():
    out = io.StringIO()
    with progress.LiveView(out, ["ingest", "train", "deploy"], tty=False) as view:
        _events(view)
    lines = out.getvalue().splitlines()
    assert lines[0] == "… ingest      running"
    assert lines[1].startswith("✓ ingest      success ")
    assert "  train: epoch 1/2 loss 0.8 val_loss 0.7 val_accuracy 0.6" in lines
    assert lines[-2].startswith("✗ train       failed ")
    assert lines[-1] == "    ValueError: column 'x' is all missing"  # the reason, not only the task's name
    assert not any("deploy" in line for line in lines)


def test_redrawn_on_a_terminal():
    out = io.StringIO()
    with progress.LiveView(out, ["ingest", "train", "deploy"], tty=True) as view:
        _events(view)
    text = out.getvalue()
    assert "\x1b[" in text  # drawn with escape codes, in place
    assert "ingest" in text and "deploy" in text and "column 'x' is all missing" in text


def test_keras_callback_reports_the_fit():
    import keras

    seen = []
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(32, 2)).astype("float32")
    with progress.attached(seen.append):
        model.fit(x, x[:, :1], validation_data=(x, x[:, :1]), epochs=2, batch_size=8, verbose=0,
                  callbacks=[progress.keras_callback(every_s=0)])
    kinds = [e["kind"] for e in seen]
    assert kinds[0] == "fit" and seen[0]["epochs"] == 2 and seen[0]["steps"] == 4
    epochs = [e for e in seen if e["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2] and "val_loss" in epochs[0]["logs"]
    assert "batch" in kinds


CAPTURE_SCRIPT = """
import os, subprocess, sys
from pathlib import Path
from pipeline import progress
with progress.captured_output(Path(sys.argv[1])) as terminal:
    print("python print", flush=True)
    os.write(2, b"fd 2 write\\n")
    subprocess.run([sys.executable, "-c", "print('child output')"], check=True)
    terminal.write("to the terminal\\n")
print("after", flush=True)
"""


def test_output_goes_to_the_log_file_and_comes_back(tmp_path):
    """Run as its own process: what the process, its C++ code (fd writes) and its children write goes to the
    file; the view's stream and everything after the block to the original stdout."""
    log = tmp_path / "logs" / "run.log"
    result = subprocess.run([sys.executable, "-c", CAPTURE_SCRIPT, str(log)], capture_output=True, text=True,
                            check=True)
    text = log.read_text()
    assert "python print" in text and "fd 2 write" in text and "child output" in text
    assert "to the terminal" not in text and "after" not in text
    assert result.stdout == "to the terminal\nafter\n" and result.stderr == ""
