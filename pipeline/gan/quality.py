"""How good the generated frogs are, in numbers that mean something.

KID and FID compare the distribution of a pretrained network's features of generated images with
that of real ones. The network here is the offline VGG16 (`pipeline.networks`, weights=hed by
default), so the figures are named `kid_vgg16`/`fid_vgg16` and are NOT comparable with the
Inception-based KID and FID of papers; what makes them readable is reported beside them, measured
with the same network and the same numbers of images:
  floor    two disjoint sets of real frogs against each other (what a perfect generator reaches)
  ceiling  uniform noise images against the real frogs (what no generator should reach)
Mode collapse shows as diversity (the mean pairwise feature distance within a set) far below the
real frogs'. Memorisation shows as generated images much nearer to their nearest training frog
than held-out real frogs are.
"""
from __future__ import annotations

import numpy as np


def kid(a: np.ndarray, b: np.ndarray) -> float:
    """The unbiased squared MMD between feature sets `a` (n, d) and `b` (m, d) under the cubic
    polynomial kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018, keras-io `gan_ada.py`).
    Near 0 (and may dip below) for samples of one distribution."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n, m, d = len(a), len(b), a.shape[1]
    kaa, kbb, kab = ((x @ y.T / d + 1.0) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    return float((kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
                 - 2.0 * kab.mean())


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to `a` and `b`:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2); the trace of the root is the sum of the
    square roots of the eigenvalues of S_a^1/2 S_b S_a^1/2 (symmetric, so no complex sqrtm)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ sb @ root_a), 0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2.0 * cross)


def diversity(features: np.ndarray) -> float:
    """The mean Euclidean distance between two different members of a set (0 for a collapsed one)."""
    f = np.asarray(features, np.float64)
    sq = (f ** 2).sum(1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0, None)
    n = len(f)
    return float(np.sqrt(d2).sum() / (n * (n - 1)))


def nearest_distance(images: np.ndarray, reference: np.ndarray, batch: int = 256) -> np.ndarray:
    """For each image, the root-mean-square pixel difference (in [0, 1] units) to its nearest image
    in `reference` (both uint8, same shape)."""
    r = reference.reshape(len(reference), -1).astype(np.float32) / 255.0
    r_sq = (r ** 2).sum(1)
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].reshape(len(images[i:i + batch]), -1).astype(np.float32) / 255.0
        d2 = (x ** 2).sum(1)[:, None] + r_sq[None, :] - 2.0 * x @ r.T
        out.append(np.sqrt(np.clip(d2.min(1), 0, None) / r.shape[1]))
    return np.concatenate(out)


class Scorer:
    """A feature network and the real frogs' features, computed once; `score(images)` then gives
    KID, FID and diversity of any set of generated images against them.

    extractor: a model from RGB [0, 255] images of `size` x `size` to feature maps (averaged here
    over space); real: uint8 frogs, of which the first `n` are the reference set and the next `n`
    (when there are 2n) the second real set of the floor."""

    def __init__(self, extractor, real: np.ndarray, n: int, size: int, batch: int = 100, seed: int = 0):
        self.extractor, self.size, self.batch, self.n = extractor, size, batch, n
        self.scale = 1.0
        reference = self.features(real[:n])
        # The network's activations have no fixed scale (Inception's pooled features, which KID's
        # cubic kernel was made for, are of order 1; VGG's reach the hundreds, where the kernel's
        # cube is dominated by a few images). Divided by the real frogs' RMS activation, they are of
        # order 1 too; the same scale for every set scored, so the figures stay comparable.
        self.scale = float(np.sqrt((reference ** 2).mean())) or 1.0
        self.reference = reference / self.scale
        self.real_diversity = diversity(self.reference)
        self.seed = seed

    def features(self, images: np.ndarray) -> np.ndarray:
        import keras

        out = []
        for i in range(0, len(images), self.batch):
            x = keras.ops.cast(images[i:i + self.batch], "float32")
            if self.size != x.shape[1]:
                x = keras.ops.image.resize(x, (self.size, self.size), interpolation="bilinear")
            f = keras.ops.convert_to_numpy(self.extractor(x))
            out.append(f.reshape(len(f), -1, f.shape[-1]).mean(1))
        return np.concatenate(out).astype(np.float64) / self.scale

    def score(self, images: np.ndarray) -> dict:
        f = self.features(images)
        return {"kid": kid(f, self.reference), "fid": fid(f, self.reference), "diversity": diversity(f) / self.real_diversity}

    def bounds(self, real: np.ndarray) -> dict:
        """The floor (the next n real frogs against the reference) and the ceiling (n uniform noise
        images), for this scorer's network and n."""
        noise = np.random.default_rng(self.seed).integers(0, 256, (self.n, *real.shape[1:]), dtype=np.uint8)
        floor, ceiling = self.score(real[self.n:2 * self.n]), self.score(noise)
        return {"kid_floor": floor["kid"], "fid_floor": floor["fid"], "kid_ceiling": ceiling["kid"],
                "fid_ceiling": ceiling["fid"]}
