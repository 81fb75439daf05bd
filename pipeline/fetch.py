"""Stage fetch: resolve the configured corpus to <paths.raw>/<corpus.name>.txt.

Reads `corpus` (name, url, sha256, path) and `fetch` (mirror, timeout). Sources, in order:
`corpus.path` (an explicit local file), the mirror folder (`fetch.mirror`, else the environment
variable GENLAB_DATA_DIR) holding <name>.txt, then the URL. The sha256 is verified whichever the
source; a mismatch leaves no file behind. A file already in place with the right hash is kept.
Writes <paths.metrics>/fetch.json: the source used, the size and the sha256.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pipeline import artifacts, config

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


def fetch_corpus(name: str, url: str | None, sha256: str | None, dest: Path,
                 path: str | None, mirror: str | None, timeout: float) -> tuple[str, str]:
    """Place the corpus at `dest` and return (source, sha256). Nothing is left at `dest`
    unless its hash is right."""
    if dest.exists() and sha256 and artifacts.sha256_of(dest) == sha256:
        return "already in place", sha256

    candidates = []
    if path:
        candidates.append(Path(path).expanduser())
    elif mirror:
        candidates.append(Path(mirror).expanduser() / f"{name}.txt")
    local = next((c for c in candidates if c.is_file()), None)
    if path and local is None:
        raise FetchError(f"corpus.path: {path} does not exist or is not a file")

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
                        f"corpus {name!r}: cannot download {url} ({getattr(e, 'reason', e)}){looked}. "
                        f"Without network, put {name}.txt in a folder and set {MIRROR_ENV}=<folder> "
                        f"(or fetch.mirror=<folder>), or point corpus.path at a local copy.") from None
            else:
                raise FetchError(f"corpus {name!r} has no url; set corpus.path to a local file")
        actual = artifacts.sha256_of(tmp)
        if sha256 and actual != sha256:
            raise FetchError(f"corpus {name!r}: sha256 mismatch for {source}: expected {sha256}, got {actual}; "
                             f"the file is corrupt or not this corpus, nothing was written to {dest}")
        # mkstemp makes the file 0600; every other output follows the umask, and so does this one.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return source, actual


def run(cfg) -> dict:
    c = cfg.corpus
    dest = Path(cfg.paths.raw) / f"{c.name}.txt"
    mirror = cfg.fetch.mirror or os.environ.get(MIRROR_ENV)
    for folder in (dest.parent, Path(cfg.paths.metrics)):
        artifacts.ensure_writable(folder)
    source, digest = fetch_corpus(c.name, c.url, c.sha256, dest, c.path, mirror, cfg.fetch.timeout)
    result = {"corpus": c.name, "path": str(dest), "source": source, "bytes": dest.stat().st_size, "sha256": digest}
    artifacts.write_json(Path(cfg.paths.metrics) / "fetch.json", result)
    print(f"fetch: {dest} ({result['bytes']} bytes, sha256 {digest[:12]}…) from {source}")
    return result


def main() -> None:
    try:
        run(config.load())
    except (config.ConfigError, FetchError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
