"""Fetch a dataset file the way every generator does: from an explicit local path, else a mirror
folder (`$GENLAB_DATA_DIR` or the generator's `mirror` key), else its real origin URL; verified
whichever the source, and written atomically, so that a wrong or partial file is never left at
the destination. `keras.utils.get_file` does the same for Keras's own datasets, without the mirror.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable

from pipeline import artifacts

MIRROR_ENV = "GENLAB_DATA_DIR"


class FetchError(RuntimeError):
    pass


def _download(url: str, dest, timeout: float) -> None:
    """Stream `url` into the open file `dest`, printing progress on stderr."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0)
        done, last = 0, 0.0
        for block in iter(lambda: response.read(1 << 16), b""):
            dest.write(block)
            done += len(block)
            if time.monotonic() - last > 0.5:
                last = time.monotonic()
                of = f" of {total / 1e6:.1f} MB" if total else ""
                print(f"\rdownloading {url}: {done / 1e6:.1f} MB{of}", end="", file=sys.stderr)
        print(file=sys.stderr)


def sha256_check(label: str, sha256: str | None, key: str | None = None) -> Callable[[Path, str], None]:
    """The default check: the file's sha256 is the pinned one (none pinned: any file). `key`, the
    config key that pins it, is named in the error: a source that serves another version of the file
    (a re-encoded picture) is then one override away."""
    def check(path: Path, source: str) -> None:
        actual = artifacts.sha256_of(path)
        if sha256 and actual != sha256:
            trusted = f" (if it is a file you trust, set {key} to its hash)" if key else ""
            raise FetchError(f"{label}: sha256 mismatch for {source}: expected {sha256}, got {actual}; "
                             f"the file is corrupt or not this {label.split()[0]}{trusted}")
    return check


def fetch(dest: Path, *, label: str, filename: str, url: str | None, path: str | None, path_key: str,
          mirror: str | None, mirror_key: str, timeout: float, check: Callable[[Path, str], None], pinned: bool) -> str:
    """Place the file at `dest` and return where it came from. `check(file, source)` raises
    FetchError for a file that is not the right one; nothing is then left at `dest`. A file already
    at `dest` is kept when `pinned` (a hash says what the file must be) and it passes `check`;
    unpinned (a user's own file), it is copied again. `label` names the dataset in messages,
    `path_key` and `mirror_key` the config keys a user sets instead."""
    if pinned and dest.exists():
        try:
            check(dest, str(dest))
            return "already in place"
        except FetchError:
            pass  # replaced below

    candidates = []
    if path:
        candidates.append(Path(path).expanduser())
    elif mirror:
        candidates.append(Path(mirror).expanduser() / filename)
    local = next((c for c in candidates if c.is_file()), None)
    if path and local is None:
        raise FetchError(f"{path_key}: {path} does not exist or is not a file")

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            if local is not None:
                source = str(local)
                with open(local, "rb") as src:
                    shutil.copyfileobj(src, out)
            elif url:
                source = url
                try:
                    _download(url, out, timeout)
                except OSError as e:  # URLError, timeouts and refused connections are all OSErrors
                    looked = f" and found no {candidates[0]}" if candidates else ""
                    raise FetchError(
                        f"{label}: cannot download {url} ({getattr(e, 'reason', e)}){looked}. "
                        f"Without network, put {filename} in a folder and set {MIRROR_ENV}=<folder> "
                        f"(or {mirror_key}=<folder>), or point {path_key} at a local copy.") from None
            else:
                raise FetchError(f"{label} has no url; set {path_key} to a local file")
        try:
            check(tmp, source)
        except FetchError as e:
            raise FetchError(f"{e}; nothing was written to {dest}") from None
        # mkstemp makes the file 0600; every other output follows the umask, and so does this one.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return source
