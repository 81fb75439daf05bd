"""Stage fetch: resolve the configured corpus to <paths.raw>/<corpus.name>.txt.

Reads `text.corpus` (name, url, sha256, path) and `text.fetch` (mirror, timeout). Sources, in order:
`corpus.path` (an explicit local file), the mirror folder (`fetch.mirror`, else the environment
variable GENLAB_DATA_DIR) holding <name>.txt, then the URL. The sha256 is verified whichever the
source; a mismatch leaves no file behind. A file already in place with the right hash is kept.
Writes <paths.metrics>/fetch.json: the source used, the size and the sha256.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline import artifacts, config
from pipeline.download import MIRROR_ENV, FetchError, fetch, sha256_check

__all__ = ["FetchError", "MIRROR_ENV", "fetch_corpus", "run"]


def fetch_corpus(name: str, url: str | None, sha256: str | None, dest: Path,
                 path: str | None, mirror: str | None, timeout: float) -> tuple[str, str]:
    """Place the corpus at `dest` and return (source, sha256). Nothing is left at `dest`
    unless its hash is right."""
    source = fetch(dest, label=f"corpus {name!r}", filename=f"{name}.txt", url=url, path=path, path_key="text.corpus.path",
                   mirror=mirror, mirror_key="text.fetch.mirror", timeout=timeout, check=sha256_check(f"corpus {name!r}", sha256, "text.corpus.sha256"), pinned=sha256 is not None)
    return source, artifacts.sha256_of(dest)


def run(cfg) -> dict:
    cfg = config.section(cfg, "text")  # the text section with the shared keys (seed, mlflow, ...)
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
