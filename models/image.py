"""Image builders: a small convolutional network (``cnn``) and transfer learning from a ``keras.applications``
architecture whose weights come from a file the user names (``transfer``).

Both read the ``image__<column>`` inputs (``(height, width, channels)`` uint8 pixels, decoded and resized by
the preprocessor inside the served model; rescaled to [0, 1] here) and concatenate what they make of them with the table's other columns
(``models.layers.encode``), so a manifest's tabular columns can sit beside the image. Augmentation layers come
first: Keras runs them in training only, so the endpoint and the evaluation see the images as they are (a random
crop becomes a centre crop of the same size there, resized back, so both paths see the same framing).
"""
from __future__ import annotations

from typing import Any

FLIPS = ("horizontal", "vertical", "horizontal_and_vertical", "none")
# architecture -> how it wants its pixels: "tf" in [-1, 1], "raw" in [0, 255] (the model rescales itself),
# "torch" standardised by ImageNet's channel means and deviations.
ARCHITECTURES = {"MobileNetV2": "tf", "MobileNetV3Small": "raw", "MobileNetV3Large": "raw", "EfficientNetB0": "raw",
                 "EfficientNetV2B0": "raw", "ResNet50V2": "tf", "DenseNet121": "torch", "Xception": "tf",
                 "NASNetMobile": "tf"}
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def augmentation(name: str, *, flip: str = "horizontal", rotation: float = 0.0, zoom: float = 0.0,
                 translation: float = 0.0, crop: float = 0.0, contrast: float = 0.0, brightness: float = 0.0,
                 shape: tuple[int, int, int], seed: int = 0) -> list:
    """The augmentation layers, in order: flip, rotation (a fraction of a full turn), zoom and translation (of
    the size), crop (the fraction cut off each side, then resized back), contrast and brightness (factors)."""
    import keras

    if flip not in FLIPS:
        raise ValueError(f"flip: one of {', '.join(FLIPS)}, got {flip!r}")
    height, width, _ = shape
    out: list[Any] = []
    if flip != "none":
        out.append(keras.layers.RandomFlip(flip, seed=seed, name=f"{name}_flip"))
    if rotation:
        out.append(keras.layers.RandomRotation(rotation, fill_mode="reflect", seed=seed, name=f"{name}_rotation"))
    if zoom:
        out.append(keras.layers.RandomZoom(zoom, fill_mode="reflect", seed=seed, name=f"{name}_zoom"))
    if translation:
        out.append(keras.layers.RandomTranslation(translation, translation, fill_mode="reflect", seed=seed,
                                                  name=f"{name}_translation"))
    if crop:
        ch, cw = max(1, round(height * (1 - 2 * crop))), max(1, round(width * (1 - 2 * crop)))
        out += [keras.layers.RandomCrop(ch, cw, seed=seed, name=f"{name}_crop"),
                keras.layers.Resizing(height, width, name=f"{name}_crop_resize")]
    if contrast:
        out.append(keras.layers.RandomContrast(contrast, value_range=(0, 1), seed=seed, name=f"{name}_contrast"))
    if brightness:
        out.append(keras.layers.RandomBrightness(brightness, value_range=(0, 1), seed=seed,
                                                 name=f"{name}_brightness"))
    return out


def _images(spec) -> dict[str, tuple[int, int, int]]:
    if not spec.images:
        raise ValueError("this builder reads images and the data has no image column (feature kind image)")
    return dict(spec.images)


def _others(inputs: dict, spec, text_units: int = 64):
    """The table's other columns as one vector (None when there are none)."""
    from models.layers import encode

    rest = {k: v for k, v in inputs.items() if not k.startswith(("image__", "tokens__"))}
    if not rest:
        return None
    return encode(rest, spec, text_units=text_units, images_ok=True)


def _check_fraction(name: str, value: float, high: float = 0.5) -> None:
    if not 0 <= float(value) < high:
        raise ValueError(f"{name}: a fraction in [0, {high}), got {value!r}")


def build_cnn(inputs, spec, *, filters: tuple = (32, 64, 128), convs_per_block: int = 2, dense_units: int = 128,
              dropout: float = 0.3, flip: str = "horizontal", rotation: float = 0.05, zoom: float = 0.1,
              translation: float = 0.0, crop: float = 0.0, contrast: float = 0.1, brightness: float = 0.0):
    """A small CNN: per image, the augmentation, then one block per entry of ``filters`` (``convs_per_block``
    3x3 convolutions with batch normalisation and ReLU, then 2x2 max pooling), global average pooling; the
    vectors of all images and of the other columns concatenated, a Dense layer of ``dense_units`` with
    ``dropout``, and the task's head."""
    import keras

    from models.layers import head

    for key, value in (("rotation", rotation), ("zoom", zoom), ("translation", translation), ("crop", crop),
                       ("contrast", contrast), ("brightness", brightness)):
        _check_fraction(key, value, 1.0)
    parts = []
    for key, shape in _images(spec).items():
        x = keras.layers.Rescaling(1 / 255, name=f"{key}_rescale")(inputs[key])
        for layer in augmentation(key, flip=flip, rotation=rotation, zoom=zoom, translation=translation, crop=crop,
                                  contrast=contrast, brightness=brightness, shape=shape):
            x = layer(x)
        for b, n in enumerate(filters):
            for c in range(int(convs_per_block)):
                x = keras.layers.Conv2D(int(n), 3, padding="same", use_bias=False, name=f"{key}_b{b}_conv{c}")(x)
                # momentum 0.9, not Keras' 0.99: the moving statistics must settle within the few hundred steps a
                # small image set trains for, or the evaluation sees other activations than training did
                x = keras.layers.BatchNormalization(momentum=0.9, name=f"{key}_b{b}_bn{c}")(x)
                x = keras.layers.ReLU(name=f"{key}_b{b}_relu{c}")(x)
            if min(x.shape[1], x.shape[2]) >= 2:
                x = keras.layers.MaxPooling2D(2, name=f"{key}_b{b}_pool")(x)
        parts.append(keras.layers.GlobalAveragePooling2D(name=f"{key}_pool")(x))
    rest = _others(inputs, spec)
    if rest is not None:
        parts.append(rest)
    x = parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="image_features")(parts)
    x = keras.layers.Dropout(dropout, name="features_dropout")(x)
    x = keras.layers.Dense(int(dense_units), activation="relu", name="dense")(x)
    x = keras.layers.Dropout(dropout, name="dense_dropout")(x)
    return head(x, spec)


def _pixels_for(architecture: str, x, key: str):
    """[0, 1] floats -> the value range ``architecture`` was trained on."""
    import keras

    mode = ARCHITECTURES[architecture]
    if mode == "tf":
        return keras.layers.Rescaling(2.0, offset=-1.0, name=f"{key}_to_tf_range")(x)
    if mode == "raw":
        return keras.layers.Rescaling(255.0, name=f"{key}_to_raw_range")(x)
    variance = [s * s for s in _TORCH_STD]
    return keras.layers.Normalization(mean=list(_TORCH_MEAN), variance=variance, name=f"{key}_to_torch_range")(x)


def backbone(architecture: str, shape: tuple[int, int, int], weights: str | None, alpha: float | None = None):
    """The ``keras.applications`` architecture without its classifier, global-average-pooled, on 3-channel
    images of ``shape``, its weights loaded from the file ``weights`` (None: randomly initialised). The weights
    file must be that architecture's without the top (``include_top=False``), for example written once by
    ``keras.applications.MobileNetV2(include_top=False, weights="imagenet").save_weights("mobilenet_v2.weights.h5")``
    on a machine with network access."""
    import keras

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture: one of {', '.join(ARCHITECTURES)}, got {architecture!r}")
    if weights == "imagenet":
        raise ValueError("weights: 'imagenet' would download at run time; save the weights to a file once "
                         "(see models.image.backbone) and give its path")
    if weights is not None:
        from pathlib import Path

        if not Path(weights).is_file():
            raise ValueError(f"weights: {weights}: no such file")
    kwargs: dict[str, Any] = {"include_top": False, "weights": None, "input_shape": (shape[0], shape[1], 3),
                              "pooling": "avg"}
    if alpha is not None:
        kwargs["alpha"] = alpha
    if architecture.startswith("MobileNetV3"):
        kwargs["include_preprocessing"] = True
    model = getattr(keras.applications, architecture)(**kwargs)
    if weights is not None:
        try:
            model.load_weights(weights)
        except Exception as exc:  # the message says which layer or shape did not match
            raise ValueError(f"weights: {weights}: not the weights of {architecture} without its top at "
                             f"{shape[0]}x{shape[1]}x3{f' alpha {alpha}' if alpha else ''}: {exc}") from exc
    model.name = "backbone"
    return model


def build_transfer(inputs, spec, *, architecture: str = "MobileNetV2", weights: str | None = None,
                   alpha: float | None = None, freeze_epochs: int = 5, fine_tune_layers: int = -1,
                   fine_tune_learning_rate: float = 0.1, dense_units: int = 0, dropout: float = 0.2,
                   flip: str = "horizontal", rotation: float = 0.05, zoom: float = 0.1, translation: float = 0.0,
                   crop: float = 0.0, contrast: float = 0.1, brightness: float = 0.0):
    """Transfer learning: the augmentation, the pixels put into the range ``architecture`` expects (grey images
    repeated to three channels), the pretrained ``backbone`` (its batch normalisation always in inference
    mode, as fine-tuning wants), dropout, an optional Dense layer of ``dense_units``, and the head.

    Training freezes the backbone for ``freeze_epochs`` epochs (only the new head learns, so its random start
    does not wreck the pretrained features), then unfreezes its last ``fine_tune_layers`` layers (-1: all; 0:
    never) and goes on with the learning rate multiplied by ``fine_tune_learning_rate``
    (``pipeline.train``). ``weights`` names a local weights file (see :func:`backbone`); None trains from random
    weights, which is only useful for tests."""
    import keras

    from models.layers import head

    if int(freeze_epochs) < 0:
        raise ValueError(f"freeze_epochs: 0 or more, got {freeze_epochs!r}")
    if not 0 < float(fine_tune_learning_rate) <= 1:
        raise ValueError(f"fine_tune_learning_rate: a factor in (0, 1], got {fine_tune_learning_rate!r}")
    images = _images(spec)
    if len(set(images.values())) > 1 or len(images) > 1:
        raise ValueError(f"builder transfer reads one image column, got {', '.join(images)}")
    (key, shape), = images.items()
    net = backbone(architecture, shape, weights, alpha)
    net.fine_tune = {"freeze_epochs": int(freeze_epochs), "layers": int(fine_tune_layers),
                     "learning_rate": float(fine_tune_learning_rate)}
    x = keras.layers.Rescaling(1 / 255, name=f"{key}_rescale")(inputs[key])
    for layer in augmentation(key, flip=flip, rotation=rotation, zoom=zoom, translation=translation, crop=crop,
                              contrast=contrast, brightness=brightness, shape=shape):
        x = layer(x)
    if shape[2] == 1:
        x = keras.layers.Concatenate(name=f"{key}_grey_to_rgb")([x, x, x])
    x = _pixels_for(architecture, x, key)
    x = net(x, training=False)
    parts = [x]
    rest = _others(inputs, spec)
    if rest is not None:
        parts.append(rest)
    x = parts[0] if len(parts) == 1 else keras.layers.Concatenate(name="image_features")(parts)
    x = keras.layers.Dropout(dropout, name="features_dropout")(x)
    if dense_units:
        x = keras.layers.Dense(int(dense_units), activation="relu", name="dense")(x)
        x = keras.layers.Dropout(dropout, name="dense_dropout")(x)
    return head(x, spec)


def fine_tune_backbone(model) -> Any:
    """The layer of ``model`` that carries a freeze-then-fine-tune plan (``fine_tune``), or None."""
    for layer in model.layers:
        if isinstance(getattr(layer, "fine_tune", None), dict):
            return layer
    return None


def set_backbone_trainable(layer, trainable: bool, last_layers: int = -1) -> int:
    """Freeze the backbone, or unfreeze its last ``last_layers`` layers (-1: all); batch normalisation layers
    stay frozen either way. Returns how many of its layers are trainable."""
    import keras

    layer.trainable = trainable
    if not trainable:
        return 0
    inner = list(layer.layers)
    cut = 0 if last_layers < 0 else max(0, len(inner) - int(last_layers))
    count = 0
    for i, sub in enumerate(inner):
        sub.trainable = i >= cut and not isinstance(sub, keras.layers.BatchNormalization)
        count += int(sub.trainable)
    return count
