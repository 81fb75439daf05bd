"""Style transfer's section of the configuration (`style:` in params.yaml, conf/style.yaml).
`pipeline.config` composes the tree and calls `schema` and `check` for this section; every key in an
error message is the full one (`style.optimizer.name`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline.config import _schema_keys
from pipeline.config import check as check_key
from pipeline.pictures import ImageSource, check_source

PREFIX = "style."
USER_PATHS = ("images.content.path", "images.content.mirror", "images.style.path", "images.style.mirror")
OPTIMIZERS = ("lbfgs", "sgd", "adam", "rmsprop")  # L-BFGS: SciPy's (1st edition); the rest: Keras's (2nd edition's SGD)


@dataclass
class Paths:
    raw: str = MISSING
    samples: str = MISSING
    metrics: str = MISSING


@dataclass
class Images:
    content: ImageSource = MISSING
    style: ImageSource = MISSING


@dataclass
class Recipe:
    content_layer: str = MISSING
    style_layers: list[str] = MISSING
    content_weight: float = MISSING
    style_weight: float = MISSING
    tv_weight: float = MISSING


@dataclass
class Optimizer:
    name: str = MISSING
    learning_rate: float = MISSING
    decay_steps: int = MISSING
    decay_rate: float = MISSING


@dataclass
class StyleMlflow:
    experiment: str = MISSING


@dataclass
class Style:
    paths: Paths = MISSING
    images: Images = MISSING
    network: str = MISSING
    weights: str = MISSING
    recipes: dict[str, Recipe] = field(default_factory=dict)
    size: int = MISSING
    optimizer: Optimizer = MISSING
    evaluations: int = MISSING
    image_every: int = MISSING
    mlflow: StyleMlflow = MISSING


def schema(raw, source: str) -> DictConfig:
    return OmegaConf.structured(Style)


def known_keys() -> list[str]:
    return _schema_keys(Style)


def _check(ok: bool, key: str, message: str, source: str) -> None:
    check_key(ok, PREFIX + key, message, source)


def check(cfg: DictConfig, source: str) -> None:
    """The ranges and choices of the section `cfg` (`style:`)."""
    from pipeline.networks import APPLICATIONS

    _check(cfg.network in APPLICATIONS, "network", f"must be one of {tuple(APPLICATIONS)}, got {cfg.network!r}", source)
    _check(cfg.network in cfg.recipes, "recipes", f"has no recipe for network {cfg.network!r} (set style.recipes.{cfg.network})", source)
    r = cfg.recipes[cfg.network]
    key = f"recipes.{cfg.network}"
    _check(len(r.style_layers) > 0, f"{key}.style_layers", "must name at least one layer", source)
    for name in ("content_weight", "style_weight", "tv_weight"):
        _check(math.isfinite(r[name]) and r[name] >= 0, f"{key}.{name}", f"must be finite and >= 0, got {r[name]}", source)
    _check(cfg.size >= 32, "size", f"must be >= 32 (the networks' smallest input), got {cfg.size}", source)
    o = cfg.optimizer
    _check(o.name in OPTIMIZERS, "optimizer.name", f"must be one of {OPTIMIZERS}, got {o.name!r}", source)
    _check(math.isfinite(o.learning_rate) and o.learning_rate > 0, "optimizer.learning_rate", f"must be finite and > 0, got {o.learning_rate}", source)
    _check(o.decay_steps >= 1, "optimizer.decay_steps", f"must be >= 1, got {o.decay_steps}", source)
    _check(0 < o.decay_rate <= 1, "optimizer.decay_rate", f"must be in (0, 1], got {o.decay_rate}", source)
    _check(cfg.evaluations >= 1, "evaluations", f"must be >= 1, got {cfg.evaluations}", source)
    _check(cfg.image_every >= 1, "image_every", f"must be >= 1, got {cfg.image_every}", source)
    _check(cfg.images.content.name != cfg.images.style.name, "images.style.name",
           f"is images.content.name too ({cfg.images.style.name!r}): both would be written to one file", source)
    for which in ("content", "style"):
        check_source(cfg.images[which], f"images.{which}", lambda ok, k, message: _check(ok, k, message, source))
