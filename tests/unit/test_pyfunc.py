"""pipeline.pyfunc: the exported SavedModel logged as an MLflow pyfunc, checked to load and answer."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))  # serving_models, under any import mode
import serving_models  # noqa: E402

EXAMPLE = pd.DataFrame({"bill_length_mm": [39.1, 50.0, np.nan], "island": ["Biscoe", "Dream", "Torgersen"]})


@pytest.fixture
def saved_model(tmp_path):
    """A small penguins SavedModel with the lineage file the export stage writes beside it."""
    path = serving_models.write_penguins(tmp_path / "model", 1)
    (path / "assets.extra").mkdir()
    (path / "assets.extra" / "pipeline_metadata.json").write_text(json.dumps({
        "task": "classification", "label": "species", "class_names": serving_models.CLASS_NAMES,
        "features": {"numeric": ["bill_length_mm"], "categorical": ["island"]}}))
    return path


def _log(saved_model):
    import mlflow

    from pipeline import tracking
    from pipeline.pyfunc import log_pyfunc

    tracking.configure()
    with mlflow.start_run(experiment_id=tracking.experiment_id("pyfunc-test")):
        return log_pyfunc(saved_model, EXAMPLE)


def test_logged_model_has_signature_and_example_and_answers_like_the_savedmodel(pipeline_home, saved_model):
    import mlflow

    info = _log(saved_model)
    assert info.signature is not None and [i.name for i in info.signature.inputs] == list(EXAMPLE.columns)
    assert info.saved_input_example_info is not None
    answer = mlflow.pyfunc.load_model(info.model_uri).predict(EXAMPLE)
    bills = [0.0 if np.isnan(b) else b for b in EXAMPLE["bill_length_mm"]]
    expected = serving_models.penguins_expected(bills, list(EXAMPLE["island"]), 1)
    np.testing.assert_allclose(answer[serving_models.CLASS_NAMES].to_numpy(), expected, atol=1e-6)
    assert list(answer["predicted_class"]) == [serving_models.CLASS_NAMES[i] for i in expected.argmax(axis=1)]


def test_a_logged_model_that_cannot_answer_fails_instead_of_warning(pipeline_home, saved_model):
    (saved_model / "assets.extra" / "pipeline_metadata.json").unlink()  # load_context cannot read it
    with pytest.raises(RuntimeError, match="does not answer its input example: FileNotFoundError"):
        _log(saved_model)
