"""The VAE's pictures, as uint8 arrays and PNG files: a grid of decoded latent points (the book's
figure), decoded prior samples, reconstructions beside their digits, rows of codes decoded in
steps. Shared by the train stage (an image per epoch, to MLflow) and the sample stage (the PNGs)."""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

from pipeline import pictures

def quantile_grid(n: int) -> np.ndarray:
    """The book's latent grid for 2 dimensions: n x n points at the standard normal's quantiles
    of evenly spaced probabilities, so that each cell covers equal prior mass. Rows run from
    high to low z[1], as the book draws it (up is up). Shape (n, n, 2)."""
    q = np.array([NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, n)], dtype=np.float32)
    return np.stack(np.meshgrid(q, q[::-1]), axis=-1)


def tile(images: np.ndarray) -> np.ndarray:
    """A (rows, cols, 28, 28) array of pixel probabilities as one uint8 image with grey gutters."""
    rows, cols, h, w = images.shape[:4]
    return pictures.tile(np.clip(np.rint(images.reshape(rows, cols, h, w) * 255), 0, 255).astype(np.uint8))


save_png = pictures.save_png


def decode(model, z: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Pixel probabilities of the codes `z` (..., latent_dim), shaped (..., 28, 28)."""
    import keras

    flat = z.reshape(-1, z.shape[-1]).astype(np.float32)
    out = np.concatenate([keras.ops.convert_to_numpy(model.decode(flat[i:i + batch])) for i in range(0, len(flat), batch)])
    return out.reshape(*z.shape[:-1], 28, 28)


def encode(model, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    """The posterior means of the digits `x` (n, 28, 28, 1; uint8 or floats in [0, 1])."""
    import keras

    from pipeline.vae.model import pixels

    return np.concatenate([keras.ops.convert_to_numpy(model.encoder(pixels(keras.ops.convert_to_tensor(x[i:i + batch])))[0])
                           for i in range(0, len(x), batch)])


def latent_picture(model, n: int, rng: np.random.Generator) -> np.ndarray:
    """The latent space at a glance: the quantile grid decoded (2 latent dimensions), else n x n
    codes drawn from the prior with `rng`."""
    z = quantile_grid(n) if model.latent_dim == 2 else rng.standard_normal((n, n, model.latent_dim)).astype(np.float32)
    return tile(decode(model, z))


def reconstructions(model, digits: np.ndarray) -> np.ndarray:
    """Two rows: the digits, and beneath each its reconstruction through its posterior mean."""
    rec = decode(model, encode(model, digits))
    return tile(np.stack([digits[..., 0], rec]))
