"""Stage fetch (VAE): MNIST to <paths.raw>/mnist.npz, through the same mechanics as the text corpora
(`pipeline.download`): `data.path`, else the mirror (`data.mirror`, else $GENLAB_DATA_DIR) holding
mnist.npz, else Keras's own origin (`data.url`).

Reads `vae.data`. The file Keras downloads is pinned by its sha256 (`data.sha256`, as
keras/src/datasets/mnist.py pins it); another copy of the same arrays (a mirror's, written by
another zip writer) is accepted when the arrays' content hash matches (`data.content_sha256`:
sha256 of x_train, y_train, x_test, y_test's bytes in that order). Anything else is refused with
what was expected (keys, shapes, dtypes), and nothing is left at the destination.
Writes <paths.metrics>/fetch.json: the source, the size and both hashes.
"""
from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from pipeline import artifacts, config
from pipeline.download import MIRROR_ENV, FetchError, fetch

# What keras.datasets.mnist.load_data returns: the arrays a file must hold, in the content hash's order.
EXPECTED = {"x_train": ((60000, 28, 28), np.uint8), "y_train": ((60000,), np.uint8),
            "x_test": ((10000, 28, 28), np.uint8), "y_test": ((10000,), np.uint8)}


def content_sha256(arrays: dict) -> str:
    h = hashlib.sha256()
    for key in EXPECTED:
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


def read(path: Path, source: str | None = None) -> dict[str, np.ndarray]:
    """The four arrays of an MNIST .npz, checked against EXPECTED; FetchError naming `source`
    (the file, by default) and what was expected, for any other file."""
    source = source or str(path)
    expected = ", ".join(f"{k} {s} {np.dtype(d).name}" for k, (s, d) in EXPECTED.items())
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in EXPECTED if k not in z.files]
            if missing:
                raise FetchError(f"{source}: an .npz without {', '.join(missing)} (it holds {', '.join(z.files) or 'nothing'}); "
                                 f"expected {expected}")
            arrays = {k: z[k] for k in EXPECTED}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise FetchError(f"{source}: not a readable .npz archive ({str(e).splitlines()[0] or type(e).__name__}); "
                         f"expected MNIST's {expected}") from None
    for key, (shape, dtype) in EXPECTED.items():
        a = arrays[key]
        if a.shape != shape or a.dtype != dtype:
            raise FetchError(f"{source}: {key} is {a.shape} {a.dtype.name}, expected {shape} {np.dtype(dtype).name}")
    return arrays


def checker(label: str, sha256: str | None, content: str | None):
    """`pipeline.download.fetch`'s check for MNIST: the arrays as expected, and the file's sha256
    or, for another writer's copy, the arrays' content hash."""
    def check(path: Path, source: str) -> None:
        arrays = read(path, source)
        if sha256 and artifacts.sha256_of(path) == sha256:
            return
        actual = content_sha256(arrays)
        if content and actual != content:
            raise FetchError(f"{label}: content sha256 mismatch for {source}: expected {content}, got {actual}; "
                             "these are not MNIST's arrays")
        if not content and sha256:
            raise FetchError(f"{label}: sha256 mismatch for {source}: expected {sha256}, got {artifacts.sha256_of(path)}")
    return check


def run(cfg) -> dict:
    cfg = config.section(cfg, "vae")
    d = cfg.data
    dest = Path(cfg.paths.raw) / f"{d.name}.npz"
    mirror = d.mirror or os.environ.get(MIRROR_ENV)
    for folder in (dest.parent, Path(cfg.paths.metrics)):
        artifacts.ensure_writable(folder)
    label = f"dataset {d.name!r}"
    source = fetch(dest, label=label, filename=f"{d.name}.npz", url=d.url, path=d.path, path_key="vae.data.path",
                   mirror=mirror, mirror_key="vae.data.mirror", timeout=d.timeout, check=checker(label, d.sha256, d.content_sha256),
                   pinned=bool(d.sha256 or d.content_sha256))
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
