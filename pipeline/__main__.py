"""`python -m pipeline [overrides]`: the whole pipeline, fetch -> vectorize -> train -> sample, in
one process, configured by Hydra from conf/. With `-m` it is one job per combination of a sweep
(`python -m pipeline -m sample.temperature=0.2,1.0 vectorize.maxlen=40,60`). Each job works in
its own folder (outputs/... or multirun/.../<job>) and logs one MLflow run, tagged with its sweep.
The same stage functions as `dvc repro`, on the same validated config.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline import config, fetch, sample, tracking, train, vectorize

STAGES = {"fetch": fetch.run, "vectorize": vectorize.run, "train": train.run, "sample": sample.run}


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def job(raw: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    launched_from = Path(hc.runtime.cwd)
    with open_dict(raw):
        # Hydra has moved into the job folder: anchor the store and the user's own files at the
        # folder the user ran from.
        raw.mlflow.tracking_uri = tracking.resolve_uri(raw.mlflow.tracking_uri, launched_from)
        for key in ("corpus.path", "fetch.mirror"):
            if OmegaConf.select(raw, key):
                OmegaConf.update(raw, key, str(launched_from / Path(OmegaConf.select(raw, key)).expanduser()))
        raw.mlflow.tags["overrides"] = " ".join(overrides)
        if hc.mode == RunMode.MULTIRUN:
            raw.mlflow.tags["sweep"] = str(Path(hc.runtime.cwd) / hc.sweep.dir)
            raw.mlflow.tags["sweep.job"] = str(hc.job.num)
    OmegaConf.resolve(raw)
    cfg = config.validate(raw, config._source(overrides))
    print(f"job folder: {Path.cwd()}")
    return {name: stage(cfg) for name, stage in STAGES.items()}


def main() -> None:
    # Hydra changes the working directory before the job runs: make a relative mirror absolute.
    if os.environ.get(fetch.MIRROR_ENV):
        os.environ[fetch.MIRROR_ENV] = str(Path(os.environ[fetch.MIRROR_ENV]).resolve())
    job()


if __name__ == "__main__":
    sys.exit(main())
