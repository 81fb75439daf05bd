"""The DCGAN's section of the configuration (`gan:` in params.yaml, conf/gan.yaml). `pipeline.config`
composes the tree and calls `schema` and `check` for this section; every key in an error message
is the full one (`gan.train.steps`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline.config import OPTIMIZERS, _schema_keys
from pipeline.config import check as check_key

PREFIX = "gan."
USER_PATHS = ("data.path", "data.mirror")
GUARD_ACTIONS = ("rollback", "stop", "warn")


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
    label: int = MISSING
    path: Optional[str] = MISSING
    mirror: Optional[str] = MISSING
    timeout: float = MISSING


@dataclass
class Model:
    latent_dim: int = MISSING
    seed_channels: int = MISSING
    filters: int = MISSING
    d_filters: int = MISSING
    dropout: float = MISSING
    ema: Optional[float] = MISSING


@dataclass
class Guard:
    action: str = MISSING
    patience: int = MISSING
    d_loss_floor: float = MISSING
    diversity_ratio: float = MISSING
    max_rollbacks: int = MISSING


@dataclass
class Train:
    steps: int = MISSING
    batch_size: int = MISSING
    d_optimizer: str = MISSING
    d_learning_rate: float = MISSING
    g_optimizer: str = MISSING
    g_learning_rate: float = MISSING
    beta_1: float = MISSING
    clipvalue: Optional[float] = MISSING
    label_noise: float = MISSING
    check_every: int = MISSING
    grid: int = MISSING
    frogs: Optional[int] = MISSING
    holdout: int = MISSING
    checkpoint: bool = MISSING
    guard: Guard = MISSING


@dataclass
class Evaluate:
    network: str = MISSING
    weights: str = MISSING
    layer: str = MISSING
    size: int = MISSING
    images: int = MISSING
    batch_size: int = MISSING


@dataclass
class Sample:
    images: int = MISSING
    grid: int = MISSING
    steps: int = MISSING


@dataclass
class GanMlflow:
    experiment: str = MISSING


@dataclass
class Gan:
    paths: Paths = MISSING
    data: Data = MISSING
    model: Model = MISSING
    train: Train = MISSING
    evaluate: Evaluate = MISSING
    sample: Sample = MISSING
    mlflow: GanMlflow = MISSING


def schema(raw, source: str) -> DictConfig:
    return OmegaConf.structured(Gan)


def known_keys() -> list[str]:
    return _schema_keys(Gan)


def _check(ok: bool, key: str, message: str, source: str) -> None:
    check_key(ok, PREFIX + key, message, source)


def check(cfg: DictConfig, source: str) -> None:
    """The ranges and choices of the section `cfg` (`gan:`)."""
    from pipeline.networks import APPLICATIONS

    m, t, g, e = cfg.model, cfg.train, cfg.train.guard, cfg.evaluate
    for key in ("model.latent_dim", "model.seed_channels", "model.filters", "model.d_filters", "train.steps",
                "train.batch_size", "train.check_every", "train.grid", "train.guard.patience", "evaluate.batch_size",
                "sample.images", "sample.grid"):
        _check(OmegaConf.select(cfg, key) >= 1, key, f"must be >= 1, got {OmegaConf.select(cfg, key)}", source)
    _check(0 <= m.dropout < 1, "model.dropout", f"must be in [0, 1), got {m.dropout}", source)
    _check(m.ema is None or 0 < m.ema < 1, "model.ema", f"must be in (0, 1) or null, got {m.ema}", source)
    for which in ("d", "g"):
        _check(t[f"{which}_optimizer"] in OPTIMIZERS, f"train.{which}_optimizer",
               f"must be one of {OPTIMIZERS}, got {t[which + '_optimizer']!r}", source)
        lr = t[f"{which}_learning_rate"]
        _check(math.isfinite(lr) and lr > 0, f"train.{which}_learning_rate", f"must be finite and > 0, got {lr}", source)
    _check(0 <= t.beta_1 < 1, "train.beta_1", f"must be in [0, 1), got {t.beta_1}", source)
    _check(t.clipvalue is None or (math.isfinite(t.clipvalue) and t.clipvalue > 0), "train.clipvalue",
           f"must be > 0 or null, got {t.clipvalue}", source)
    _check(0 <= t.label_noise < 1, "train.label_noise", f"must be in [0, 1), got {t.label_noise}", source)
    _check(t.frogs is None or t.frogs >= 2, "train.frogs", f"must be >= 2 or null, got {t.frogs}", source)
    _check(t.holdout >= 2, "train.holdout", f"must be >= 2 (the memorisation check's held-out frogs), got {t.holdout}", source)
    _check(g.action in GUARD_ACTIONS, "train.guard.action", f"must be one of {GUARD_ACTIONS}, got {g.action!r}", source)
    _check(g.d_loss_floor > 0, "train.guard.d_loss_floor", f"must be > 0, got {g.d_loss_floor}", source)
    _check(0 < g.diversity_ratio < 1, "train.guard.diversity_ratio", f"must be in (0, 1), got {g.diversity_ratio}", source)
    _check(g.max_rollbacks >= 0, "train.guard.max_rollbacks", f"must be >= 0, got {g.max_rollbacks}", source)
    _check(e.network in APPLICATIONS, "evaluate.network", f"must be one of {tuple(APPLICATIONS)}, got {e.network!r}", source)
    _check(e.size >= 32, "evaluate.size", f"must be >= 32 (the network's smallest input), got {e.size}", source)
    _check(e.images >= 2, "evaluate.images", f"must be >= 2 (KID compares pairs), got {e.images}", source)
    _check(cfg.sample.steps >= 2, "sample.steps", f"must be >= 2, got {cfg.sample.steps}", source)
    d = cfg.data
    _check(d.path is not None or d.url is not None, "data", "needs a url or a path", source)
    _check(0 <= d.label <= 9, "data.label", f"must be a CIFAR-10 class 0-9, got {d.label}", source)
    for key in ("sha256", "content_sha256"):
        value = d[key]
        _check(value is None or (len(value) == 64 and all(ch in "0123456789abcdef" for ch in value)),
               f"data.{key}", f"must be 64 lowercase hex digits or null, got {value!r}", source)
    _check(d.timeout > 0, "data.timeout", f"must be > 0, got {d.timeout}", source)
