"""Stage fetch (style transfer): the content photo and the style image to <paths.raw>/<name>, each
through `pipeline.pictures.fetch_image`: its `path` (a user's own file, taken as it is), else the
mirror (`mirror`, else $GENLAB_DATA_DIR) holding images/<name>, else its `url`, both pinned by its
`sha256`. Each must be an image the transfer stage can read, or nothing of it is written. Writes
<paths.metrics>/fetch.json: each image's source, size and hash.
"""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline import artifacts, config
from pipeline.download import FetchError
from pipeline.pictures import fetch_image


def run(cfg) -> dict:
    cfg = config.section(cfg, "style")
    for folder in (Path(cfg.paths.raw), Path(cfg.paths.metrics)):
        artifacts.ensure_writable(folder)
    result = {which: fetch_image(cfg.images[which], Path(cfg.paths.raw), f"style.images.{which}") for which in ("content", "style")}
    artifacts.write_json(Path(cfg.paths.metrics) / "fetch.json", result)
    for which, r in result.items():
        print(f"fetch: {which} {r['path']} ({r['bytes']} bytes) from {r['source']}")
    return result


def main() -> None:
    try:
        run(config.load())
    except (config.ConfigError, FetchError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
