"""DeepDream's section of the configuration (`dream:` in params.yaml, conf/dream.yaml). `pipeline.config`
composes the tree and calls `schema` and `check` for this section; every key in an error message
is the full one (`dream.octaves`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline.config import _schema_keys
from pipeline.config import check as check_key

PREFIX = "dream."
USER_PATHS = ("image.path", "image.mirror")


@dataclass
class Paths:
    raw: str = MISSING
    samples: str = MISSING
    metrics: str = MISSING


@dataclass
class Image:
    name: str = MISSING
    url: Optional[str] = MISSING
    sha256: Optional[str] = MISSING
    path: Optional[str] = MISSING
    mirror: Optional[str] = MISSING
    timeout: float = MISSING
    max_pixels: int = MISSING


@dataclass
class DreamMlflow:
    experiment: str = MISSING


@dataclass
class Dream:
    paths: Paths = MISSING
    image: Image = MISSING
    network: str = MISSING
    weights: str = MISSING
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    size: int = MISSING
    octaves: int = MISSING
    octave_scale: float = MISSING
    iterations: int = MISSING
    step: float = MISSING
    max_loss: Optional[float] = MISSING
    border: int = MISSING
    reinject: bool = MISSING
    mlflow: DreamMlflow = MISSING


def schema(raw, source: str) -> DictConfig:
    return OmegaConf.structured(Dream)


def known_keys() -> list[str]:
    return _schema_keys(Dream)


def _check(ok: bool, key: str, message: str, source: str) -> None:
    check_key(ok, PREFIX + key, message, source)


def check(cfg: DictConfig, source: str) -> None:
    """The ranges and choices of the section `cfg` (`dream:`)."""
    from pipeline.networks import APPLICATIONS

    _check(cfg.network in APPLICATIONS, "network", f"must be one of {tuple(APPLICATIONS)}, got {cfg.network!r}", source)
    _check(cfg.network in cfg.layers, "layers", f"has no layers for network {cfg.network!r} (set dream.layers.{cfg.network})", source)
    chosen = cfg.layers[cfg.network]
    _check(len(chosen) > 0 and all(math.isfinite(w) for w in chosen.values()), f"layers.{cfg.network}",
           f"must name at least one layer with a finite weight, got {dict(chosen)}", source)
    for key in ("size", "octaves", "iterations", "image.max_pixels"):
        _check(OmegaConf.select(cfg, key) >= 1, key, f"must be >= 1, got {OmegaConf.select(cfg, key)}", source)
    _check(cfg.size >= 32, "size", f"must be >= 32 (the networks' smallest input), got {cfg.size}", source)
    _check(cfg.octave_scale > 1, "octave_scale", f"must be > 1, got {cfg.octave_scale}", source)
    _check(math.isfinite(cfg.step) and cfg.step > 0, "step", f"must be finite and > 0, got {cfg.step}", source)
    _check(cfg.max_loss is None or cfg.max_loss > 0, "max_loss", f"must be > 0 or null, got {cfg.max_loss}", source)
    _check(cfg.border >= 0, "border", f"must be >= 0, got {cfg.border}", source)
    smallest = cfg.size / cfg.octave_scale ** (cfg.octaves - 1)
    _check(smallest >= 32, "octaves", f"{cfg.octaves} octaves of {cfg.octave_scale} shrink a {cfg.size}-pixel image to "
           f"{smallest:.0f} pixels, below the networks' 32", source)
    i = cfg.image
    _check(i.path is not None or i.url is not None, "image", "needs a url or a path", source)
    _check(i.sha256 is None or (len(i.sha256) == 64 and all(ch in "0123456789abcdef" for ch in i.sha256)),
           "image.sha256", f"must be 64 lowercase hex digits or null, got {i.sha256!r}", source)
    _check(i.timeout > 0, "image.timeout", f"must be > 0, got {i.timeout}", source)
