"""The losses of neural style transfer (1st edition §8.3, keras-io `neural_style_transfer.py`), in
`keras.ops` so that they run on any backend, and SSIM, the stage's measure of how much of the
content photo survives.

    content  sum((F - P)^2)                                  F, P: the content layer's activations
    style    sum((G(F) - G(S))^2) / (4 * 3^2 * (h * w)^2)    per style layer, averaged over the layers
    tv       sum((dx^2 + dy^2)^1.25)                         over the image's pixels
The style normalisation is the book's and keras-io's as written: 3 "channels" and the image's pixel
count, whatever the layer's own channels and size, so that their loss weights mean here what they
mean there.
"""
from __future__ import annotations

import numpy as np


def gram(features):
    """The (channels, channels) Gram matrix of one image's (h, w, channels) activations: the sum over
    positions of the outer product of the channel vectors."""
    from keras import ops

    flat = ops.reshape(features, (-1, features.shape[-1]))
    return ops.matmul(ops.transpose(flat), flat)


def content_loss(combination, content):
    from keras import ops

    return ops.sum(ops.square(combination - content))


def style_loss(combination_gram, style_gram, pixels: int):
    """One layer's style loss between two Gram matrices, `pixels` the image's h * w (see above)."""
    from keras import ops

    return ops.sum(ops.square(combination_gram - style_gram)) / (4.0 * 3 ** 2 * float(pixels) ** 2)


def total_variation(image):
    """The book's total variation of a (1, h, w, 3) image: each pixel's squared differences to the
    pixel below and to the right, summed, to the power 1.25, summed over the pixels with both."""
    from keras import ops

    a = ops.square(image[:, :-1, :-1, :] - image[:, 1:, :-1, :])
    b = ops.square(image[:, :-1, :-1, :] - image[:, :-1, 1:, :])
    return ops.sum(ops.power(a + b, 1.25))


def ssim(x: np.ndarray, y: np.ndarray, sigma: float = 1.5) -> float:
    """The mean structural similarity (Wang et al. 2004) of two uint8 RGB images of one shape, on
    their luma, with the paper's Gaussian window and constants: 1 for identical images, near 0 for
    unrelated ones."""
    from scipy.ndimage import gaussian_filter

    def luma(im):
        return im.astype(np.float64) @ np.array([0.299, 0.587, 0.114])

    a, b = luma(x), luma(y)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda im: gaussian_filter(im, sigma, truncate=3.5)  # noqa: E731 - the paper's 11-pixel window
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
