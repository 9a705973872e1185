"""A user's own file with nothing but its label named: `pipeline train --source data.parquet --label y`.
The task (here regression) and the feature types are inferred from the data; the model is exported with a
`value` output in label units."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.e2e


def test_train_on_own_parquet_with_inferred_regression(tmp_path, penguins, run_train):
    data = penguins.drop(columns=["species", "year"]).rename(columns={"body_mass_g": "Body Mass (g)"})
    source = tmp_path / "mass.parquet"
    data.to_parquet(source)
    home = tmp_path / "home"
    result = run_train(home, "--source", str(source), "--label", "Body Mass (g)", "--epochs", "80")
    assert result.returncode == 0, result.stdout[-5000:]
    assert "Registered model: mass version 1" in result.stdout

    import tensorflow as tf

    from pipeline.preprocess import MISSING_CATEGORY

    version_dir = home / "serving" / "mass" / "1"
    meta = json.loads((version_dir / "assets.extra" / "pipeline_metadata.json").read_text())
    assert meta["task"] == "regression" and meta["label"] == "Body_Mass__g_"
    assert meta["features"] == {"numeric": ["bill_length_mm", "bill_depth_mm", "flipper_length_mm"],
                                "categorical": ["island", "sex"],
                                "kinds": {"bill_length_mm": "numeric", "bill_depth_mm": "numeric",
                                          "flipper_length_mm": "numeric", "island": "categorical",
                                          "sex": "categorical"}}
    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    assert set(fn.structured_outputs) == {"value"}
    rows = data.dropna().head(50)
    out = fn(bill_length_mm=tf.constant(rows["bill_length_mm"], tf.float32),
             bill_depth_mm=tf.constant(rows["bill_depth_mm"], tf.float32),
             flipper_length_mm=tf.constant(rows["flipper_length_mm"], tf.float32),
             island=tf.constant(rows["island"].fillna(MISSING_CATEGORY).astype(str)),
             sex=tf.constant(rows["sex"].fillna(MISSING_CATEGORY).astype(str)))["value"].numpy()
    error = np.abs(out - rows["Body Mass (g)"].to_numpy())
    spread = np.abs(data["Body Mass (g)"] - data["Body Mass (g)"].mean()).mean()  # predicting the mean
    assert error.mean() < 0.6 * spread, "the model learned, and answers in grams"
    assert meta["metrics"]["r2"] > 0.5 and meta["metrics"]["rmse"] > 0
