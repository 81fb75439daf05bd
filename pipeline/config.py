"""Compose, validate and write the configuration.

Every entry point goes through here: the DVC stages `load()` params.yaml, the Hydra runner and
the tests `compose()` conf/. Both return the same validated, read-only tree: the shared keys
(generator, seed, threads, mlflow, cache) and one section per generator (`text:`, `vae:`, `gan:`), each
shaped and checked by its generator's own `config` module (`pipeline.generators`). A stage works
on `section(cfg, name)`: its generator's section with the shared keys beside it. Defaults live in
the YAML under conf/ only; the dataclasses fix the keys and their types, not their values.

    python -m pipeline.config [overrides...]   writes params.yaml composed from conf/
"""
from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PARAMS_FILE = Path("params.yaml")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


@dataclass
class Mlflow:
    tracking_uri: Optional[str] = MISSING
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Cache:
    enabled: bool = MISSING
    dir: str = MISSING


@dataclass
class Shared:
    """The keys every generator reads; each generator's section is added beside them (`_schema`)."""
    generator: str = MISSING
    seed: int = MISSING
    threads: Optional[int] = MISSING
    mlflow: Mlflow = MISSING
    cache: Cache = MISSING


# The sections of the shared per-epoch machinery (pipeline.epochs), in each generator that fits a dataset.
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


OPTIMIZERS = ("rmsprop", "adam", "sgd")
DIVERGENCE_ACTIONS = ("rollback", "stop")


def check(ok: bool, key: str, message: str, source: str) -> None:
    """A ConfigError naming `source` and `key` unless `ok`."""
    if not ok:
        raise ConfigError(f"{source}: {key} {message}")



def as_list(value) -> list:
    """A value or a list of values (a key that a multirun may sweep) as a list."""
    if OmegaConf.is_list(value):
        value = OmegaConf.to_container(value)
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_fitting(t, prefix: str, source: str) -> None:
    """The keys of a train section that the shared per-epoch machinery reads (`prefix` is the
    section's, "text.train."): optimizer, learning rate, batch size, epochs, clipnorm, plateau,
    divergence."""
    def ok(good, key, message):
        check(good, prefix + key, message, source)

    ok(math.isfinite(t.learning_rate) and t.learning_rate > 0, "learning_rate", f"must be finite and > 0, got {t.learning_rate}")
    ok(t.optimizer in OPTIMIZERS, "optimizer", f"must be one of {OPTIMIZERS}, got {t.optimizer!r}")
    for key in ("batch_size", "epochs"):
        ok(t[key] >= 1, key, f"must be >= 1, got {t[key]}")
    ok(t.clipnorm is None or (math.isfinite(t.clipnorm) and t.clipnorm > 0), "clipnorm", f"must be > 0 or null, got {t.clipnorm}")
    ok(0 < t.plateau.factor < 1, "plateau.factor", f"must be in (0, 1), got {t.plateau.factor}")
    ok(t.plateau.patience >= 1, "plateau.patience", f"must be >= 1, got {t.plateau.patience}")
    ok(0 < t.plateau.min_lr, "plateau.min_lr", f"must be > 0, got {t.plateau.min_lr}")
    ok(t.divergence.action in DIVERGENCE_ACTIONS, "divergence.action",
       f"must be one of {DIVERGENCE_ACTIONS}, got {t.divergence.action!r}")
    ok(t.divergence.max_ratio > 1, "divergence.max_ratio", f"must be > 1, got {t.divergence.max_ratio}")
    ok(t.divergence.max_rollbacks >= 0, "divergence.max_rollbacks", f"must be >= 0, got {t.divergence.max_rollbacks}")


def _generators() -> dict:
    from pipeline.generators import GENERATORS, config_of

    return {name: config_of(name) for name in GENERATORS}


def _schema(raw, source: str) -> DictConfig:
    """The structured schema of the whole tree: the shared keys and each generator's section, which
    its config module shapes from the raw section (the text generator's `model` by `model.name`)."""
    from omegaconf import open_dict

    base = OmegaConf.structured(Shared)
    with open_dict(base):
        for name, module in _generators().items():
            base[name] = module.schema(OmegaConf.select(raw, name, default=None), source)
    return base


def known_keys() -> list[str]:
    """Every key the tree allows, dotted: for the nearest-key hint of a typo."""
    return [*_schema_keys(Shared), *(f"{name}.{k}" for name, m in _generators().items() for k in m.known_keys())]


def merge(schema, raw, source: str, known=None) -> DictConfig:
    """`raw` merged into `schema` (a dataclass or a structured config): unknown keys, wrong types
    and missing values are errors that name the key (with the nearest of the `known` keys)."""
    base = schema if isinstance(schema, DictConfig) else OmegaConf.structured(schema)
    try:
        cfg = OmegaConf.merge(base, raw)
        missing = sorted(OmegaConf.missing_keys(cfg))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        message = str(e).splitlines()[0]  # the rest repeats the key and the schema's class names
        if key and message.startswith("Key ") and " not in " in message:
            message += _nearest(key, known if known is not None else _schema_keys(schema))
        raise ConfigError(f"{source}: {key + ': ' if key else ''}{message}") from None
    if missing:
        raise ConfigError(f"{source}: missing value for {', '.join(missing)}")
    return cfg


def validate(raw: DictConfig | dict, source: str = "config") -> DictConfig:
    """Merge `raw` into the schema (unknown keys and wrong types are errors), check ranges,
    and return a read-only config. `source` names the file or command in error messages."""
    raw = OmegaConf.create(raw) if isinstance(raw, dict) else raw
    cfg = merge(_schema(raw, source), raw, source, known_keys())
    check(cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}", source)
    check(cfg.threads is None or cfg.threads >= 1, "threads", f"must be >= 1 or null, got {cfg.threads}", source)
    generators = _generators()
    check(cfg.generator in generators, "generator", f"must be one of {tuple(generators)}, got {cfg.generator!r}", source)
    for name, module in generators.items():
        module.check(cfg[name], source)
    OmegaConf.set_readonly(cfg, True)
    return cfg


SHARED_KEYS = ("generator", "seed", "threads", "cache", "mlflow")


def section(cfg: DictConfig, name: str) -> DictConfig:
    """What generator `name`'s stages work on: its section with the shared keys beside it, its own
    `mlflow` keys (the experiment, ...) merged into the shared ones (the store, the tags). A stage
    reads `cfg.train.epochs`, `cfg.seed`, `cfg.mlflow.experiment`, and logs its params under those
    names, whatever other generators the tree holds. Given a section already, returns it."""
    if name not in cfg:
        return cfg
    own = OmegaConf.to_container(cfg[name], resolve=True)
    shared = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
              for k in SHARED_KEYS}
    view = OmegaConf.create({**shared, **own, "mlflow": {**shared["mlflow"], **own.get("mlflow", {})}})
    OmegaConf.set_readonly(view, True)
    return view


def _source(overrides, where: str = "conf/") -> str:
    return f"{where} with overrides " + " ".join(overrides) if overrides else where


def _compose_raw(overrides, config_name: str = "config", known=None) -> DictConfig:
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
                known = known if known is not None else known_keys()
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


def _nearest(key: str, known: list[str]) -> str:
    """"; did you mean <the closest known key>?", or nothing if none is close. The sections that
    hold `key` (train for train.zzz) are no answer."""
    import difflib

    # A key of a generator's section typed without it (`train.epochs`): that key in every section.
    sectioned = [k for k in known if k.endswith("." + key) and k.count(".") == key.count(".") + 1]
    groups = [g for g in _groups() if g.endswith("/" + key)]  # a group typed without its section (model=gru)
    if sectioned or groups:
        return "; did you mean " + " or ".join([f"{g}=..." for g in groups] or sectioned) + "?"
    candidates = [k for k in known if not k.startswith("hydra") and not key.startswith(k + ".")]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _groups() -> list[str]:
    """conf/'s config groups inside generator sections ("text/model", ...)."""
    return sorted(p.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.glob("*/*") if p.is_dir())


def check_overrides(args: list[str], config_name: str = "config", known=None) -> None:
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
    _compose_raw(first, config_name, known)


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """conf/ composed with Hydra overrides, interpolations resolved, validated."""
    return validate(_compose_raw(overrides), _source(overrides))


def compose_section(overrides: list[str] | tuple[str, ...] = (), name: str = "text") -> DictConfig:
    """`compose(overrides)`'s section of generator `name`, as its stages read it (benchmarks)."""
    return section(compose(overrides), name)


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
