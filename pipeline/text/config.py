"""The text generator's section of the configuration (`text:` in params.yaml, conf/text.yaml and
its groups conf/text/corpus/, conf/text/model/), and the `python -m pipeline.text.generate`
command's own config (conf/generate.yaml). `pipeline.config` composes the tree and calls `schema`
and `check` for this section; every key in an error message is the full one (`text.train.epochs`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from pipeline.config import Divergence, Plateau, _compose_raw, _schema_keys, _source, as_list, check_fitting, merge
from pipeline.config import check as check_key

PREFIX = "text."
# Keys that name the user's own files: `python -m pipeline` anchors them at the folder it was launched from.
USER_PATHS = ("corpus.path", "fetch.mirror")


@dataclass
class Corpus:
    name: str = MISSING
    url: Optional[str] = MISSING
    sha256: Optional[str] = MISSING
    path: Optional[str] = MISSING
    source: str = MISSING  # the local file the fetch stage depends on (dvc.yaml): `path`, or the corpus's conf file
    lowercase: bool = MISSING  # how the corpus is meant to be read; vectorize.lowercase defaults to it


@dataclass
class Paths:
    raw: str = MISSING
    prepared: str = MISSING
    models: str = MISSING
    metrics: str = MISSING
    samples: str = MISSING
    checkpoints: str = MISSING


@dataclass
class Fetch:
    mirror: Optional[str] = MISSING
    timeout: float = MISSING


@dataclass
class Vectorize:
    normalize: bool = MISSING
    lowercase: bool = MISSING
    max_chars: Optional[int] = MISSING
    val_fraction: float = MISSING
    maxlen: int = MISSING
    step: int = MISSING
    val_step: Optional[int] = MISSING


@dataclass
class LstmModel:
    """conf/model/lstm.yaml, the book's model."""
    name: str = MISSING
    units: int = MISSING


@dataclass
class RnnModel:
    """conf/model/stacked_lstm.yaml and gru.yaml."""
    name: str = MISSING
    units: int = MISSING
    layers: int = MISSING
    dropout: float = MISSING
    embedding: Optional[int] = MISSING


@dataclass
class ConvModel:
    """conf/model/conv1d.yaml."""
    name: str = MISSING
    units: int = MISSING  # channels of every layer: `units` is each family's width, so one override sizes any
    kernel_size: int = MISSING
    dilations: list[int] = MISSING
    dropout: float = MISSING
    embedding: Optional[int] = MISSING


# model.name -> the keys its section holds: each family is checked against its own schema.
MODEL_SCHEMAS = {"lstm": LstmModel, "stacked_lstm": RnnModel, "gru": RnnModel, "conv1d": ConvModel}
# Generation modes each family supports: a convnet has no recurrent state to carry.
FAMILY_MODES = {"conv1d": ("window",)}


@dataclass
class EpochSamples:
    temperatures: list[float] = MISSING
    length: int = MISSING
    mode: str = MISSING


@dataclass
class Train:
    optimizer: str = MISSING
    learning_rate: float = MISSING
    batch_size: int = MISSING
    steps_per_execution: int = MISSING
    batch_parts: Any = MISSING  # a positive int or "auto"
    fused_lstm: Any = MISSING  # true, false or "auto"
    epochs: int = MISSING
    targets: str = MISSING
    time_limit: Optional[float] = MISSING
    shuffle_buffer: int = MISSING
    clipnorm: Optional[float] = MISSING
    plateau: Plateau = MISSING
    divergence: Divergence = MISSING
    checkpoint: bool = MISSING
    deterministic: bool = MISSING
    epoch_samples: EpochSamples = MISSING


@dataclass
class Sample:
    temperature: Any = MISSING  # one float or a list of floats, so that a multirun can sweep it
    length: int = MISSING
    prompt: Optional[str] = MISSING
    unknown_chars: str = MISSING
    replacement: str = MISSING
    greedy: bool = MISSING
    mode: str = MISSING


@dataclass
class TextMlflow:
    experiment: str = MISSING
    registered_model: Optional[str] = MISSING
    serve_max_length: int = MISSING


@dataclass
class Text:
    corpus: Corpus = MISSING
    paths: Paths = MISSING
    fetch: Fetch = MISSING
    vectorize: Vectorize = MISSING
    model: Any = MISSING  # one of MODEL_SCHEMAS, chosen by model.name
    train: Train = MISSING
    sample: Sample = MISSING
    mlflow: TextMlflow = MISSING


@dataclass
class GenerateMlflow:
    tracking_uri: Optional[str] = MISSING


@dataclass
class Generate:
    """conf/generate.yaml: the `python -m pipeline.generate` command, not a pipeline stage."""
    model_dir: str = MISSING
    run_id: Optional[str] = MISSING
    prompt: str = MISSING
    unknown_chars: str = MISSING
    replacement: str = MISSING
    length: int = MISSING
    temperature: Any = MISSING
    num_samples: int = MISSING
    seed: int = MISSING
    mode: str = MISSING
    greedy: bool = MISSING
    output: Optional[str] = MISSING
    stream: Optional[bool] = MISSING
    mlflow: GenerateMlflow = MISSING


MODES = ("window", "stateful")
TARGETS = ("last", "all")
UNKNOWN_CHARS = ("error", "drop", "replace")


def temperatures(value) -> list[float]:
    """`sample.temperature` as a list: a single value is a list of one."""
    return [float(t) for t in as_list(value)]


def _check(ok: bool, key: str, message: str, source: str) -> None:
    check_key(ok, PREFIX + key, message, source)


def _check_temperatures(values, key: str, source: str, checker=_check) -> None:
    checker(len(values) > 0, key, "must hold at least one temperature", source)
    for t in values:
        checker(isinstance(t, (int, float)) and not isinstance(t, bool), key, f"must be numbers, got {t!r}", source)
        checker(math.isfinite(t) and t > 0, key, f"must be finite and > 0, got {t!r}", source)


def _check_unknown_chars(policy: str, replacement: str, prefix: str, source: str, checker=_check) -> None:
    checker(policy in UNKNOWN_CHARS, f"{prefix}unknown_chars", f"must be one of {UNKNOWN_CHARS}, got {policy!r}", source)
    checker(len(replacement) == 1, f"{prefix}replacement", f"must be one character, got {replacement!r}", source)


def _check_model(m, source: str) -> None:
    if "dropout" in m:
        _check(0 <= m.dropout < 1, "model.dropout", f"must be in [0, 1), got {m.dropout}", source)
    if "embedding" in m:
        _check(m.embedding is None or m.embedding >= 1, "model.embedding", f"must be >= 1 or null, got {m.embedding}", source)
    if "kernel_size" in m:
        _check(m.kernel_size >= 2, "model.kernel_size", f"must be >= 2, got {m.kernel_size}", source)
        _check(len(m.dilations) > 0 and all(d >= 1 for d in m.dilations), "model.dilations",
               f"must be a non-empty list of integers >= 1, got {list(m.dilations)}", source)


def schema(raw, source: str) -> DictConfig:
    """The section's structured schema, its `model` that of the family `model.name` names."""
    base = OmegaConf.structured(Text)
    name = OmegaConf.select(raw, "model.name", default=None) if raw is not None else None
    _check(name in MODEL_SCHEMAS, "model.name", f"must be one of {tuple(MODEL_SCHEMAS)}, got {name!r}", source)
    base.model = OmegaConf.structured(MODEL_SCHEMAS[name])
    return base


def known_keys() -> list[str]:
    """The section's keys, dotted, with the keys of every model family."""
    return [*_schema_keys(Text), *dict.fromkeys(k for m in MODEL_SCHEMAS.values() for k in _schema_keys(m, "model."))]


def check(cfg: DictConfig, source: str) -> None:
    """The ranges and choices of the section `cfg` (`text:`)."""
    positive_ints = ["vectorize.maxlen", "vectorize.step", "train.batch_size",
                     "train.steps_per_execution", "train.epochs", "train.epoch_samples.length", "sample.length", "mlflow.serve_max_length",
                     "model.units", *(f"model.{k}" for k in ("layers",) if k in cfg.model)]
    for key in positive_ints:
        _check(OmegaConf.select(cfg, key) >= 1, key, f"must be >= 1, got {OmegaConf.select(cfg, key)}", source)
    v = cfg.vectorize
    _check(0 < v.val_fraction < 1, "vectorize.val_fraction", f"must be in (0, 1), got {v.val_fraction}", source)
    _check(v.val_step is None or v.val_step >= 1, "vectorize.val_step", f"must be >= 1 or null, got {v.val_step}", source)
    _check(v.max_chars is None or v.max_chars >= 2, "vectorize.max_chars", f"must be >= 2 or null, got {v.max_chars}", source)
    t = cfg.train
    check_fitting(t, PREFIX + "train.", source)
    _check(t.targets in TARGETS, "train.targets", f"must be one of {TARGETS}, got {t.targets!r}", source)
    _check(t.time_limit is None or (math.isfinite(t.time_limit) and t.time_limit > 0), "train.time_limit",
           f"must be > 0 or null, got {t.time_limit}", source)
    _check(t.batch_parts == "auto" or (isinstance(t.batch_parts, int) and not isinstance(t.batch_parts, bool)
                                       and t.batch_parts >= 1),
           "train.batch_parts", f"must be an integer >= 1 or auto, got {t.batch_parts!r}", source)
    _check(isinstance(t.fused_lstm, bool) or t.fused_lstm == "auto", "train.fused_lstm", f"must be true, false or auto, got {t.fused_lstm!r}", source)
    _check(t.fused_lstm is not True or (cfg.model.name == "lstm" and t.targets == "last"), "train.fused_lstm",
           f"true runs the book's model only (model=lstm, train.targets=last), not model={cfg.model.name} with "
           f"train.targets={t.targets}; use auto or false", source)
    _check(t.shuffle_buffer >= 0, "train.shuffle_buffer", f"must be >= 0, got {t.shuffle_buffer}", source)
    _check(cfg.fetch.timeout > 0, "fetch.timeout", f"must be > 0, got {cfg.fetch.timeout}", source)
    _check_temperatures(list(t.epoch_samples.temperatures), "train.epoch_samples.temperatures", source)
    _check(t.epoch_samples.mode in MODES, "train.epoch_samples.mode", f"must be one of {MODES}, got {t.epoch_samples.mode!r}", source)
    s = cfg.sample
    _check_temperatures(as_list(s.temperature), "sample.temperature", source)
    _check(s.mode in MODES, "sample.mode", f"must be one of {MODES}, got {s.mode!r}", source)
    _check_unknown_chars(s.unknown_chars, s.replacement, "sample.", source)
    _check_model(cfg.model, source)
    modes = FAMILY_MODES.get(cfg.model.name, MODES)
    for key in ("train.epoch_samples.mode", "sample.mode"):
        _check(OmegaConf.select(cfg, key) in modes, key,
               f"must be one of {modes} for model {cfg.model.name}, got {OmegaConf.select(cfg, key)!r}", source)
    c = cfg.corpus
    _check(c.path is not None or c.url is not None, "corpus", "needs a url or a path", source)
    _check(c.sha256 is None or (len(c.sha256) == 64 and all(ch in "0123456789abcdef" for ch in c.sha256)),
           "corpus.sha256", f"must be 64 lowercase hex digits or null, got {c.sha256!r}", source)


def validate_generate(raw: DictConfig | dict, source: str = "conf/generate.yaml") -> DictConfig:
    """The generate command's config (conf/generate.yaml), checked like the pipeline's."""
    cfg = merge(Generate, raw, source)
    for key in ("length", "num_samples"):
        check_key(cfg[key] >= 1, key, f"must be >= 1, got {cfg[key]}", source)
    check_key(cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}", source)
    _check_temperatures(as_list(cfg.temperature), "temperature", source, check_key)
    check_key(cfg.mode in MODES, "mode", f"must be one of {MODES}, got {cfg.mode!r}", source)
    _check_unknown_chars(cfg.unknown_chars, cfg.replacement, "", source, check_key)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def compose_generate(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """conf/generate.yaml with overrides, validated: what `python -m pipeline.text.generate` runs."""
    return validate_generate(_compose_raw(overrides, "generate", _schema_keys(Generate)),
                             _source(overrides, "conf/generate.yaml"))
