"""Stage fetch (DeepDream): the base image to <paths.raw>/<image.name>, through the same mechanics
as every dataset (`pipeline.pictures.fetch_image`): `image.path` (a user's own photo, taken as it is), else the
mirror (`image.mirror`, else $GENLAB_DATA_DIR) holding images/<name>, else `image.url`, both pinned
by `image.sha256`. The file must be an image the dream stage can read (`pipeline.pictures`), or
nothing is written. Writes <paths.metrics>/fetch.json: the source, the size and the hash.
"""
from __future__ import annotations

import sys
from pathlib import Path

from pipeline import artifacts, config
from pipeline.download import FetchError
from pipeline.pictures import fetch_image


def run(cfg) -> dict:
    cfg = config.section(cfg, "dream")
    for folder in (Path(cfg.paths.raw), Path(cfg.paths.metrics)):
        artifacts.ensure_writable(folder)
    result = fetch_image(cfg.image, Path(cfg.paths.raw), "dream.image")
    artifacts.write_json(Path(cfg.paths.metrics) / "fetch.json", result)
    print(f"fetch: {result['path']} ({result['bytes']} bytes) from {result['source']}")
    return result


def main() -> None:
    try:
        run(config.load())
    except (config.ConfigError, FetchError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
