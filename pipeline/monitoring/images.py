"""Image columns as the drift monitor compares them: a few statistics of each image, and the raw bytes for the model.

An image column (kind ``image``, docs/features.md) holds each row's encoded file (PNG, JPEG, GIF, BMP, WebP).
Its values are unique per row, so comparing them as categories says nothing. The monitor compares instead, per
image, simple statistics of what the model's input decoding sees (``IMAGE_STATS``):

- ``brightness``: the mean of the greyscale pixels (ITU-R 601-2 luma), in [0, 1];
- ``contrast``: their standard deviation (population), in [0, 0.5];
- ``width``, ``height``: the size in pixels of the file as sent (before the model resizes it).

``expand_images`` replaces an image column ``c`` by the numeric columns ``c.brightness``, ``c.contrast``,
``c.width`` and ``c.height`` (named like ``prediction.proba.<class>``), which the reference and the window then
summarise like any numeric feature. A missing value (None, NaN, ``""``) or one that does not decode gives NaN in
the four columns, which the drift tests count as missing.

Values come as the training split holds them (``bytes``), or as the request log gives them
(``request_log._scalar``: ``"b64:<base64>"`` for bytes that are not UTF-8; bytes that happen to be valid UTF-8
are logged as plain text and are taken back as their UTF-8 bytes). ``image_bytes`` turns any of them back into
the file's bytes, for the statistics and for the model (``monitor.saved_model_predictions``).

Cost: one PIL decode per row (no resize), the statistics from the greyscale histogram: thousands of small images
a second on one core; frames are processed batch by batch as the monitor streams them.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

IMAGE_KIND = "image"  # pipeline.features.IMAGE (not imported: this module stays light)
IMAGE_STATS = ("brightness", "contrast", "width", "height")
B64_PREFIX = "b64:"  # request_log._scalar's form of non-UTF-8 strings

_LEVELS = np.arange(256, dtype=np.float64) / 255.0
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # 16-bit greyscale PNGs: TensorFlow scales by 65535


def image_columns(lineage: Mapping) -> tuple[str, ...]:
    """The image columns of a model: its string inputs of kind ``image`` (the lineage's ``features``)."""
    feats = lineage.get("features") or {}
    kinds = feats.get("kinds") or {}
    return tuple(c for c in feats.get("categorical") or () if kinds.get(c) == IMAGE_KIND)


def stat_columns(column: str) -> tuple[str, ...]:
    """The numeric columns that stand for the image column ``column``: ``column.brightness`` ... ``column.height``."""
    return tuple(f"{column}.{s}" for s in IMAGE_STATS)


def image_bytes(value) -> bytes | None:
    """The encoded file of one image value (bytes, ``"b64:..."``, or the UTF-8 text of the bytes); ``None`` when
    missing (None, NaN, empty) or not decodable as base64."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        if value.startswith(B64_PREFIX):
            try:
                data = base64.b64decode(value[len(B64_PREFIX):], validate=False)
            except (binascii.Error, ValueError):
                return None
        else:
            try:
                data = value.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: not the text of any bytes
                return None
    else:
        return None
    return data or None


def _stats_of(data: bytes | None) -> tuple[float, float, float, float]:
    nan = math.nan
    if data is None:
        return nan, nan, nan, nan
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if im.mode in _WIDE_MODES:
                grey = np.asarray(im, dtype=np.float64).ravel() / 65535.0
                if not grey.size:
                    return nan, nan, nan, nan
                mean = float(grey.mean())
                return mean, float(np.sqrt(np.mean((grey - mean) ** 2))), float(width), float(height)
            # the histogram of the greyscale pixels: mean and std exactly, without a pixel array
            counts = np.asarray(im.convert("L").histogram(), dtype=np.float64)
    except Exception:  # noqa: BLE001 - any file PIL cannot decode is "undecodable", counted as missing
        return nan, nan, nan, nan
    n = counts.sum()
    if n <= 0:
        return nan, nan, nan, nan
    mean = float(counts @ _LEVELS / n)
    contrast = float(np.sqrt(max(float(counts @ (_LEVELS - mean) ** 2) / n, 0.0)))
    return mean, contrast, float(width), float(height)


def image_stats(values: Iterable) -> np.ndarray:
    """``IMAGE_STATS`` of each value, as a float64 array of shape ``(rows, 4)``; NaN for a missing or undecodable
    image."""
    rows = [_stats_of(image_bytes(v)) for v in values]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(IMAGE_STATS))


def expand_images(frame: pd.DataFrame, image_columns: Sequence[str]) -> pd.DataFrame:
    """``frame`` with each image column ``c`` replaced, at its place, by ``c.brightness``, ``c.contrast``,
    ``c.width`` and ``c.height`` (float64, NaN where missing or undecodable).

    Columns of ``image_columns`` that the frame lacks are left absent (the monitor then counts them as missing);
    without any image column present the frame itself is returned, untouched.
    """
    present = [c for c in image_columns if c in frame.columns]
    if not present:
        return frame
    out = frame
    for c in present:
        stats = image_stats(out[c].tolist())
        at = out.columns.get_loc(c)
        out = out.drop(columns=[c])
        for i, name in enumerate(stat_columns(c)):
            out.insert(at + i, name, stats[:, i])
    return out


def expand_batches(batches: Iterable[pd.DataFrame], image_columns: Sequence[str]) -> Iterator[pd.DataFrame]:
    """``expand_images`` of each batch (the frames pass untouched when there is no image column)."""
    if not image_columns:
        yield from batches
        return
    for frame in batches:
        yield expand_images(frame, image_columns)
