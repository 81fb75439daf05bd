"""`python -m pipeline [overrides]`: one generator's stages (`generator=text`, the default: fetch ->
vectorize -> train -> sample; `generator=vae` or `gan`: fetch -> train -> sample) in one process, configured
by Hydra from conf/. With `-m` it is one job per combination of a sweep (`python -m pipeline -m
text.sample.temperature=0.2,1.0 text.vectorize.maxlen=40,60`). Each job works in
its own folder (outputs/... or multirun/.../<job>) and logs one MLflow run, tagged with its sweep
and nested under the sweep's parent run (`pipeline.sweep`). Under `hydra/launcher=joblib` each job
gets cores / n_jobs TensorFlow threads unless `threads` says otherwise.
The same stage functions as `dvc repro`, on the same validated config. A stage whose params, code
and upstream results were seen before is not run again: its stored outputs are copied in
(`pipeline.cache`, under `cache.dir`), and the run's tags say which stages ran and which were reused
(`stage.<name>`: ran|reused, `stage.<name>.key`: the cache key).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline import cache, config, download, generators, sweep, tracking


def expected_errors() -> tuple[type[Exception], ...]:
    """What the stages' own commands report as one `error:` line (bad input, config or store);
    anything else is a bug and keeps its traceback."""
    from pipeline.machine import import_keras

    import_keras()  # some generators' error classes live beside Keras code: TensorFlow's start-up lines hidden first
    own = tuple(e for name in generators.GENERATORS for e in generators.package(name).errors())
    return (config.ConfigError, tracking.TrackingError, *own, OSError)


class JobFailed(CompactHydraException):
    """An expected error in a sweep's job: Hydra reports the job and this one line, no traceback,
    and runs the sweep's other jobs."""


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def job(raw: DictConfig) -> dict:
    """One job: its stages, or, for an expected error (bad input, config, store), one line that
    names the file or key, as the stages' own commands print it; a bug keeps its traceback."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return _job(raw)
    except expected_errors() as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise JobFailed(f"error: {e}") from None
        sys.exit(f"error: {e}")


def _job(raw: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    launched_from = Path(hc.runtime.cwd)
    with open_dict(raw):
        # Hydra has moved into the job folder: anchor the store and the user's own files at the
        # folder the user ran from.
        raw.mlflow.tracking_uri = tracking.resolve_uri(raw.mlflow.tracking_uri, launched_from)
        user_paths = [f"{name}.{key}" for name in generators.GENERATORS for key in generators.config_of(name).USER_PATHS]
        for key in (*user_paths, "cache.dir"):
            if OmegaConf.select(raw, key):
                OmegaConf.update(raw, key, str(launched_from / Path(OmegaConf.select(raw, key)).expanduser()))
        raw.mlflow.tags["overrides"] = " ".join(overrides)
        if hc.mode == RunMode.MULTIRUN:
            raw.mlflow.tags["sweep"] = str(Path(hc.runtime.cwd) / hc.sweep.dir)
            raw.mlflow.tags["sweep.job"] = str(hc.job.num)
        if raw.threads is None and "joblib" in str(hc.launcher.get("_target_", "")).lower():
            raw.threads = threads_per_job(hc.launcher.n_jobs)
    OmegaConf.resolve(raw)
    cfg = config.validate(raw, config._source(overrides))
    print(f"job folder: {Path.cwd()}")
    if hc.mode == RunMode.MULTIRUN:
        parent = sweep.parent_run(sweep.sweep_dir(hc))
        return run_stages(cfg, parent.get("run_id"), sweep.job_name(overrides, parent.get("swept", [])))
    # Named by what the user changed (Hydra cannot compose conf/'s defaults again inside its own job).
    typed = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    named = [k for k in typed if not k.split(".", 1)[-1].startswith(tracking.UNNAMED) and k not in ("generator",)]
    return run_stages(cfg, None, sweep.job_name(overrides, named) or "defaults")


def threads_per_job(n_jobs: int) -> int:
    """TensorFlow threads for one of `n_jobs` parallel jobs (joblib's count: -1 is all cores, -2 all
    but one, ...): the cores shared out, so that the jobs' thread pools do not oversubscribe them."""
    cores = len(os.sched_getaffinity(0))
    workers = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
    return max(1, cores // workers)


def run_stages(cfg, parent_run_id: str | None = None, run_name: str | None = None) -> dict:
    """The stages of generator `cfg.generator` in order inside one MLflow run of its experiment (a
    child of `parent_run_id` when given), each run or reused from the cache. A run that fails for
    an expected error carries it as its `error` tag."""
    import mlflow

    own = config.section(cfg, cfg.generator)  # what the stages read, and the params the run logs
    experiment_id = tracking.connect(tracking.resolve_uri(own.mlflow.tracking_uri), own.mlflow.experiment)
    params = tracking.flatten(OmegaConf.to_container(own, resolve=True))
    resumed = None if parent_run_id else resumable_run(own, params)
    results, keys = {}, []
    with mlflow.start_run(run_id=resumed, experiment_id=None if resumed else experiment_id, parent_run_id=parent_run_id,
                          run_name=None if resumed else run_name):
        # Before any stage: a job that fails still shows its config and its place in the sweep.
        mlflow.log_params(params)
        mlflow.set_tags(tracking.flatten(OmegaConf.to_container(cfg.mlflow.tags)))
        try:
            for name, module in generators.stages(cfg.generator).items():
                stage = f"{cfg.generator}_{name}"  # as dvc.yaml names it
                if cfg.cache.enabled:
                    result, status, key = cache.run(stage, module.run, cfg, keys, Path(cfg.cache.dir))
                else:
                    result, status, key = module.run(cfg), "ran", ""
                keys.append(key)
                mlflow.set_tags({f"stage.{name}": status, f"stage.{name}.key": key})
                if status == "reused":
                    print(f"{name}: reused (cache key {key})", flush=True)
                    if hasattr(module, "log_reused"):  # what the stage logs when it runs
                        module.log_reused(cfg, result)
                results[name] = {**result, "status": status, "key": key}
        except expected_errors() as e:
            mlflow.set_tag("error", str(e)[:5000])  # the UI then shows why the run FAILED
            raise
    return results


def resumable_run(cfg, params: dict[str, str]) -> str | None:
    """The MLflow run a killed job in this folder left, to go on in, when its training checkpoint
    names one and that run holds this very config (a job folder rerun with other settings gets a
    new run, and the old one, if still RUNNING, is marked KILLED: its process is gone)."""
    import mlflow

    from pipeline import checkpoint

    folder = OmegaConf.select(cfg, "paths.checkpoints")
    if folder is None:
        return None  # a generator that fits no dataset (the dream, style transfer) has no checkpoint to resume
    found = checkpoint.latest_state(Path(folder))
    run_id = found and found[1].get("run_id")
    if not run_id:
        return None
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None  # another store, or the run was deleted
    if run.data.params == params:
        print(f"job: going on in MLflow run {run_id}, which the checkpoint in {cfg.paths.checkpoints} names", flush=True)
        return run_id
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, "KILLED")
    return None


def main() -> None:
    try:
        config.check_overrides(sys.argv[1:])
    except config.ConfigError as e:
        sys.exit(f"error: {e}")
    # Hydra changes the working directory before the job runs: make a relative mirror absolute.
    if os.environ.get(download.MIRROR_ENV):
        os.environ[download.MIRROR_ENV] = str(Path(os.environ[download.MIRROR_ENV]).resolve())
    job()


if __name__ == "__main__":
    sys.exit(main())
