from __future__ import annotations

import numpy as np
import pytest

from pipeline.features import FeatureSpec
from pipeline.preprocess import build_preprocessor, feature_arrays, label_array, load_preprocessor, save_preprocessor

SPEC = FeatureSpec(("x",), ("color",), "label", "classification")


def _run(pre, rows: dict):
    return np.asarray(pre({k: np.asarray(v).reshape(-1, 1) for k, v in rows.items()}))


def test_adapted_on_training_rows_only(tiny_frame):
    pre, meta = build_preprocessor(tiny_frame.head(6), SPEC)  # train = the six "a" rows
    assert meta.numeric_means["x"] == pytest.approx(0.3)  # mean of 0.1..0.5, NaN ignored
    assert meta.vocabularies["color"] == ["red", "blue"]   # most frequent first; None is not a category
    assert meta.class_names == ["a"]


def test_known_outputs(tiny_frame):
    pre, meta = build_preprocessor(tiny_frame, SPEC)
    values = tiny_frame["x"].to_numpy()
    mean = np.nanmean(values)
    std = np.where(np.isnan(values), mean, values).std()  # adapted on the imputed column
    out = _run(pre, {"x": np.array([mean, np.nan, mean + std], dtype=np.float32),
                     "color": np.array(["green", "", "purple"])})
    # column 0: normalized x; then one-hot [OOV, green, red, blue] (green and red tie at 4: alphabetical)
    assert meta.vocabularies["color"] == ["green", "red", "blue"]
    np.testing.assert_allclose(out[:, 0], [0.0, 0.0, 1.0], atol=1e-3)  # NaN -> training mean -> 0
    np.testing.assert_array_equal(out[:, 1:], [[0, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]])


def test_save_and_reload_gives_same_outputs(tmp_path, tiny_frame):
    pre, meta = build_preprocessor(tiny_frame, SPEC)
    paths = save_preprocessor(pre, meta, tmp_path)
    rows = feature_arrays(tiny_frame, SPEC)
    np.testing.assert_allclose(_run(load_preprocessor(paths["preprocessor"]), rows), _run(pre, rows))


def test_feature_and_label_arrays(tiny_frame):
    _, meta = build_preprocessor(tiny_frame, SPEC)
    arrays = feature_arrays(tiny_frame, SPEC)
    assert arrays["x"].dtype == np.float32 and np.isnan(arrays["x"][5])
    assert arrays["color"][3] == ""
    frame = tiny_frame.copy()
    frame.loc[0, "label"] = "zzz"
    np.testing.assert_array_equal(label_array(frame, meta), [-1] + [0] * 5 + [1] * 6)
