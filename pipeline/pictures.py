"""Pictures: generated images as every image generator draws them (tiles in a grid with grey
gutters, saved as PNG atomically: a PNG is what a person looks at, in MLflow or in samples/), and
the photos the image-optimising generators start from (a user's own file or a pinned download,
read whatever its mode and refused in one line when it cannot be used)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from omegaconf import MISSING

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


@dataclass
class ImageSource:
    """A photo's config section (the dream's `image`, style transfer's `images.content` and
    `images.style`): `path` (a user's own file, taken as it is) wins over the mirror's
    images/<name>, which wins over `url`; both of those are pinned by `sha256`."""
    name: str = MISSING
    url: Optional[str] = MISSING
    sha256: Optional[str] = MISSING
    path: Optional[str] = MISSING
    mirror: Optional[str] = MISSING
    timeout: float = MISSING
    max_pixels: int = MISSING


def check_source(i, key: str, check) -> None:
    """The ranges of an ImageSource section at `key` (`dream.image`), reported by `check(ok, key,
    message)`."""
    check(i.path is not None or i.url is not None, key, "needs a url or a path")
    check(i.sha256 is None or (len(i.sha256) == 64 and all(ch in "0123456789abcdef" for ch in i.sha256)),
          f"{key}.sha256", f"must be 64 lowercase hex digits or null, got {i.sha256!r}")
    check(i.timeout > 0, f"{key}.timeout", f"must be > 0, got {i.timeout}")
    check(i.max_pixels >= 1, f"{key}.max_pixels", f"must be >= 1, got {i.max_pixels}")


def fetch_image(i, folder: Path, key: str) -> dict:
    """The photo of ImageSource `i` (config key `key`) to folder/<i.name>, through the same mechanics
    as every dataset (`pipeline.download`), checked to be an image `read_image` can use, or nothing
    is written: {"image", "path", "source", "bytes", "sha256"}."""
    from pipeline.download import MIRROR_ENV, FetchError, fetch, sha256_check

    dest = Path(folder) / i.name
    label = f"image {i.name!r}"
    pinned = sha256_check(label, i.sha256, f"{key}.sha256")

    def check(path: Path, source: str) -> None:
        if not i.path:  # a user's own photo has no pinned hash; the mirror's and the URL's have
            pinned(path, source)
        try:
            read_image(path, None, i.max_pixels, 1)
        except ImageError as e:
            raise FetchError(str(e).replace(str(path), source)) from None

    source = fetch(dest, label=label, filename=f"images/{i.name}", url=i.url, path=i.path, path_key=f"{key}.path",
                   mirror=i.mirror or os.environ.get(MIRROR_ENV), mirror_key=f"{key}.mirror", timeout=i.timeout,
                   check=check, pinned=bool(i.sha256) and not i.path)
    return {"image": i.name, "path": str(dest), "source": source, "bytes": dest.stat().st_size,
            "sha256": artifacts.sha256_of(dest)}
