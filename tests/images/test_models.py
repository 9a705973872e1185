"""The image builders (``models.image``) trained through ``pipeline.train`` on real PNG bytes: the small CNN
learns the synthetic shapes, augmentation acts in training only, and transfer learning loads its backbone from a
local weights file (randomly initialised and saved here: nothing is downloaded) with the freeze-then-fine-tune
schedule."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import FeaturesConfig, ModelConfig, TrainingConfig
from pipeline.features import resolve_features
from pipeline.images import generate
from pipeline.ingest import ingest
from pipeline.preprocess import build_preprocessor, feature_arrays, fit_preprocessing, full_model


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """480 synthetic 32x32 shapes of 4 classes as a snapshot frame, split 400/80, with their fitted meta."""
    tmp = tmp_path_factory.mktemp("shapes")
    root = generate.write_shapes(tmp / "files", 480, size=32, seed=11)
    frame = pd.read_parquet(ingest(str(root), tmp / "run", label="label").path).sample(frac=1, random_state=0)
    spec = resolve_features(frame, "label", None)
    train, val = frame.iloc[:400].reset_index(drop=True), frame.iloc[400:].reset_index(drop=True)
    return train, val, fit_preprocessing(train, spec, FeaturesConfig())


def _body(path):
    import keras

    from pipeline.encoders import layers

    layers()  # the project's layers registered for loading
    return keras.models.load_model(path, compile=False)


def _accuracy(body, meta, frame) -> float:
    from pipeline.export import predict_keras

    probs = predict_keras(full_model(meta, body), frame, meta)
    truth = np.array([meta.class_names.index(v) for v in frame["label"]])
    return float((probs.argmax(axis=1) == truth).mean())


def test_image_size_and_channels_come_from_the_data_or_the_config(shapes):
    train, _, meta = shapes
    assert meta.image == {"image": {"height": 32, "width": 32, "channels": 3}}
    assert meta.model_spec().images == {"image__image": (32, 32, 3)}
    pinned = fit_preprocessing(train, meta.feature_spec, FeaturesConfig(image_height=16, image_width=24,
                                                                        image_channels=1))
    out = build_preprocessor(pinned)(feature_arrays(train.head(3), pinned.feature_spec))["image__image"]
    assert tuple(out.shape) == (3, 16, 24, 1) and out.dtype == "uint8" and int(np.max(out)) > 0


def test_the_cnn_learns_shapes_and_augments_only_in_training(shapes, tmp_path):
    import keras

    from pipeline.train import train as fit

    train, val, meta = shapes
    cfg = TrainingConfig(epochs=15, batch_size=32, learning_rate=0.005, early_stopping_patience=15)
    model_cfg = ModelConfig(builder="cnn", params={"filters": [16, 32], "rotation": 0.05, "zoom": 0.1,
                                                   "contrast": 0.1})
    result = fit(train, val, meta, model_cfg, cfg, tmp_path / "train", seed=3)
    body = _body(result.model_path)
    assert _accuracy(body, meta, val) >= 0.6, "four classes: chance is 0.25"
    x = build_preprocessor(meta)(feature_arrays(val.head(4), meta.feature_spec))
    keras.utils.set_random_seed(0)
    a, b = body(x, training=False), body(x, training=False)
    assert np.allclose(a, b), "no augmentation when serving"
    augmented = [layer for layer in body.layers if layer.name.startswith("image__image_")
                 and type(layer).__name__.startswith("Random")]
    assert {type(layer).__name__ for layer in augmented} == {"RandomFlip", "RandomRotation", "RandomZoom",
                                                             "RandomContrast"}
    seen = augmented[0](x["image__image"], training=True)
    assert not np.allclose(seen, augmented[0](x["image__image"], training=True)) or \
        not np.allclose(seen, x["image__image"]), "augmentation draws in training"


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """MobileNetV2 (alpha 0.35) without its top at 32x32, randomly initialised, saved as a user would save
    ImageNet weights once."""
    import keras

    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2_035.weights.h5"
    keras.utils.set_random_seed(7)
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35,
                                   pooling="avg").save_weights(path)
    return path


def _backbone_weights(body) -> list[np.ndarray]:
    return [np.array(w) for w in body.get_layer("backbone").get_weights()]


@pytest.mark.parametrize("fine_tune_layers", [0, -1])
def test_transfer_loads_the_named_weights_and_freezes_then_fine_tunes(shapes, weights_file, tmp_path,
                                                                       fine_tune_layers, capsys):
    import keras

    from pipeline.train import train as fit

    train, val, meta = shapes
    original = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35,
                                              pooling="avg")
    original.load_weights(weights_file)
    before = [np.array(w) for w in original.get_weights()]
    model_cfg = ModelConfig(builder="transfer", params={"weights": str(weights_file), "alpha": 0.35,
                                                        "freeze_epochs": 2, "fine_tune_layers": fine_tune_layers})
    cfg = TrainingConfig(epochs=4, batch_size=32, early_stopping_patience=10)
    result = fit(train, val, meta, model_cfg, cfg, tmp_path / "train", seed=3)
    out = capsys.readouterr().out
    assert len(result.history["loss"]) == 4, "both phases' epochs are in the history"
    after = _backbone_weights(_body(result.model_path))
    # bit for bit: a randomly initialised backbone with its normalisation in inference mode passes tiny
    # gradients (about 1e-10), so fine-tuned weights move by little, but they move; frozen ones not at all
    moved = [not np.array_equal(b, a) for b, a in zip(before, after)]
    if fine_tune_layers == 0:
        assert not any(moved), "frozen throughout: the backbone keeps the file's weights"
        assert "fine-tuning" not in out
    else:
        assert "backbone frozen for 2 epoch(s)" in out and "fine-tuning" in out
        assert any(moved), "fine-tuned: the backbone's weights moved"
    assert not (tmp_path / "train" / "backup_frozen").exists()


def test_transfer_refuses_downloads_and_the_wrong_weights_file(shapes, tmp_path):
    import keras

    from pipeline.train import build_body

    _, _, meta = shapes
    with pytest.raises(ValueError, match="download at run time"):
        build_body(meta, ModelConfig(builder="transfer", params={"weights": "imagenet"}))
    with pytest.raises(ValueError, match="no such file"):
        build_body(meta, ModelConfig(builder="transfer", params={"weights": str(tmp_path / "missing.h5")}))
    other = tmp_path / "densenet.weights.h5"
    keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(other)
    with pytest.raises(ValueError, match="not the weights of MobileNetV2"):
        build_body(meta, ModelConfig(builder="transfer", params={"weights": str(other), "alpha": 0.35}))


def test_table_builders_refuse_images_by_name(shapes):
    from pipeline.train import build_body

    _, _, meta = shapes
    with pytest.raises(ValueError, match="image column.*image.*use model.builder: cnn or transfer"):
        build_body(meta, ModelConfig(builder="mlp"))
    assert build_body(meta, ModelConfig()).name.startswith("cnn_"), "the default builder picks the CNN"


def test_the_digits_example_config_loads_and_builds(shapes):
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.train import build_body

    cfg = load_config(Path(__file__).resolve().parents[2] / "conf" / "examples" / "digits.yaml")
    assert cfg.images.column == "image" and cfg.features.image_channels == 1 and cfg.model.builder == "cnn"
    _, _, meta = shapes
    assert build_body(meta, cfg.model).count_params() > 0
