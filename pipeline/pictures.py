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


class ImageError(ValueError):
    """A user's image cannot be used: not an image, truncated, too small or too large."""


def read_image(path: Path | str, max_side: int | None, max_pixels: int, min_side: int) -> np.ndarray:
    """A user's JPEG or PNG as uint8 RGB (h, w, 3): grayscale, alpha (over white), palette, 16-bit
    and CMYK converted, the EXIF orientation applied, the longer side resized to `max_side` (None:
    as it is). The pixel count is checked against `max_pixels` from the header, before the image is
    decoded (a decompression bomb must not exhaust memory); an image whose shorter side ends below
    `min_side` is refused. Every refusal is one ImageError line naming the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"{path}: {w} x {h} = {w * h:,} pixels, above the limit of {max_pixels:,}")
            im = ImageOps.exif_transpose(im)  # decodes it: after the size check
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: PIL's convert("RGB") would clip it at 255
                im = Image.fromarray(np.rint(np.asarray(im, np.float64) / 257.0).clip(0, 255).astype(np.uint8))
            im = im.convert("RGB")
            if max_side and max(im.size) != max_side:
                scale = max_side / max(im.size)
                im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.Resampling.LANCZOS)
            out = np.asarray(im, np.uint8)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except Image.DecompressionBombError as e:  # PIL's own guard, before the header check above can run
        raise ImageError(f"{path}: above the pixel limit ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image PIL can read (JPEG or PNG expected)") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports truncated and corrupt data as OSError
        raise ImageError(f"{path}: a damaged or truncated image ({str(e).splitlines()[0]})") from None
    if min(out.shape[:2]) < min_side:
        raise ImageError(f"{path}: {out.shape[1]} x {out.shape[0]} after resizing, smaller than the network's "
                         f"{min_side} pixels a side")
    return out
