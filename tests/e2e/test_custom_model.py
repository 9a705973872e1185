"""A user's own model: ``conf/examples/custom_model.yaml`` names ``model.module: my_model.py`` (a wide & deep
model beside it) and sets its keyword parameters.

End to end, ``pipeline train --config conf/examples/custom_model.yaml`` trains it through Airflow, publishes
the SavedModel, and ``pipeline serve`` answers a raw penguin over REST and gRPC with it; the published
SavedModel holds the module's own layers, sized by ``model.params``. Fast: the builder on its own (both tasks,
every kind of input), and the errors a user meets before any run starts: a misspelt ``model.params`` key (of a
module's builder or a named one), a module file or function that is not there.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "conf" / "examples"
CONFIG = EXAMPLES / "custom_model.yaml"
MODULE = EXAMPLES / "my_model.py"
MODEL = "penguins_custom"
BIN = Path(sys.executable).parent
PENGUIN = {"island": "Biscoe", "bill_length_mm": 48.6, "bill_depth_mm": 16.0, "flipper_length_mm": 230.0,
           "body_mass_g": 5800.0, "sex": "male"}  # a Gentoo


def _write_config(directory: Path, **model) -> Path:
    """The example config with its ``model`` section replaced, written into ``directory``."""
    raw = yaml.safe_load(CONFIG.read_text())
    raw["model"] = model
    path = directory / "custom.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# -- fast: the config -------------------------------------------------------------------------------------

def test_example_config_loads_with_the_module_beside_it():
    from pipeline.config import load_config

    cfg = load_config(CONFIG)
    assert cfg.model.module == str(MODULE) and cfg.serving.model_name == MODEL
    assert dict(cfg.model.params) == {"deep_units": [64, 32], "dropout": 0.1, "embedding_dim": 4}
    assert cfg.model.build_fn().__module__.startswith("pipeline_user_model_my_model")


def test_module_is_found_beside_the_config_not_only_in_the_working_directory(tmp_path):
    from pipeline.config import load_config

    shutil.copy(MODULE, tmp_path / "my_model.py")
    cfg = load_config(_write_config(tmp_path, module="my_model.py", params={"dropout": 0.2}))
    assert cfg.model.module == str((tmp_path / "my_model.py").resolve())


def test_misspelt_param_of_the_module_builder_names_the_key_and_the_builder(tmp_path):
    from pipeline.config import ConfigError, load_config

    shutil.copy(MODULE, tmp_path / "my_model.py")
    path = _write_config(tmp_path, module="my_model.py", params={"deep_unit": [8], "dropout": 0.1})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "model.params.deep_unit" in message and "my_model.py" in message, message
    assert "did you mean 'deep_units'" in message, message


def test_misspelt_param_of_a_named_builder_names_the_key_and_the_builder(tmp_path):
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(_write_config(tmp_path, builder="tabular", params={"widht": 64}))
    message = str(err.value)
    assert "model.params.widht" in message and "'tabular'" in message, message
    assert "did you mean 'width'" in message, message


@pytest.mark.parametrize("module, named", [
    ("no_such_model.py", ["no_such_model.py", "file not found"]),
    ("my_model.py:make_model", ["my_model.py:make_model", "make_model"]),
    ("models.no_such_module:build", ["models.no_such_module", "cannot import"]),
])
def test_a_module_that_is_not_there_is_named(module, named, tmp_path):
    from pipeline.config import ConfigError, load_config

    shutil.copy(MODULE, tmp_path / "my_model.py")
    with pytest.raises(ConfigError) as err:
        load_config(_write_config(tmp_path, module=module))
    assert all(n in str(err.value) for n in named), str(err.value)


# -- fast: the builder ------------------------------------------------------------------------------------

def _example_build():
    spec = importlib.util.spec_from_file_location("example_my_model", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build


@pytest.mark.parametrize("task, n_outputs", [("classification", 3), ("regression", 1)])
def test_example_builder_answers_each_task_from_every_kind_of_input(task, n_outputs):
    import keras

    from pipeline.preprocess import ModelSpec

    spec = ModelSpec(task, n_outputs, numeric_width=5, categorical={"cat__island": 4, "cat__sex": 3},
                     text={"text__note": 20}, kinds={}, rows=100)
    inputs = spec.inputs()
    model = keras.Model(inputs, _example_build()(inputs, spec, deep_units=(16, 8, 4), embedding_dim=3))
    rng = np.random.default_rng(0)
    batch = {"numeric": rng.normal(size=(7, 5)).astype("float32"), "cat__island": np.arange(7) % 4,
             "cat__sex": np.arange(7) % 3, "text__note": rng.random((7, 20)).astype("float32")}
    out = model.predict(batch, verbose=0)
    assert out.shape == (7, n_outputs) and out.dtype == np.float32 and np.isfinite(out).all()
    if task == "classification":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    layers = {layer.name: layer for layer in model.layers}
    assert layers["deep_cat__island_embedding"].get_config()["output_dim"] == 3, "its own, sized"
    assert [n for n in layers if n.startswith("deep_dense_")] == [f"deep_dense_{i}" for i in range(3)]
    assert {"wide_logits", "deep_logits", "wide_and_deep"} <= set(layers)


# -- end to end -------------------------------------------------------------------------------------------

def _line(out: str, prefix: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(prefix + ":")).split(":", 1)[1].strip()


def _server_process_class():
    """The serving tests' ``ServerProcess`` (free ports, its own process group, always stopped), running
    ``pipeline serve`` as a user types it."""
    path = REPO / "tests" / "serving" / "conftest.py"
    spec = importlib.util.spec_from_file_location("serving_conftest", path)
    serving = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serving)

    class PipelineServe(serving.ServerProcess):
        def start(self):
            self._log = open(self.log_path, "w")
            self.proc = subprocess.Popen([str(BIN / "pipeline"), "serve", *self.args], cwd=REPO, env=self.env,
                                         stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
            return self

    return PipelineServe


@pytest.mark.e2e
def test_custom_model_trains_publishes_and_is_served(tmp_path, run_train, monkeypatch):
    import tensorflow as tf

    from pipeline.deploy import predict_request

    home = tmp_path / "home"
    result = run_train(home, "--config", str(CONFIG))
    out = result.stdout
    assert result.returncode == 0, out[-5000:]
    assert _line(out, "Registered model") == f"{MODEL} version 1"
    assert _line(out, "Blessed").startswith("yes")
    version_dir = home.resolve() / "serving" / MODEL / "1"
    assert _line(out, "Deployed") == f"{version_dir} (label stable)"
    assert (version_dir / "saved_model.pb").is_file() and (version_dir / "variables").is_dir()

    # The train stage ran the user's module with the config's params.
    monkeypatch.setenv("PIPELINE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from pipeline.tracking import client

    mlflow_client = client()
    exp = mlflow_client.get_experiment_by_name(MODEL)
    (train,) = mlflow_client.search_runs([exp.experiment_id], filter_string="tags.`pipeline.stage` = 'train'")
    assert train.data.params["builder"] == str(MODULE)
    assert train.data.params["model_deep_units"] == "[64, 32]"
    assert train.data.params["model_embedding_dim"] == "4"

    # The published SavedModel is that model: its signature holds the module's layers, sized by the params.
    loaded = tf.saved_model.load(str(version_dir))  # kept: the signature's variables belong to it
    fn = loaded.signatures["serving_default"]
    variables = {v.name.split(":")[0]: tuple(v.shape) for v in fn.variables}
    assert {"deep_dense_0/kernel", "deep_dense_1/kernel", "deep_logits/kernel", "wide_logits/kernel"} <= set(
        variables)
    assert not any(name.startswith("deep_dense_2/") for name in variables), "deep_units: [64, 32]"
    assert variables["deep_dense_1/kernel"] == (64, 32)
    for column in ("island", "sex"):
        assert variables[f"deep_cat__{column}_embedding/embeddings"][1] == 4, "embedding_dim: 4"
    row = {k: tf.constant([v], tf.float32 if isinstance(v, float) else tf.string) for k, v in PENGUIN.items()}
    local = fn(**row)["probabilities"].numpy()[0]
    assert local.argmax() == 2, f"a Gentoo: {local}"

    # `pipeline serve` (no model flags: the generated models.config) answers with it over REST and gRPC.
    server = _server_process_class()(tmp_path, [], env={"PIPELINE_HOME": str(home)})
    server.start()
    try:
        server.wait_ready(MODEL, 1)
        response = server.post(f"/v1/models/{MODEL}:predict", {"instances": [PENGUIN]})
        assert response.status_code == 200, response.text
        (prediction,) = response.json()["predictions"]
        assert prediction["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
        np.testing.assert_allclose(prediction["probabilities"], local, atol=1e-5)

        request = predict_request(MODEL, {k: np.array([v], np.float32 if isinstance(v, float) else object)
                                          for k, v in PENGUIN.items()})
        answer = server.prediction_stub().Predict(request, timeout=60)
        np.testing.assert_allclose(tf.make_ndarray(answer.outputs["probabilities"])[0], local, atol=1e-5)
        assert answer.model_spec.version.value == 1
    finally:
        server.stop()
