"""MLflow: which store, which run, and what is logged about the environment.

MLflow watches, DVC owns the artifacts: the stages write their outputs to disk first and log
copies. The tracking URI is resolved once: $MLFLOW_TRACKING_URI, else `mlflow.tracking_uri`,
else a SQLite store `mlflow.db` at the project root (artifacts beside it in `mlartifacts/`), so
that DVC's queued experiments and Hydra job folders all log into one place.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path

DEFAULT_DB = "mlflow.db"
# DVC runs queued experiments in a copy of the repository under <root>/.dvc/tmp/exps/.
_DVC_EXPS = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep


class TrackingError(RuntimeError):
    pass


def project_root(cwd: Path | None = None) -> Path:
    cwd = (cwd or Path.cwd()).resolve()
    s = str(cwd)
    return Path(s.split(_DVC_EXPS)[0]) if _DVC_EXPS in s else cwd


def resolve_uri(configured: str | None, root: Path | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri:
        return uri
    return f"sqlite:///{project_root(root) / DEFAULT_DB}"


def connect(uri: str, experiment: str) -> str:
    """Point MLflow at `uri` and return the experiment's id, creating it if needed.
    Fails fast, with the URI in the message, when the store cannot be reached."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    # A server that is down would be retried for minutes: probe it once, quickly, first.
    probe = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {k: os.environ.get(k) for k in probe}
    os.environ.update({k: v for k, v in probe.items() if saved[k] is None})
    try:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            mlflow.set_tracking_uri(uri)  # only a store that works becomes the current one
            return found.experiment_id
        location = None
        if uri.startswith("sqlite:///"):  # keep artifacts beside the database, not in the cwd
            location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        mlflow.set_tracking_uri(uri)
        try:
            return client.create_experiment(experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            found = client.get_experiment_by_name(experiment)  # created by a parallel job meanwhile
            if found is None:
                raise
            return found.experiment_id
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot use this store"
        raise TrackingError(f"mlflow.tracking_uri: cannot reach the MLflow store {uri}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<secret>[^/@\s]*)@")


def redact(text: str) -> str:
    """`text` with the password of any URL in it (scheme://user:password@host) replaced by ***:
    params, tags and meta.json never carry a credential."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def flatten(tree, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: {"vectorize.maxlen": "60", ...}, credentials redacted.
    Only the config is logged, never the environment (where MLflow's and cloud credentials live)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = redact(str(value))
    return out


def environment_tags() -> dict[str, str]:
    """Keras, its backend and the backend's version, and the code's git commit."""
    import importlib

    from pipeline.machine import import_keras

    keras = import_keras()  # TensorFlow's start-up lines hidden, as every stage imports it

    backend = keras.backend.backend()
    tags = {"keras": keras.__version__, "keras.backend": backend,
            backend: getattr(importlib.import_module(backend), "__version__", "?")}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            tags["git_commit"] = commit.stdout.strip()
    except OSError:
        pass
    return tags


# Short names for the keys people sweep, so that a run's name shows its values in the few
# characters the MLflow UI keeps (`T=0.5 maxlen=20`, not `sample.temperature=0.5 vectorize.…`).
SHORT = {"sample.temperature": "T"}
# Keys that say where or how to run, not what: never part of a run's name.
UNNAMED = ("mlflow", "paths", "cache", "fetch", "threads", "corpus.url", "corpus.sha256", "corpus.source")


def short_names(settings: dict[str, object]) -> str:
    """`{"sample.temperature": 0.5, "vectorize.maxlen": 20}` as "T=0.5 maxlen=20": each key by its
    last part (or its SHORT name), the full key where two would read the same."""
    last = [SHORT.get(k, k.rsplit(".", 1)[-1]) for k in settings]
    names = [n if last.count(n) == 1 else k for n, k in zip(last, settings)]
    return " ".join(f"{n}={v}" for n, v in zip(names, settings.values()))


def run_name(cfg, defaults) -> str:
    """A run's name: what its config changes from conf/'s defaults, short (`maxlen=40 units=64`),
    "defaults" when nothing: runs of different configs get different names, whatever the seed
    does to MLflow's random ones."""
    from omegaconf import OmegaConf

    base = flatten(OmegaConf.to_container(defaults, resolve=True))
    changed = {k: v for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()
               if base.get(k) != v and not k.startswith(UNNAMED)}
    return short_names(changed)[:200] or "defaults"


@contextlib.contextmanager
def run(run_id: str | None = None, experiment_id: str | None = None, name=None):
    """The MLflow run a stage logs to: the active one when a caller opened it (a `python -m pipeline`
    job holds one run for all its stages), else `run_id`'s, else a new one in `experiment_id`
    called `name()` (a function: called only for a new run)."""
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        yield active
        return
    with mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                          run_name=None if run_id or name is None else name()) as started:
        yield started
