"""``training.distribution: mirrored``: MirroredStrategy over two logical CPU devices trains and exports the same
model as the default strategy. Each side runs in a fresh interpreter: logical devices can only be configured
before TensorFlow initialises, which this test process has done already."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.train import precision_policy

ROOT = Path(__file__).resolve().parents[2]

SIDE = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    replicas = int(sys.argv[2])
    if replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    from palmerpenguins import load_penguins
    from pipeline.config import load_config
    from pipeline.export import predict_keras
    from pipeline.features import FeatureSpec
    from pipeline.preprocess import fit_preprocessing, label_array
    from pipeline.train import load_model, train
    df = load_penguins().dropna(subset=["species"])
    cfg = load_config(None, {"training.epochs": 30, "training.distribution": sys.argv[3]})
    spec = FeatureSpec(("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"),
                       ("island", "sex"), "species", "classification")
    meta = fit_preprocessing(df, spec)
    result = train(df, df, meta, cfg.model, cfg.training, sys.argv[1], seed=7)
    model = load_model(result.model_path, meta)
    proba = predict_keras(model, df, meta)
    accuracy = float((proba.argmax(axis=1) == label_array(df, meta)).mean())
    print("RESULT " + json.dumps({"strategy": result.strategy, "accuracy": accuracy,
                                  "inputs": sorted(model.input.keys()) if isinstance(model.input, dict) else [],
                                  "output_shape": list(proba.shape)}))
""")


def _side(tmp_path: Path, replicas: int, distribution: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", SIDE, str(tmp_path / f"{distribution}{replicas}"), str(replicas),
                           distribution], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT),
                               "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])


def test_mirrored_over_two_cpu_devices_trains_the_same_model_as_the_default(tmp_path):
    default = _side(tmp_path, 1, "auto")
    mirrored = _side(tmp_path, 2, "mirrored")
    assert (default["strategy"], mirrored["strategy"]) == ("cpu", "mirrored:2cpu")
    assert mirrored["inputs"] == default["inputs"] and mirrored["output_shape"] == default["output_shape"]
    assert default["accuracy"] > 0.9 and abs(mirrored["accuracy"] - default["accuracy"]) <= 0.03, (default, mirrored)


def test_an_unknown_distribution_is_refused_by_name():
    with pytest.raises(ConfigError, match="distribution"):
        load_config(None, {"training.distribution": "parameter_server"})


def test_mirrored_on_cpus_stays_float32():
    assert precision_policy("mirrored:2cpu", True) == "float32"
    assert precision_policy("mirrored:2gpu", True) == "mixed_float16"
