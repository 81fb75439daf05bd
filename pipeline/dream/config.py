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
from pipeline.pictures import ImageSource, check_source

PREFIX = "dream."
USER_PATHS = ("image.path", "image.mirror")


@dataclass
class Paths:
    raw: str = MISSING
    samples: str = MISSING
    metrics: str = MISSING


@dataclass
class DreamMlflow:
    experiment: str = MISSING


@dataclass
class Dream:
    paths: Paths = MISSING
    image: ImageSource = MISSING
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
    for key in ("size", "octaves", "iterations"):
        _check(OmegaConf.select(cfg, key) >= 1, key, f"must be >= 1, got {OmegaConf.select(cfg, key)}", source)
    _check(cfg.size >= 32, "size", f"must be >= 32 (the networks' smallest input), got {cfg.size}", source)
    _check(cfg.octave_scale > 1, "octave_scale", f"must be > 1, got {cfg.octave_scale}", source)
    _check(math.isfinite(cfg.step) and cfg.step > 0, "step", f"must be finite and > 0, got {cfg.step}", source)
    _check(cfg.max_loss is None or cfg.max_loss > 0, "max_loss", f"must be > 0 or null, got {cfg.max_loss}", source)
    _check(cfg.border >= 0, "border", f"must be >= 0, got {cfg.border}", source)
    smallest = cfg.size / cfg.octave_scale ** (cfg.octaves - 1)
    _check(smallest >= 32, "octaves", f"{cfg.octaves} octaves of {cfg.octave_scale} shrink a {cfg.size}-pixel image to "
           f"{smallest:.0f} pixels, below the networks' 32", source)
    check_source(cfg.image, "image", lambda ok, key, message: _check(ok, key, message, source))
