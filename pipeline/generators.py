"""The generators genlab runs, by the name `generator=` and params.yaml's sections use.

Each is a package under pipeline/ with the same small surface, so that the shared modules (config,
the `python -m pipeline` runner, the sweep summary) can drive any of them without knowing one:
  config   `schema(raw_section)` (its section's structured schema), `check(section, source)`
           (ranges and choices), `USER_PATHS` (keys naming the user's own files)
  STAGES   its stage modules in order, each with `run(cfg) -> dict` (and `log_reused` where a
           reused result must still be logged), `ERRORS` (what its stages report as one line)
  summary  `rows(children)` and `figures(rows)` for a sweep's summary
"""
from __future__ import annotations

import importlib

GENERATORS = {"text": "pipeline.text", "vae": "pipeline.vae", "gan": "pipeline.gan", "dream": "pipeline.dream",
              "style": "pipeline.style"}


def package(name: str):
    return importlib.import_module(GENERATORS[name])


def config_of(name: str):
    return importlib.import_module(GENERATORS[name] + ".config")


def summary(name: str):
    return importlib.import_module(GENERATORS[name] + ".summary")


def stages(name: str) -> dict:
    """The generator's stage modules, in order: {"fetch": <module>, ...}."""
    pkg = package(name)
    return {stage: importlib.import_module(f"{GENERATORS[name]}.{stage}") for stage in pkg.STAGES}
