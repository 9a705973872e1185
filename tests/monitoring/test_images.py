"""Image columns in the drift monitor (``pipeline.monitoring.images``): per-image brightness, contrast and size
compared like numeric features, from the training split's bytes and from the request log's ``{"b64": ...}``
values; the image bytes fed to the model for the prediction drift. Small PNGs made with PIL, no network."""

from __future__ import annotations

import base64
import io
import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.monitoring.images import IMAGE_STATS, expand_images, image_bytes, image_stats, stat_columns
from pipeline.monitoring.monitor import MonitorConfig, lineage_features, run_monitor, serving_inputs
from pipeline.monitoring.request_log import iter_request_log, read_request_log

END = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CLASSES = ["dark", "light"]
STATS = list(stat_columns("image"))


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return "b64:" + base64.b64encode(data).decode()


def _images(n: int, seed: int, level: tuple[float, float] = (0.35, 0.65), size: int = 16) -> list[bytes]:
    """``n`` noisy grey PNGs of ``size`` x ``size``, each of a mean level drawn uniformly in ``level``."""
    rng = np.random.default_rng(seed)
    out = []
    for mean in rng.uniform(*level, n):
        pixels = np.clip(rng.normal(mean * 255, 20, (size, size)), 0, 255).astype(np.uint8)
        out.append(_png(pixels))
    return out


def _label(images: list[bytes]) -> np.ndarray:
    return np.where(image_stats(images)[:, 0] > 0.5, "light", "dark")


def _lineage(tmp_path, train: pd.DataFrame) -> "Path":  # noqa: F821
    version_dir = tmp_path / "serving" / "shades" / "1"
    (version_dir / "assets.extra").mkdir(parents=True)
    train.to_parquet(tmp_path / "train.parquet")
    meta = {
        "model_name": "shades",
        "version": 1,
        "task": "classification",
        "label": "label",
        "features": {"numeric": [], "categorical": ["image"], "kinds": {"image": "image"}},
        "class_names": CLASSES,
        "dataset": {"snapshot": str(tmp_path / "train.parquet"), "digest": "sha-img", "rows": len(train)},
        "train_split": str(tmp_path / "train.parquet"),
        "metrics": {"accuracy": 0.9},
        "blessed": True,
    }
    path = version_dir / "assets.extra" / "pipeline_metadata.json"
    path.write_text(json.dumps(meta))
    return path


@pytest.fixture
def lineage_path(tmp_path, monkeypatch):
    """An image classifier's exported version (lineage and training split, no SavedModel): 200 mid-grey PNGs."""
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    images = _images(200, seed=1)
    return _lineage(tmp_path, pd.DataFrame({"image": images, "label": _label(images)}))


def _outputs(frame: pd.DataFrame) -> pd.DataFrame:
    """A stand-in model on the image bytes: P(light) is the brightness. It fails on anything but bytes."""
    assert all(isinstance(v, bytes) for v in frame["image"]), "the model is fed the files' bytes"
    p = image_stats(frame["image"].tolist())[:, 0]
    return pd.DataFrame({"output.probabilities": list(np.column_stack([1 - p, p]))}, index=frame.index)


def _write_log(home, images: list[bytes], ts: datetime, *, with_outputs: bool = True) -> None:
    """The request log as the server writes it: non-UTF-8 bytes as ``{"b64": ...}``."""
    folder = home / "request_logs" / "shades" / ts.strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)
    outputs = _outputs(pd.DataFrame({"image": images}))["output.probabilities"] if with_outputs else None
    lines = []
    for i, data in enumerate(images):
        rec = {"request_id": f"r{i}", "row": 0, "ts": ts.isoformat(), "model_name": "shades", "model_version": 1,
               "signature_name": "serving_default", "api": "rest",
               "features": {"image": {"b64": base64.b64encode(data).decode()}},
               "outputs": {"probabilities": [float(x) for x in outputs.iloc[i]]} if with_outputs else {}}
        lines.append(json.dumps(rec))
    (folder / f"{ts:%H}-1.jsonl").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------------
# The statistics


def test_statistics_of_known_images():
    white = _png(np.full((16, 16), 255, np.uint8))
    wide = _png(np.zeros((10, 20), np.uint8))  # 10 rows of 20 pixels: 20 wide, 10 high
    halves = _png(np.repeat(np.array([[0], [255]], np.uint8), 8, axis=0).repeat(8, axis=1))
    red = _png(np.tile(np.array([255, 0, 0], np.uint8), (4, 4, 1)))
    deep = _png(np.full((4, 4), 65535, np.uint16))  # a 16-bit greyscale PNG
    buf = io.BytesIO()
    Image.new("RGB", (12, 6), (128, 128, 128)).save(buf, format="JPEG")
    stats = image_stats([white, _b64(white), wide, halves, red, deep, buf.getvalue()])
    np.testing.assert_allclose(stats[0], [1.0, 0.0, 16, 16])
    np.testing.assert_allclose(stats[1], stats[0])  # the request log's "b64:" form reads the same
    np.testing.assert_allclose(stats[2], [0.0, 0.0, 20, 10])
    np.testing.assert_allclose(stats[3], [0.5, 0.5, 8, 16])
    np.testing.assert_allclose(stats[4], [76 / 255, 0.0, 4, 4])  # luma of pure red: 0.299
    np.testing.assert_allclose(stats[5], [1.0, 0.0, 4, 4])
    np.testing.assert_allclose(stats[6, 2:], [12, 6])
    assert abs(stats[6, 0] - 128 / 255) < 0.02 and stats[6, 1] < 0.02


def test_missing_and_undecodable_images_are_nan():
    values = [None, float("nan"), "", b"", b"not an image", "b64:!!not base64", "b64:" + "A" * 8, 3, pd.NA,
              _png(np.zeros((4, 4), np.uint8))[:30]]
    stats = image_stats(values)
    assert stats.shape == (len(values), len(IMAGE_STATS)) and np.isnan(stats).all()
    assert image_stats([]).shape == (0, 4)


def test_image_bytes_gives_back_the_file():
    data = _png(np.zeros((2, 2), np.uint8))
    assert image_bytes(data) == data and image_bytes(bytearray(data)) == data and image_bytes(_b64(data)) == data
    assert image_bytes("BM text") == b"BM text"  # bytes the log wrote as text (valid UTF-8) are taken back
    assert image_bytes(None) is None and image_bytes("") is None and image_bytes(math.nan) is None


def test_expand_images_replaces_the_column_in_place():
    images = _images(5, seed=0)
    frame = pd.DataFrame({"id": range(5), "image": images, "label": list("abcab")})
    out = expand_images(frame, ["image", "absent"])
    assert list(out.columns) == ["id", *STATS, "label"]
    assert all(out[c].dtype == np.float64 for c in STATS)
    np.testing.assert_allclose(out[STATS].to_numpy(), image_stats(images))
    assert list(frame.columns) == ["id", "image", "label"], "the input frame is left as it was"
    window = pd.DataFrame({"image": [_b64(v) for v in images] + [None]}, index=range(10, 16))
    np.testing.assert_allclose(expand_images(window, ["image"]).iloc[:5].to_numpy(), out[STATS].to_numpy())
    assert expand_images(window, ["image"]).iloc[5].isna().all()
    assert list(expand_images(window, ["image"]).index) == list(range(10, 16))
    tabular = pd.DataFrame({"x": [1.0]})
    assert expand_images(tabular, ["image"]) is tabular and expand_images(tabular, []) is tabular


def test_lineage_features_compare_image_statistics():
    lineage = {
        "task": "classification",
        "class_names": CLASSES,
        "features": {"numeric": ["x"], "categorical": ["image", "c", "when"],
                     "kinds": {"x": "numeric", "image": "image", "c": "categorical", "when": "datetime"}},
    }
    types = lineage_features(lineage, with_predictions=True)
    assert types.numeric == ("x", *STATS) and types.categorical == ("c",)
    assert types.prediction_numeric == ("prediction.proba.dark", "prediction.proba.light")
    assert types.prediction_categorical == ("prediction.class",)
    tabular = {"task": "regression", "features": {"numeric": ["x"], "categorical": ["c"]}}
    assert lineage_features(tabular, with_predictions=False).to_dict() == {
        "numeric": ["x"], "categorical": ["c"], "prediction_numeric": [], "prediction_categorical": []}


def test_serving_inputs_feed_the_image_bytes():
    data = _png(np.zeros((2, 2), np.uint8))
    lineage = {"features": {"numeric": ["x"], "categorical": ["image", "c"], "kinds": {"image": "image"}}}
    frame = pd.DataFrame({"x": ["1.5", None], "image": [data, _b64(data)], "c": ["a", None]})
    inputs = serving_inputs(frame, lineage)
    assert list(inputs["image"]) == [data, data] and inputs["image"].dtype == object
    assert list(inputs["c"]) == ["a", ""] and inputs["x"].dtype == np.float32 and np.isnan(inputs["x"][1])
    assert list(serving_inputs(frame.assign(image=[None, ""]), lineage)["image"]) == [b"", b""]


# ---------------------------------------------------------------------------------------------------------
# The monitor


def test_a_bright_request_log_drifts_on_brightness_and_predictions(tmp_path, lineage_path):
    config = MonitorConfig(model_name="shades", mlflow=False)
    home = tmp_path / "logs"
    _write_log(home, _images(200, seed=2, level=(0.75, 0.95)), END - timedelta(hours=1))
    window = read_request_log("shades", END - timedelta(hours=2), END, base_dir=home / "request_logs")
    assert window["image"].str.startswith("b64:").all()  # as the request log gives it
    result = run_monitor(config, window, lineage_path, predict_reference=_outputs, log_mlflow=False,
                         report_dir=tmp_path / "report")
    doc = json.loads(result.to_json())
    assert set(doc["features"]) == set(STATS) and doc["new_columns"] == []
    assert doc["features"]["image.brightness"]["drift"] and doc["dataset_drift"]
    assert not doc["features"]["image.width"]["drift"] and not doc["features"]["image.height"]["drift"]
    assert doc["prediction_drift"] and doc["predictions"]["prediction.proba.light"]["drift"]
    assert (tmp_path / "report" / "report.html").exists()
    cached = json.loads((tmp_path / "home" / "monitoring" / "reference" / "shades" / "1" / "reference.json")
                        .read_text())
    assert cached["features"]["numeric"] == STATS and "image" not in cached["categorical"]


def test_a_window_like_the_reference_does_not_drift(tmp_path, lineage_path):
    config = MonitorConfig(model_name="shades", mlflow=False)
    home = tmp_path / "logs"
    _write_log(home, _images(200, seed=3), END - timedelta(hours=1))
    batches = iter_request_log("shades", END - timedelta(hours=2), END, base_dir=home / "request_logs",
                               batch_rows=64)
    result = run_monitor(config, batches, lineage_path, predict_reference=_outputs, log_mlflow=False)
    assert result.n_current == 200 and not result.dataset_drift and not result.prediction_drift
    assert not any(f.drift for f in result.features.values())
    assert result.features["image.brightness"].details["current_missing_rate"] == 0.0


def test_a_current_parquet_of_bytes_with_other_sizes(tmp_path, lineage_path):
    """A ``--current`` file of Parquet shards with a binary image column, read batch by batch; a third of the
    rows undecodable."""
    images = _images(300, seed=4, size=24)
    images[::3] = [b"broken"] * 100
    shards = tmp_path / "current"
    shards.mkdir()
    for i in range(3):
        pd.DataFrame({"image": images[i * 100 : (i + 1) * 100]}).to_parquet(shards / f"part-{i}.parquet")
    result = run_monitor(MonitorConfig(model_name="shades"), shards, lineage_path, log_mlflow=False)
    assert result.features["image.width"].drift and result.features["image.height"].drift
    width = result.features["image.width"]
    assert width.details["current_missing_rate"] == pytest.approx(1 / 3) and width.missing.drift
    brightness = result.features["image.brightness"]
    assert brightness.distribution is not None and not brightness.distribution.drift, "the same shades"


def test_the_saved_model_is_fed_the_image_bytes(tmp_path, lineage_path):
    """The prediction drift through ``saved_model_predictions``: a real SavedModel next to the lineage whose
    ``serving_default`` decodes the PNG bytes (P(light) = mean pixel), loaded because the window has outputs."""
    tf = pytest.importorskip("tensorflow")

    class Shades(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image")])
        def serve(self, image):
            def level(data):
                pixels = tf.io.decode_image(data, channels=1, expand_animations=False, dtype=tf.float32)
                return tf.reduce_mean(pixels)

            p = tf.map_fn(level, image, fn_output_signature=tf.float32)
            return {"probabilities": tf.stack([1 - p, p], axis=1)}

    module = Shades()
    tf.saved_model.save(module, str(lineage_path.parent.parent), signatures={"serving_default": module.serve})
    home = tmp_path / "logs"
    _write_log(home, _images(200, seed=5, level=(0.75, 0.95)), END - timedelta(hours=1))
    window = iter_request_log("shades", END - timedelta(hours=2), END, base_dir=home / "request_logs")
    result = run_monitor(MonitorConfig(model_name="shades"), window, lineage_path, log_mlflow=False)
    assert "predictions_error" not in result.meta, result.meta.get("predictions_error")
    assert result.prediction_drift and result.predictions["prediction.class"].drift
    assert result.features["image.brightness"].drift


def test_the_drift_monitor_tasks_on_an_image_request_log(tmp_path, lineage_path, monkeypatch):
    """``resolve_task`` pins the log's ``"b64:"`` values in ``window.parquet``; ``analyse_task`` reads them back
    batch by batch and flags the brightness."""
    from pipeline.monitoring import tasks

    monkeypatch.setenv("PIPELINE_SERVING_BASE", str(tmp_path / "serving"))
    monkeypatch.setattr(tasks, "BATCH_ROWS", 64)
    _write_log(tmp_path / "home", _images(200, seed=6, level=(0.75, 0.95)), END - timedelta(hours=1),
               with_outputs=False)
    config = tmp_path / "monitor.yaml"
    config.write_text("serving: {model_name: shades}\nmonitoring: {mlflow: false, report: false}\n")
    params = {"config": str(config), "mlflow": False, "lookback_hours": 24}
    resolved = tasks.resolve_task(params, "run-1", END, None)
    assert resolved["model_version"] == 1 and resolved["rows"] == 200
    analysed = tasks.analyse_task(params, "drift_monitor", "run-1", resolved)
    assert analysed["dataset_drift"] and "image.brightness" in analysed["drifted_features"]
