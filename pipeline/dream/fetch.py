"""Stage fetch (DeepDream): the base image to <paths.raw>/<image.name>, through the same mechanics
as every dataset (`pipeline.download`): `image.path` (a user's own photo, taken as it is), else the
mirror (`image.mirror`, else $GENLAB_DATA_DIR) holding images/<name>, else `image.url`, both pinned
by `image.sha256`. The file must be an image the dream stage can read (`pipeline.pictures`), or
nothing is written. Writes <paths.metrics>/fetch.json: the source, the size and the hash.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline import artifacts, config
from pipeline.download import MIRROR_ENV, FetchError, fetch, sha256_check
from pipeline.pictures import ImageError, read_image


def run(cfg) -> dict:
    cfg = config.section(cfg, "dream")
    i = cfg.image
    dest = Path(cfg.paths.raw) / i.name
    for folder in (dest.parent, Path(cfg.paths.metrics)):
        artifacts.ensure_writable(folder)
    label = f"image {i.name!r}"
    pinned = sha256_check(label, i.sha256)

    def check(path: Path, source: str) -> None:
        if not i.path:  # a user's own photo has no pinned hash; the mirror's and the URL's have
            pinned(path, source)
        try:
            read_image(path, None, i.max_pixels, 1)
        except ImageError as e:
            raise FetchError(str(e).replace(str(path), source)) from None

    source = fetch(dest, label=label, filename=f"images/{i.name}", url=i.url, path=i.path, path_key="dream.image.path",
                   mirror=i.mirror or os.environ.get(MIRROR_ENV), mirror_key="dream.image.mirror", timeout=i.timeout,
                   check=check, pinned=bool(i.sha256) and not i.path)
    result = {"image": i.name, "path": str(dest), "source": source, "bytes": dest.stat().st_size,
              "sha256": artifacts.sha256_of(dest)}
    artifacts.write_json(Path(cfg.paths.metrics) / "fetch.json", result)
    print(f"fetch: {dest} ({result['bytes']} bytes) from {source}")
    return result


def main() -> None:
    try:
        run(config.load())
    except (config.ConfigError, FetchError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
