"""``pipeline.images.manifest`` and ``generate``: folders and manifests of real image files (PNG/JPEG written with
Pillow), their inspection, and the refusals of bad input by name."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.images import generate, manifest
from pipeline.images.manifest import ImageSourceError


def _png(path, size=(8, 8), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0], channels) if channels else (size[1], size[0])
    Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def test_digits_become_a_folder_of_ten_classes_with_their_digest(tmp_path):
    root = generate.write_digits(tmp_path / "digits")
    frame = manifest.inspect(manifest.scan_folder(root))
    assert len(frame) == 1797 and frame["label"].nunique() == 10
    s = manifest.summary(frame)
    assert s["size"]["width"] == {"min": 8, "median": 8.0, "max": 8} and s["channels"] == {"1": 1797}
    assert s["classes"]["digit_0"] == 178
    digest = manifest.dataset_digest(frame)
    # the same bytes and labels under other names: the same snapshot
    assert manifest.dataset_digest(frame.assign(path=frame["path"].str.replace("digits", "elsewhere"))) == digest
    relabelled = frame.copy()
    relabelled.loc[0, "label"] = "digit_9"
    assert manifest.dataset_digest(relabelled) != digest


def test_synthetic_shapes_are_balanced_rgb_images(tmp_path):
    root = generate.write_shapes(tmp_path / "shapes", 40, size=32, seed=1)
    frame = manifest.inspect(manifest.scan_folder(root))
    assert manifest.summary(frame)["classes"] == {k: 10 for k in sorted(generate.SHAPES)}
    assert set(frame["channels"]) == {3} and set(frame["width"]) == {32}
    with pytest.raises(ValueError, match="unknown shape"):
        generate.shape_image("hexagon", 16, np.random.default_rng(0))


def test_a_corrupt_and_an_empty_file_are_refused_by_name(tmp_path):
    root = tmp_path / "imgs"
    for i in range(3):
        _png(root / "cat" / f"{i}.png")
        _png(root / "dog" / f"{i}.png")
    good = (root / "cat" / "0.png").read_bytes()
    (root / "dog" / "broken.png").write_bytes(good[: len(good) // 2])
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "cat" / "notes.txt").write_text("not an image, skipped")
    frame = manifest.scan_folder(root)
    assert len(frame) == 8  # notes.txt is not an image type
    with pytest.raises(ImageSourceError) as err:
        manifest.inspect(frame)
    text = str(err.value)
    assert "2 of 8" in text and "broken.png" in text and "empty.jpg: empty file" in text


def test_a_huge_image_is_refused_with_its_size(tmp_path):
    path = _png(tmp_path / "a" / "big.png", size=(300, 200))
    with pytest.raises(ImageSourceError, match=r"big.png: 300x200 pixels, over the 50,000"):
        manifest.inspect(pd.DataFrame({"path": [str(path)], "label": ["a"]}), max_pixels=50_000)


def test_empty_and_single_class_folders_are_refused(tmp_path):
    _png(tmp_path / "one" / "cat" / "0.png")
    with pytest.raises(ImageSourceError, match="only one class"):
        manifest.scan_folder(tmp_path / "one")
    (tmp_path / "one" / "dog").mkdir()
    with pytest.raises(ImageSourceError, match="without image files: dog"):
        manifest.scan_folder(tmp_path / "one")
    with pytest.raises(ImageSourceError, match="not a folder"):
        manifest.scan_folder(tmp_path / "missing")


def test_mixed_channels_are_converted_and_named(tmp_path):
    _png(tmp_path / "r" / "a" / "rgb.png")
    _png(tmp_path / "r" / "a" / "rgb2.png")
    _png(tmp_path / "r" / "b" / "grey.png", mode="L")
    s = manifest.summary(manifest.inspect(manifest.scan_folder(tmp_path / "r")))
    assert s["common_channels"] == 3 and s["converted_channels_count"] == 1
    assert s["converted_channels"][0].endswith("grey.png")


def test_a_manifest_resolves_paths_and_names_bad_rows(tmp_path):
    _png(tmp_path / "files" / "x.png")
    _png(tmp_path / "files" / "y.png")
    pd.DataFrame({"file": ["files/x.png", "files/y.png"], "kind": ["a", "b"], "age": [1, 2]}).to_csv(
        tmp_path / "m.csv", index=False)
    frame = manifest.read_manifest(tmp_path / "m.csv", path_column="file", label_column="kind")
    assert list(frame.columns) == ["path", "label", "age"]
    assert frame["path"].tolist() == [str(tmp_path / "files" / "x.png"), str(tmp_path / "files" / "y.png")]
    with pytest.raises(ImageSourceError, match="no column 'label'"):
        manifest.read_manifest(tmp_path / "m.csv", path_column="file")
    pd.DataFrame({"path": ["files/x.png", None], "label": ["a", "b"]}).to_csv(tmp_path / "gap.csv", index=False)
    with pytest.raises(ImageSourceError, match=r"gap.csv: column 'path' is empty on line\(s\) 3"):
        manifest.read_manifest(tmp_path / "gap.csv")
    with pytest.raises(ImageSourceError, match="y.png: missing"):
        (tmp_path / "files" / "y.png").unlink()
        manifest.inspect(manifest.read_manifest(tmp_path / "m.csv", path_column="file", label_column="kind"))
