"""Ingest of image sources (``pipeline.images.snapshot`` through ``pipeline.ingest.ingest``): the snapshot of
bytes and labels, its manifest, the feature kind the validate stage infers, the split by content, and the bad
inputs refused by name with nothing published."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import ImagesConfig, SplitConfig
from pipeline.features import IMAGE, resolve_features
from pipeline.images import generate
from pipeline.ingest import IngestError, ingest


def _png(path, size=(16, 16), mode="RGB", seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0], channels) if channels else (size[1], size[0])
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def test_a_folder_of_classes_becomes_a_snapshot_of_bytes_with_its_manifest(tmp_path):
    root = generate.write_shapes(tmp_path / "shapes", 40, size=24, seed=3)
    snap = ingest(str(root), tmp_path / "run", label="label")
    table = pq.read_table(snap.path)
    assert table.column_names == ["image", "label"] and snap.rows == 40
    first = table.column("image")[0].as_py()
    with Image.open(io.BytesIO(first)) as img:
        assert img.size == (24, 24)  # the file's bytes, as they are
    manifest = pd.read_parquet(tmp_path / "run" / "manifest.parquet")
    assert {"path", "digest", "width", "height", "channels"} <= set(manifest.columns)
    assert (tmp_path / "run" / "images.json").is_file()
    # the same files give the same digest; one changed file another
    assert ingest(str(root), tmp_path / "again", label="label").digest == snap.digest
    _png(sorted((root / "circle").iterdir())[0], size=(24, 24), seed=9)
    assert ingest(str(root), tmp_path / "changed", label="label").digest != snap.digest


def test_the_image_column_is_inferred_and_the_split_follows_the_content(tmp_path):
    from pipeline.split import assign_splits

    root = generate.write_shapes(tmp_path / "shapes", 60, size=16, seed=4)
    frame = pd.read_parquet(ingest(str(root), tmp_path / "run", label="label").path)
    spec = resolve_features(frame, "label", None)
    assert spec.kind("image") == IMAGE and spec.categorical == ("image",) and spec.task == "classification"
    twice = pd.concat([frame, frame.iloc[:10]], ignore_index=True)  # the same images again
    which = assign_splits(twice, "label", SplitConfig(strategy="hash"), "classification")
    assert (which.iloc[60:].to_numpy() == which.iloc[:10].to_numpy()).all(), "a copy lands in its original's split"


def test_a_manifest_with_tabular_columns(tmp_path):
    rows = []
    for i in range(12):
        path = _png(tmp_path / "files" / f"{i}.png", seed=i)
        rows.append({"file": f"files/{path.name}", "kind": "a" if i % 2 else "b", "age": float(i)})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    snap = ingest(str(tmp_path / "manifest.csv"), tmp_path / "run", label="kind",
                  images=ImagesConfig(path_column="file"))
    frame = pd.read_parquet(snap.path)
    assert list(frame.columns) == ["image", "kind", "age"] and frame["age"].tolist() == [float(i) for i in
                                                                                         [0, 1, 10, 11, 2, 3, 4, 5,
                                                                                          6, 7, 8, 9]]


@pytest.mark.parametrize("case", ["corrupt", "empty_file", "empty_class", "single_class", "huge", "not_image"])
def test_bad_image_sources_are_refused_by_name_and_nothing_is_published(tmp_path, case):
    root = generate.write_shapes(tmp_path / "shapes", 8, size=16, seed=5)
    victim = sorted((root / "square").iterdir())[0]
    if case == "corrupt":
        victim.write_bytes(victim.read_bytes()[:40])  # a truncated PNG
        expected = [str(victim)]
    elif case == "empty_file":
        victim.write_bytes(b"")
        expected = [str(victim), "empty file"]
    elif case == "empty_class":
        (root / "hexagon").mkdir()
        expected = ["hexagon", "without image files"]
    elif case == "single_class":
        for folder in root.iterdir():
            if folder.name != "circle":
                for f in folder.iterdir():
                    f.unlink()
                folder.rmdir()
        expected = ["only one class", "circle"]
    elif case == "huge":
        _png(victim, size=(300, 300))
        expected = [str(victim), "300x300 pixels, over the 62,500 allowed"]
    else:
        victim.write_bytes(b"this is not an image at all, just text")
        expected = [str(victim), "not an image this reader can decode"]
    out = tmp_path / "run"
    with pytest.raises(IngestError) as err:
        ingest(str(root), out, label="label", images=ImagesConfig(max_pixels=250 * 250))
    for part in expected:
        assert part in str(err.value)
    assert not (out / "snapshot.parquet").exists() and not list(out.glob(".*tmp")) if out.exists() else True


def test_mixed_channels_are_converted_and_named(tmp_path):
    root = generate.write_shapes(tmp_path / "shapes", 8, size=16, seed=6)
    odd = _png(root / "circle" / "grey.png", size=(16, 16), mode="L")
    snap = ingest(str(root), tmp_path / "run", label="label")
    import json

    facts = json.loads((tmp_path / "run" / "images.json").read_text())
    assert facts["channels"] == {"1": 1, "3": 8} and facts["converted_channels"] == [str(odd)]
    assert snap.rows == 9
