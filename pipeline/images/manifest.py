"""The manifest of an image dataset: one row per file (``path``, ``label``, and what ingest learns of it).

A source is a folder of class subfolders (``root/<class>/*.png|jpg|...``: :func:`scan_folder`) or a CSV/Parquet
manifest with a path column and a label column, paths relative to the manifest's folder (:func:`read_manifest`;
other columns are kept, for tabular features beside the image). :func:`inspect` opens every file and adds its
``digest`` (SHA-256 of the bytes), ``width``, ``height``, ``channels`` and ``format``; a file that cannot be
decoded, is empty, or is larger than ``max_pixels`` is refused by name, all of them in one error. Images whose
channel count differs from the most common one are not refused: decoding converts them (greyscale to RGB, RGBA to
RGB...) and :func:`summary` names them. :func:`dataset_digest` identifies the snapshot: the files' digests and
labels, in path order.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
PATH, LABEL = "path", "label"
MAX_PIXELS = 40_000_000  # a 6,300 x 6,300 image; larger ones are refused, not resized blindly
_CHANNELS = {"1": 1, "L": 1, "P": 3, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4, "YCbCr": 3, "I": 1, "I;16": 1, "F": 1}


class ImageSourceError(ValueError):
    """A source or files that cannot be used; the message names the folder, the column or the files."""


def scan_folder(root: str | Path) -> pd.DataFrame:
    """``path`` and ``label`` of every image file under ``root/<class>/`` (the class is the subfolder's name),
    sorted by path. Hidden files and files of other types are skipped.

    Raises:
        ImageSourceError: ``root`` is not a folder, has no class subfolder, a class subfolder holds no image
            (named), or there is only one class (named).
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageSourceError(f"{root}: not a folder (expected class subfolders: {root}/<class>/*.png)")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ImageSourceError(f"{root}: no class subfolders (expected {root}/<class>/*.png)")
    rows, empty = [], []
    for folder in classes:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            empty.append(folder.name)
        rows += [(str(p), folder.name) for p in files]
    if empty:
        raise ImageSourceError(f"{root}: class folder(s) without image files: {', '.join(empty)} "
                               f"(image types: {', '.join(IMAGE_SUFFIXES)})")
    if len(classes) < 2:
        raise ImageSourceError(f"{root}: only one class ({classes[0].name}): a classifier needs at least two")
    return pd.DataFrame(rows, columns=[PATH, LABEL])


def read_manifest(path: str | Path, path_column: str = PATH, label_column: str = LABEL) -> pd.DataFrame:
    """A CSV or Parquet manifest as ``path`` (absolute), ``label`` and its other columns.

    Raises:
        ImageSourceError: a column is missing, or a row has no path or no label (its row number is named).
    """
    path = Path(path)
    frame = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    missing = [c for c in (path_column, label_column) if c not in frame.columns]
    if missing:
        raise ImageSourceError(f"{path}: no column {', '.join(map(repr, missing))} "
                               f"(columns: {', '.join(map(str, frame.columns))})")
    for column in (path_column, label_column):
        gaps = frame.index[frame[column].isna() | (frame[column].astype(str).str.strip() == "")]
        if len(gaps):
            rows = ", ".join(str(i + 2) for i in gaps[:10])  # the file's line numbers, after the header
            raise ImageSourceError(f"{path}: column {column!r} is empty on line(s) {rows}"
                                   + (f" and {len(gaps) - 10} more" if len(gaps) > 10 else ""))
    frame = frame.rename(columns={path_column: PATH, label_column: LABEL})
    base = path.parent
    frame[PATH] = [str(p if Path(p).is_absolute() else (base / p)) for p in frame[PATH].astype(str)]
    frame[LABEL] = frame[LABEL].astype(str)
    return frame.sort_values(PATH, kind="stable").reset_index(drop=True)


def _inspect_one(path: str, max_pixels: int) -> dict[str, Any]:
    from PIL import Image

    data = Path(path).read_bytes()
    if not data:
        raise ImageSourceError("empty file")
    import io

    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageSourceError(f"{width}x{height} pixels, over the {max_pixels:,} allowed (max_pixels)")
        img.load()  # decodes every pixel: a truncated or corrupt file fails here, not in training
        mode, fmt = img.mode, (img.format or "").lower()
    return {"digest": hashlib.sha256(data).hexdigest(), "width": width, "height": height,
            "channels": _CHANNELS.get(mode, 3), "format": fmt, "bytes": len(data)}


def inspect(frame: pd.DataFrame, max_pixels: int = MAX_PIXELS) -> pd.DataFrame:
    """``frame`` with each file's ``digest``, ``width``, ``height``, ``channels``, ``format`` and ``bytes``.

    Raises:
        ImageSourceError: files that are missing, empty, undecodable or too large, each named with its reason
            (the first 20, and how many more).
    """
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # our own limit (max_pixels) applies, with the file's name in the message
    facts, bad = [], []
    for path in frame[PATH]:
        try:
            facts.append(_inspect_one(path, max_pixels))
        except (OSError, UnidentifiedImageError, ImageSourceError, ValueError, SyntaxError) as exc:
            reason = "missing" if isinstance(exc, FileNotFoundError) else (
                "not an image this reader can decode" if isinstance(exc, UnidentifiedImageError) else str(exc))
            bad.append(f"{path}: {reason}")
            facts.append({})
    if bad:
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise ImageSourceError(f"{len(bad)} of {len(frame)} image file(s) cannot be used:\n  "
                               + "\n  ".join(bad[:20]) + more)
    return pd.concat([frame.reset_index(drop=True), pd.DataFrame(facts)], axis=1)


def summary(inspected: pd.DataFrame) -> dict[str, Any]:
    """What validation reports of an inspected manifest: rows per class, the size distribution, the channel
    counts, and the files whose channels differ from the most common (converted when decoded)."""
    channels = Counter(int(c) for c in inspected["channels"])
    common = channels.most_common(1)[0][0]
    odd = inspected.loc[inspected["channels"] != common, PATH].tolist()
    sizes = {k: {"min": int(inspected[k].min()), "median": float(inspected[k].median()), "max": int(inspected[k].max())}
             for k in ("width", "height")}
    return {"rows": int(len(inspected)), "classes": {str(k): int(v) for k, v in
                                                     inspected[LABEL].value_counts().sort_index().items()},
            "size": sizes, "channels": {str(k): v for k, v in sorted(channels.items())}, "common_channels": common,
            "converted_channels": odd[:50], "converted_channels_count": len(odd),
            "duplicates": int(inspected["digest"].duplicated().sum())}


def dataset_digest(inspected: pd.DataFrame) -> str:
    """The snapshot's identity: SHA-256 over the sorted pairs of each file's digest and label (where the files
    live and what they are called does not change it; their bytes and labels do)."""
    h = hashlib.sha256()
    for digest, label in sorted(zip(inspected["digest"], inspected[LABEL])):
        h.update(f"{digest}\t{label}\n".encode())
    return h.hexdigest()
