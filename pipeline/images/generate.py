"""Image datasets the project owns (no downloads): scikit-learn's digits written as PNG files, and synthetic
shapes of several classes with noise, at any size and count, for the benchmark.

Both write the layout ``pipeline.images.manifest.scan_folder`` reads: ``<root>/<class>/<name>.png``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")


def write_digits(root: str | Path) -> Path:
    """scikit-learn's 1,797 digits (8x8, 17 grey levels) as 8-bit greyscale PNGs in ``root/<digit>/``."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    for i, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        folder = root / f"digit_{target}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8), mode="L").save(folder / f"{i:05d}.png")
    return root


def shape_image(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB image (``size`` x ``size`` x 3, uint8): a shape of random position, scale, colour and background,
    with Gaussian pixel noise. The class is the shape; colour and place carry no signal."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy = rng.uniform(0.3, 0.7, 2)
    r = rng.uniform(0.15, 0.28)
    if kind == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2
    elif kind == "square":
        mask = (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
    elif kind == "triangle":
        mask = (yy - cy <= r) & (yy - cy >= -r) & (np.abs(xx - cx) <= (yy - cy + r) / 2)
    elif kind == "cross":
        w = r * 0.3
        mask = ((np.abs(xx - cx) <= w) & (np.abs(yy - cy) <= r)) | ((np.abs(yy - cy) <= w) & (np.abs(xx - cx) <= r))
    else:
        raise ValueError(f"unknown shape {kind!r} (one of {', '.join(SHAPES)})")
    background = rng.uniform(0, 120, 3)
    colour = rng.uniform(130, 255, 3)
    image = np.where(mask[..., None], colour, background) + rng.normal(0, 18, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_shapes(root: str | Path, n: int, size: int = 64, classes: tuple[str, ...] = SHAPES,
                 seed: int = 0) -> Path:
    """``n`` synthetic shape images as RGB PNGs in ``root/<shape>/``, balanced over ``classes``."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for kind in classes:
        (root / kind).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        kind = classes[i % len(classes)]
        Image.fromarray(shape_image(kind, size, rng), mode="RGB").save(root / kind / f"{i:06d}.png")
    return root
