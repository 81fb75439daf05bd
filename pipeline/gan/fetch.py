"""Stage fetch (GAN): CIFAR-10's 5,000 training frogs to <paths.raw>/cifar10_frogs.npz (key x,
(5000, 32, 32, 3) uint8, in training-set order), through the same mechanics as the other
generators' data (`pipeline.download`): `data.path`, else the mirror (`data.mirror`, else
$GENLAB_DATA_DIR) holding cifar10_frogs.npz, else the real origin, the CIFAR-10 python archive
(`data.url`, pinned by `data.sha256` as keras/src/datasets/cifar10.py pins it), whose five training
batches' images of class `data.label` are extracted here and the archive then removed.

Reads `gan.data`. An .npz is checked for its array (what was expected is named in the error) and,
when `data.content_sha256` is set, for the hash of its pixels (the mirror's copy was decoded from a
JPEG, so its pixels are not the archive's: the archive is pinned by its own hash instead).
Writes <paths.metrics>/fetch.json: the source, the size and the hashes.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from pipeline import artifacts, config
from pipeline.download import MIRROR_ENV, FetchError, fetch, sha256_check

SHAPE = (5000, 32, 32, 3)  # every CIFAR-10 class has 5,000 training images
BATCHES = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]


def content_sha256(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def read(path: Path, source: str | None = None) -> np.ndarray:
    """The images of a frogs .npz, checked; FetchError naming `source` (the file, by default) and
    what was expected, for any other file."""
    source = source or str(path)
    expected = f"an .npz with x {SHAPE} uint8"
    if not Path(path).is_file():
        raise FetchError(f"{source}: no such file; fetch the frogs first (dvc repro gan_fetch)")
    if not zipfile.is_zipfile(path):
        raise FetchError(f"{source}: not an .npz (zip) archive, or a truncated one; expected {expected}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise FetchError(f"{source}: an .npz without x (it holds {', '.join(z.files) or 'nothing'}); expected {expected}")
            x = z["x"]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise FetchError(f"{source}: not a readable .npz archive ({str(e).splitlines()[0] or type(e).__name__}); "
                         f"expected {expected}") from None
    if x.shape != SHAPE or x.dtype != np.uint8:
        raise FetchError(f"{source}: x is {x.shape} {x.dtype.name}, expected {SHAPE} uint8")
    return x


class _Batches(pickle.Unpickler):
    """CIFAR-10's batches are pickles: only numpy's array reconstruction is allowed in them, as
    Keras's own loader restricts them, so that a tampered archive cannot run code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def extract(archive: Path, label: int) -> np.ndarray:
    """The training images of class `label` from the CIFAR-10 python archive, (n, 32, 32, 3) uint8
    in training-set order."""
    images = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in BATCHES:
                f = tar.extractfile(member)
                if f is None:
                    raise KeyError(member)
                batch = _Batches(io.BytesIO(f.read()), encoding="bytes").load()
                data = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
                images.append(data[np.asarray(batch[b"labels"]) == label].transpose(0, 2, 3, 1))
    except (tarfile.TarError, KeyError, pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
        raise FetchError(f"{archive}: not CIFAR-10's python archive ({type(e).__name__}: {e})") from None
    return np.concatenate(images)


def checker(label: str, content: str | None):
    """`pipeline.download.fetch`'s check for a frogs .npz: the array as expected, and its pixels'
    hash when one is pinned."""
    def check(path: Path, source: str) -> None:
        actual = content_sha256(read(path, source))
        if content and actual != content:
            raise FetchError(f"{label}: content sha256 mismatch for {source}: expected {content}, got {actual}; "
                             "these are not the pinned frogs")
    return check


def run(cfg) -> dict:
    cfg = config.section(cfg, "gan")
    d = cfg.data
    dest = Path(cfg.paths.raw) / f"{d.name}.npz"
    mirror = d.mirror or os.environ.get(MIRROR_ENV)
    for folder in (dest.parent, Path(cfg.paths.metrics)):
        artifacts.ensure_writable(folder)
    label = f"dataset {d.name!r}"
    local = d.path or (mirror and (Path(mirror).expanduser() / f"{d.name}.npz").is_file())
    if local or not d.url:
        source = fetch(dest, label=label, filename=f"{d.name}.npz", url=None, path=d.path, path_key="gan.data.path",
                       mirror=mirror, mirror_key="gan.data.mirror", timeout=d.timeout, check=checker(label, d.content_sha256),
                       pinned=bool(d.content_sha256))
    else:  # the real origin: the whole CIFAR-10 archive, verified, the frogs extracted, the archive removed
        archive = dest.parent / Path(d.url).name
        try:
            source = fetch(archive, label=label, filename=f"{d.name}.npz", url=d.url, path=None, path_key="gan.data.path",
                           mirror=mirror, mirror_key="gan.data.mirror", timeout=d.timeout,
                           check=sha256_check(label, d.sha256, "gan.data.sha256"), pinned=bool(d.sha256))
            x = extract(archive, d.label)
            if x.shape != SHAPE:
                raise FetchError(f"{source}: class {d.label} has {len(x)} training images, expected {SHAPE[0]}")
            with artifacts.atomic_path(dest) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, x=x)
        finally:
            archive.unlink(missing_ok=True)
    result = {"dataset": d.name, "path": str(dest), "source": source, "bytes": dest.stat().st_size,
              "sha256": artifacts.sha256_of(dest), "content_sha256": content_sha256(read(dest))}
    artifacts.write_json(Path(cfg.paths.metrics) / "fetch.json", result)
    print(f"fetch: {dest} ({result['bytes']} bytes, content sha256 {result['content_sha256'][:12]}…) from {source}")
    return result


def main() -> None:
    try:
        run(config.load())
    except (config.ConfigError, FetchError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
