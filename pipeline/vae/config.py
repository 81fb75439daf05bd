"""The VAE's section of the configuration (`vae:` in params.yaml, conf/vae.yaml). `pipeline.config`
composes the tree and calls `schema` and `check` for this section; every key in an error message
is the full one (`vae.train.beta`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline.config import Divergence, Plateau, _schema_keys, check_fitting
from pipeline.config import check as check_key

PREFIX = "vae."
USER_PATHS = ("data.path", "data.mirror")
DIGITS = 10


@dataclass
class Paths:
    raw: str = MISSING
    models: str = MISSING
    metrics: str = MISSING
    samples: str = MISSING
    checkpoints: str = MISSING


@dataclass
class Data:
    name: str = MISSING
    url: Optional[str] = MISSING
    sha256: Optional[str] = MISSING
    content_sha256: Optional[str] = MISSING
    path: Optional[str] = MISSING
    mirror: Optional[str] = MISSING
    timeout: float = MISSING


@dataclass
class Model:
    filters: list[int] = MISSING
    dense: int = MISSING
    latent_dim: int = MISSING


@dataclass
class Train:
    beta: float = MISSING
    optimizer: str = MISSING
    learning_rate: float = MISSING
    batch_size: int = MISSING
    epochs: int = MISSING
    clipnorm: Optional[float] = MISSING
    plateau: Plateau = MISSING
    divergence: Divergence = MISSING
    checkpoint: bool = MISSING
    reconstructions: int = MISSING
    train_digits: Optional[int] = MISSING
    test_digits: Optional[int] = MISSING


@dataclass
class Evaluate:
    iwae_samples: int = MISSING
    images: Optional[int] = MISSING
    batch_size: int = MISSING


@dataclass
class Sample:
    grid: int = MISSING
    samples: int = MISSING
    interpolate: list[int] = MISSING
    steps: int = MISSING
    concept: list[int] = MISSING
    concept_digits: int = MISSING


@dataclass
class VaeMlflow:
    experiment: str = MISSING


@dataclass
class Vae:
    paths: Paths = MISSING
    data: Data = MISSING
    model: Model = MISSING
    train: Train = MISSING
    evaluate: Evaluate = MISSING
    sample: Sample = MISSING
    mlflow: VaeMlflow = MISSING


def schema(raw, source: str) -> DictConfig:
    return OmegaConf.structured(Vae)


def known_keys() -> list[str]:
    return _schema_keys(Vae)


def _check(ok: bool, key: str, message: str, source: str) -> None:
    check_key(ok, PREFIX + key, message, source)


def check(cfg: DictConfig, source: str) -> None:
    """The ranges and choices of the section `cfg` (`vae:`)."""
    m, t, s = cfg.model, cfg.train, cfg.sample
    _check(len(m.filters) > 0 and all(f >= 1 for f in m.filters), "model.filters",
           f"must be a non-empty list of integers >= 1, got {list(m.filters)}", source)
    _check(len(m.filters) <= 2, "model.filters", f"28 x 28 digits halve at most twice (7 x 7), got {len(m.filters)} layers", source)
    for key in ("model.dense", "model.latent_dim", "train.reconstructions", "evaluate.iwae_samples", "evaluate.batch_size",
                "sample.grid", "sample.samples", "sample.concept_digits"):
        _check(OmegaConf.select(cfg, key) >= 1, key, f"must be >= 1, got {OmegaConf.select(cfg, key)}", source)
    _check(math.isfinite(t.beta) and t.beta >= 0, "train.beta", f"must be finite and >= 0, got {t.beta}", source)
    check_fitting(t, PREFIX + "train.", source)
    for key in ("train.train_digits", "train.test_digits", "evaluate.images"):
        value = OmegaConf.select(cfg, key)
        _check(value is None or value >= 1, key, f"must be >= 1 or null, got {value}", source)
    _check(s.steps >= 2, "sample.steps", f"must be >= 2, got {s.steps}", source)
    _check(len(s.interpolate) == 2 and all(0 <= i for i in s.interpolate), "sample.interpolate",
           f"must be two test-set indices, got {list(s.interpolate)}", source)
    _check(len(s.concept) == 2 and all(0 <= c < DIGITS for c in s.concept) and s.concept[0] != s.concept[1],
           "sample.concept", f"must be two different digit classes 0-9, got {list(s.concept)}", source)
    d = cfg.data
    _check(d.path is not None or d.url is not None, "data", "needs a url or a path", source)
    for key in ("sha256", "content_sha256"):
        value = d[key]
        _check(value is None or (len(value) == 64 and all(ch in "0123456789abcdef" for ch in value)),
               f"data.{key}", f"must be 64 lowercase hex digits or null, got {value!r}", source)
    _check(d.timeout > 0, "data.timeout", f"must be > 0, got {d.timeout}", source)
