"""Compose, validate and write the configuration.

Every entry point goes through here: the DVC stages `load()` params.yaml, the Hydra runner and
the tests `compose()` conf/. Both return the same validated, read-only tree. Defaults live in
the YAML under conf/ only; the dataclasses below fix the keys and their types, not their values.

    python -m pipeline.config [overrides...]   writes params.yaml composed from conf/
"""
from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PARAMS_FILE = Path("params.yaml")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


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
class Plateau:
    factor: float = MISSING
    patience: int = MISSING
    min_lr: float = MISSING


@dataclass
class Divergence:
    action: str = MISSING
    max_ratio: float = MISSING
    max_rollbacks: int = MISSING


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
class Mlflow:
    tracking_uri: Optional[str] = MISSING
    experiment: str = MISSING
    tags: dict[str, str] = field(default_factory=dict)
    registered_model: Optional[str] = MISSING
    serve_max_length: int = MISSING


@dataclass
class Cache:
    enabled: bool = MISSING
    dir: str = MISSING


@dataclass
class Config:
    seed: int = MISSING
    threads: Optional[int] = MISSING
    corpus: Corpus = MISSING
    paths: Paths = MISSING
    fetch: Fetch = MISSING
    vectorize: Vectorize = MISSING
    model: Any = MISSING  # one of MODEL_SCHEMAS, chosen by model.name
    train: Train = MISSING
    sample: Sample = MISSING
    mlflow: Mlflow = MISSING
    cache: Cache = MISSING


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


OPTIMIZERS = ("rmsprop", "adam", "sgd")
MODES = ("window", "stateful")
DIVERGENCE_ACTIONS = ("rollback", "stop")
TARGETS = ("last", "all")
UNKNOWN_CHARS = ("error", "drop", "replace")


def temperatures(value) -> list[float]:
    """`sample.temperature` as a list: a single value is a list of one."""
    return [float(t) for t in _as_list(value)]


def _as_list(value) -> list:
    if OmegaConf.is_list(value):
        value = OmegaConf.to_container(value)
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check(ok: bool, key: str, message: str, source: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: {key} {message}")


def _check_temperatures(values, key: str, source: str) -> None:
    _check(len(values) > 0, key, "must hold at least one temperature", source)
    for t in values:
        _check(isinstance(t, (int, float)) and not isinstance(t, bool), key,
               f"must be numbers, got {t!r}", source)
        _check(math.isfinite(t) and t > 0, key, f"must be finite and > 0, got {t!r}", source)


def _check_unknown_chars(policy: str, replacement: str, prefix: str, source: str) -> None:
    _check(policy in UNKNOWN_CHARS, f"{prefix}unknown_chars", f"must be one of {UNKNOWN_CHARS}, got {policy!r}", source)
    _check(len(replacement) == 1, f"{prefix}replacement", f"must be one character, got {replacement!r}", source)


def _check_model(m, source: str) -> None:
    if "dropout" in m:
        _check(0 <= m.dropout < 1, "model.dropout", f"must be in [0, 1), got {m.dropout}", source)
    if "embedding" in m:
        _check(m.embedding is None or m.embedding >= 1, "model.embedding", f"must be >= 1 or null, got {m.embedding}", source)
    if "kernel_size" in m:
        _check(m.kernel_size >= 2, "model.kernel_size", f"must be >= 2, got {m.kernel_size}", source)
        _check(len(m.dilations) > 0 and all(d >= 1 for d in m.dilations), "model.dilations",
               f"must be a non-empty list of integers >= 1, got {list(m.dilations)}", source)


def _merge(schema, raw, source: str) -> DictConfig:
    """`raw` merged into the dataclass `schema`: unknown keys, wrong types and missing values are
    errors that name the key."""
    base = OmegaConf.structured(schema)
    if schema is Config:
        name = OmegaConf.select(OmegaConf.create(raw) if isinstance(raw, dict) else raw, "model.name", default=None)
        _check(name in MODEL_SCHEMAS, "model.name", f"must be one of {tuple(MODEL_SCHEMAS)}, got {name!r}", source)
        base.model = OmegaConf.structured(MODEL_SCHEMAS[name])
    try:
        cfg = OmegaConf.merge(base, raw)
        missing = sorted(OmegaConf.missing_keys(cfg))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        message = str(e).splitlines()[0]  # the rest repeats the key and the schema's class names
        if key and message.startswith("Key ") and " not in " in message:
            message += _nearest(key, _known_keys(schema, *([MODEL_SCHEMAS[name]] if schema is Config else [])))
        raise ConfigError(f"{source}: {key + ': ' if key else ''}{message}") from None
    if missing:
        raise ConfigError(f"{source}: missing value for {', '.join(missing)}")
    return cfg


def validate(raw: DictConfig | dict, source: str = "config") -> DictConfig:
    """Merge `raw` into the schema (unknown keys and wrong types are errors), check ranges,
    and return a read-only config. `source` names the file or command in error messages."""
    cfg = _merge(Config, raw, source)

    positive_ints = ["seed", "vectorize.maxlen", "vectorize.step", "train.batch_size",
                     "train.steps_per_execution", "train.epochs", "train.epoch_samples.length", "sample.length", "mlflow.serve_max_length",
                     "model.units", *(f"model.{k}" for k in ("layers",) if k in cfg.model)]
    for key in positive_ints:
        minimum = 0 if key == "seed" else 1
        _check(OmegaConf.select(cfg, key) >= minimum, key, f"must be >= {minimum}, got {OmegaConf.select(cfg, key)}", source)
    _check(cfg.threads is None or cfg.threads >= 1, "threads", f"must be >= 1 or null, got {cfg.threads}", source)
    v = cfg.vectorize
    _check(0 < v.val_fraction < 1, "vectorize.val_fraction", f"must be in (0, 1), got {v.val_fraction}", source)
    _check(v.val_step is None or v.val_step >= 1, "vectorize.val_step", f"must be >= 1 or null, got {v.val_step}", source)
    _check(v.max_chars is None or v.max_chars >= 2, "vectorize.max_chars", f"must be >= 2 or null, got {v.max_chars}", source)
    t = cfg.train
    _check(math.isfinite(t.learning_rate) and t.learning_rate > 0, "train.learning_rate",
           f"must be finite and > 0, got {t.learning_rate}", source)
    _check(t.optimizer in OPTIMIZERS, "train.optimizer", f"must be one of {OPTIMIZERS}, got {t.optimizer!r}", source)
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
    _check(t.clipnorm is None or (math.isfinite(t.clipnorm) and t.clipnorm > 0), "train.clipnorm",
           f"must be > 0 or null, got {t.clipnorm}", source)
    _check(0 < t.plateau.factor < 1, "train.plateau.factor", f"must be in (0, 1), got {t.plateau.factor}", source)
    _check(t.plateau.patience >= 1, "train.plateau.patience", f"must be >= 1, got {t.plateau.patience}", source)
    _check(0 < t.plateau.min_lr, "train.plateau.min_lr", f"must be > 0, got {t.plateau.min_lr}", source)
    _check(t.divergence.action in DIVERGENCE_ACTIONS, "train.divergence.action",
           f"must be one of {DIVERGENCE_ACTIONS}, got {t.divergence.action!r}", source)
    _check(t.divergence.max_ratio > 1, "train.divergence.max_ratio", f"must be > 1, got {t.divergence.max_ratio}", source)
    _check(t.divergence.max_rollbacks >= 0, "train.divergence.max_rollbacks",
           f"must be >= 0, got {t.divergence.max_rollbacks}", source)
    _check(cfg.fetch.timeout > 0, "fetch.timeout", f"must be > 0, got {cfg.fetch.timeout}", source)
    _check_temperatures(list(t.epoch_samples.temperatures), "train.epoch_samples.temperatures", source)
    _check(t.epoch_samples.mode in MODES, "train.epoch_samples.mode", f"must be one of {MODES}, got {t.epoch_samples.mode!r}", source)
    s = cfg.sample
    _check_temperatures(_as_list(s.temperature), "sample.temperature", source)
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
    OmegaConf.set_readonly(cfg, True)
    return cfg


def validate_generate(raw: DictConfig | dict, source: str = "conf/generate.yaml") -> DictConfig:
    """The generate command's config (conf/generate.yaml), checked like the pipeline's."""
    cfg = _merge(Generate, raw, source)
    for key in ("length", "num_samples"):
        _check(cfg[key] >= 1, key, f"must be >= 1, got {cfg[key]}", source)
    _check(cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}", source)
    _check_temperatures(_as_list(cfg.temperature), "temperature", source)
    _check(cfg.mode in MODES, "mode", f"must be one of {MODES}, got {cfg.mode!r}", source)
    _check_unknown_chars(cfg.unknown_chars, cfg.replacement, "", source)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _source(overrides, where: str = "conf/") -> str:
    return f"{where} with overrides " + " ".join(overrides) if overrides else where


def _compose_raw(overrides, config_name: str = "config") -> DictConfig:
    """conf/ composed and resolved exactly as DVC does for `dvc exp run` (dvc.utils.hydra)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException

    source = _source(overrides, "conf/" if config_name == "config" else f"conf/{config_name}.yaml")
    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            try:
                cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
            except HydraException as e:
                # Hydra's hint for a key that is not there ("use +key=value") leads to a key the
                # schema then rejects: name the unknown key and the nearest known one instead.
                unknown = re.match(r"Could not override '([^']+)'", str(e))
                if not unknown:
                    raise
                known = _known_keys(Generate) if config_name == "generate" else _known_keys(Config, *MODEL_SCHEMAS.values())
                raise ConfigError(f"{source}: unknown key {unknown[1]}{_nearest(unknown[1], known)}") from None
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def _schema_keys(schema, prefix: str = "") -> list[str]:
    """Every key a schema dataclass allows, dotted, its sections' keys included."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(schema)
    keys = []
    for f in dataclasses.fields(schema):
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _schema_keys(hints[f.name], f"{prefix}{f.name}.")
    return keys


def _known_keys(schema, *models) -> list[str]:
    """The keys `schema` allows, with the `model.` keys of the model schemas given."""
    return [*_schema_keys(schema), *dict.fromkeys(k for m in models for k in _schema_keys(m, "model."))]


def _nearest(key: str, known: list[str]) -> str:
    """"; did you mean <the closest known key>?", or nothing if none is close. The sections that
    hold `key` (train for train.zzz) are no answer."""
    import difflib

    candidates = [k for k in known if not k.startswith("hydra") and not key.startswith(k + ".")]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def check_overrides(args: list[str], config_name: str = "config") -> None:
    """A command line's overrides composed before Hydra's own app sees them, so that an unknown
    key or group option is one ConfigError line with the nearest key, not Hydra's hint and
    traceback. A sweep (`a=1,2`) is checked with its first value; ranges are left to each job (a
    sweep runs its good jobs), Hydra's own keys and syntax errors to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if "=" in a and not a.startswith("-")])
    except Exception:  # noqa: BLE001 - Hydra reports bad syntax itself
        return
    first = []
    for o in parsed:
        if o.is_hydra_override():
            continue
        value = next(iter(o.sweep_string_iterator()), None) if o.is_sweep_override() else o.value()
        first.append(f"{o.get_key_element()}={value}" if o.is_sweep_override() else o.input_line)
    _compose_raw(first, config_name)


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """conf/ composed with Hydra overrides, interpolations resolved, validated."""
    return validate(_compose_raw(overrides), _source(overrides))


def compose_generate(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """conf/generate.yaml with overrides, validated: what `python -m pipeline.generate` runs."""
    return validate_generate(_compose_raw(overrides, "generate"), _source(overrides, "conf/generate.yaml"))


def load(path: Path = PARAMS_FILE) -> DictConfig:
    """The validated config of a DVC stage: params.yaml in the working directory."""
    if not path.exists():
        raise ConfigError(f"{path}: not found; write it with `python -m pipeline.config`")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    return validate(raw, str(path))


def write_params(overrides: list[str], path: Path = PARAMS_FILE) -> DictConfig:
    """Compose conf/ and write it to `path` atomically."""
    raw = _compose_raw(overrides)
    cfg = validate(raw, _source(overrides))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(raw), encoding="utf-8")  # byte for byte what DVC writes
    os.replace(tmp, path)
    return cfg


def main() -> None:
    try:
        write_params(sys.argv[1:])
    except ConfigError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {PARAMS_FILE} from {CONF_DIR}" + (f" with {' '.join(sys.argv[1:])}" if sys.argv[1:] else ""))


if __name__ == "__main__":
    main()
