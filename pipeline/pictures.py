"""Pictures of generated images, as every image generator draws them: tiles in a grid with grey
gutters, saved as PNG atomically (a PNG is what a person looks at, in MLflow or in samples/)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import artifacts

PAD = 2  # grey pixels between tiles


def tile(images: np.ndarray) -> np.ndarray:
    """A (rows, cols, h, w) grey or (rows, cols, h, w, 3) RGB uint8 array as one uint8 image."""
    rows, cols, h, w = images.shape[:4]
    out = np.full((rows * (h + PAD) + PAD, cols * (w + PAD) + PAD, *images.shape[4:]), 128, np.uint8)
    for r in range(rows):
        for c in range(cols):
            y, x = PAD + r * (h + PAD), PAD + c * (w + PAD)
            out[y:y + h, x:x + w] = images[r, c]
    return out


def save_png(image: np.ndarray, path: Path, scale: int = 2) -> None:
    """`image` (uint8, grey or RGB) as a PNG, each pixel `scale` x `scale`, written atomically."""
    from PIL import Image

    big = image.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else image
    with artifacts.atomic_path(path) as tmp:
        Image.fromarray(big).save(tmp, format="PNG")
