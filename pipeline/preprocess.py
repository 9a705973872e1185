"""Preprocess: Keras preprocessing layers adapted on the training split only, shipped inside the model.

The preprocessor is a Keras model from raw features (one input per feature key, shape ``(1,)``: float32 for
numeric, string for categorical) to one float vector:
numeric  -> missing values replaced by the training mean -> ``Normalization`` adapted on the training split;
categorical -> ``StringLookup`` adapted on the training split, one-hot, with an out-of-vocabulary slot.
Because it is part of the trained and exported model, the endpoint takes raw features by column name and no
preprocessing code runs outside the model.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.features import FeatureSpec

if TYPE_CHECKING:
    import keras
    import numpy as np
    import pandas as pd
    import tensorflow as tf

MISSING_CATEGORY = ""  # what a missing categorical value is fed as, in training and at the endpoint


@dataclass(frozen=True)
class PreprocessMeta:
    """What training and export need to know besides the preprocessor itself."""

    spec: dict
    class_names: list[str]          # classification: label values in output order; regression: []
    label_mean: float = 0.0         # regression: the model predicts in label units via these
    label_std: float = 1.0
    numeric_means: dict | None = None
    vocabularies: dict | None = None

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.spec)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "PreprocessMeta":
        return cls(**json.loads(Path(path).read_text()))


def _register_layers():
    import keras

    @keras.saving.register_keras_serializable(package="pipeline")
    class FillMissing(keras.layers.Layer):
        """Replace NaN by a constant (the training mean), so a missing numeric value is a typical one."""

        def __init__(self, value: float = 0.0, **kwargs):
            super().__init__(**kwargs)
            self.value = float(value)

        def call(self, x):
            return keras.ops.where(keras.ops.isnan(x), keras.ops.full_like(x, self.value), x)

        def get_config(self):
            return {**super().get_config(), "value": self.value}

    return FillMissing


_FILL_MISSING = None


def fill_missing_layer():
    """The registered ``FillMissing`` layer class (registered once, on first use, so importing is cheap)."""
    global _FILL_MISSING
    if _FILL_MISSING is None:
        _FILL_MISSING = _register_layers()
    return _FILL_MISSING


def feature_arrays(df: "pd.DataFrame", spec: FeatureSpec) -> dict[str, "np.ndarray"]:
    """Raw feature columns as the model's inputs expect them: float32 (NaN = missing) and str ('' = missing)."""
    import numpy as np
    import pandas as pd

    out = {}
    for col in spec.numeric:
        out[col] = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan)
    for col in spec.categorical:
        s = df[col]
        out[col] = np.where(s.isna(), MISSING_CATEGORY, s.astype(str)).astype(str)
    return out


def label_array(df: "pd.DataFrame", meta: PreprocessMeta) -> "np.ndarray":
    """Class indices (classification, -1 for a class unseen in training) or float32 values (regression)."""
    import numpy as np

    spec = meta.feature_spec
    if spec.task == "classification":
        index = {name: i for i, name in enumerate(meta.class_names)}
        return np.array([index.get(str(v), -1) for v in df[spec.label]], dtype=np.int64)
    return df[spec.label].to_numpy(dtype=np.float32)


def make_dataset(df: "pd.DataFrame", meta: PreprocessMeta, batch_size: int, shuffle: bool = False,
                 seed: int = 0, with_label: bool = True) -> "tf.data.Dataset":
    """A batched ``tf.data`` pipeline of ``({key: (batch, 1)}, label)``; strings go through tf.data because
    Keras 3 ``fit`` rejects NumPy string arrays."""
    import tensorflow as tf

    feats = {k: v.reshape(-1, 1) for k, v in feature_arrays(df, meta.feature_spec).items()}
    ds = tf.data.Dataset.from_tensor_slices((feats, label_array(df, meta)) if with_label else feats)
    if shuffle:
        ds = ds.shuffle(len(df), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def model_inputs(spec: FeatureSpec) -> dict[str, "keras.KerasTensor"]:
    import keras

    inputs = {c: keras.Input(shape=(1,), name=c, dtype="float32") for c in spec.numeric}
    inputs.update({c: keras.Input(shape=(1,), name=c, dtype="string") for c in spec.categorical})
    return inputs


def build_preprocessor(train_df: "pd.DataFrame", spec: FeatureSpec) -> tuple["keras.Model", PreprocessMeta]:
    """Adapt the preprocessing layers on ``train_df`` (the training split only) and return the preprocessor
    with the metadata that training and export need."""
    import keras
    import numpy as np

    fill_missing = fill_missing_layer()
    arrays = feature_arrays(train_df, spec)
    inputs = model_inputs(spec)
    encoded, means, vocabs = [], {}, {}
    for col in spec.numeric:
        values = arrays[col]
        mean = float(np.nanmean(values)) if np.isfinite(values).any() else 0.0
        filled = np.where(np.isnan(values), mean, values).reshape(-1, 1)
        norm = keras.layers.Normalization(name=f"{col}_norm")
        norm.adapt(filled)
        encoded.append(norm(fill_missing(mean, name=f"{col}_fill")(inputs[col])))
        means[col] = mean
    for col in spec.categorical:
        # The vocabulary is the training split's values, most frequent first; missing ("") and unseen values share
        # the out-of-vocabulary slot. It is passed explicitly rather than through adapt(): an adapted one-hot
        # StringLookup does not reload from a .keras file.
        values, counts = np.unique(arrays[col][arrays[col] != MISSING_CATEGORY], return_counts=True)
        vocab = [str(v) for v in values[np.lexsort((values, -counts))]]
        lookup = keras.layers.StringLookup(vocabulary=vocab, output_mode="one_hot", num_oov_indices=1,
                                           name=f"{col}_lookup")
        encoded.append(lookup(inputs[col]))
        vocabs[col] = vocab
    x = encoded[0] if len(encoded) == 1 else keras.layers.Concatenate(name="features")(encoded)
    preprocessor = keras.Model(inputs, x, name="preprocessor")

    if spec.task == "classification":
        class_names = sorted(str(v) for v in train_df[spec.label].dropna().unique())
        label_mean, label_std = 0.0, 1.0
    else:
        y = train_df[spec.label].to_numpy(dtype=np.float64)
        class_names, label_mean, label_std = [], float(np.mean(y)), float(np.std(y) or 1.0)
    meta = PreprocessMeta(spec.to_dict(), class_names, label_mean, label_std, means, vocabs)
    return preprocessor, meta


def save_preprocessor(preprocessor: "keras.Model", meta: PreprocessMeta, out_dir: str | Path) -> dict[str, str]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path, meta_path = out_dir / "preprocessor.keras", out_dir / "meta.json"
    preprocessor.save(model_path)
    meta.save(meta_path)
    return {"preprocessor": str(model_path), "meta": str(meta_path)}


def load_preprocessor(path: str | Path) -> "keras.Model":
    import keras

    fill_missing_layer()
    return keras.models.load_model(path)
