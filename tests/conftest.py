import os
import shutil
from pathlib import Path

import pytest

from pipeline import config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local corpus mirror ($GENLAB_DATA_DIR). CI always sets it: there, its absence fails."""
    value = os.environ.get("GENLAB_DATA_DIR")
    if not value:
        if os.environ.get("CI"):
            pytest.fail("GENLAB_DATA_DIR is not set; CI must point it at ../shared/data")
        pytest.skip("GENLAB_DATA_DIR is not set (point it at a folder holding nietzsche.txt)")
    path = Path(value).resolve()
    assert (path / "nietzsche.txt").is_file(), f"{path} holds no nietzsche.txt"
    return path


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made and no runs. Making the tables takes MLflow
    seconds (its schema migrations); a test copies this file instead. The session's `trained`
    folder still makes its store from nothing, as every first run does."""
    import mlflow

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch, data_dir, empty_store):
    """A working directory under tmp_path, the mirror set, MLflow pointed at a store inside it
    (tmp_path/mlflow.db, empty)."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENLAB_DATA_DIR", str(data_dir))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def trained(tmp_path_factory, data_dir):
    """The four stages run once on the tiny config (samples at 0.5 and 1.2), in a folder the tests
    only read: (folder, cfg, meta.json)."""
    import json

    from pipeline.text import fetch, sample, train, vectorize

    folder = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("GENLAB_DATA_DIR", str(data_dir))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = tiny(folder, "text.sample.temperature=[0.5,1.2]")
        for stage in (fetch, vectorize, train, sample):
            stage.run(cfg)
    return folder, cfg, json.loads((folder / "models/meta.json").read_text())


def tiny_tree(tmp_path: Path, *overrides: str):
    """The real conf/ with experiment=tiny and a tracking store under tmp_path: the whole tree."""
    return config.compose(["experiment=tiny", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", *overrides])


def tiny(tmp_path: Path, *overrides: str):
    """`tiny_tree`'s text section, as the text stages read it (`config.section`)."""
    return config.section(tiny_tree(tmp_path, *overrides), "text")


# Put on PYTHONPATH (with GENLAB_TEST_STALL_AFTER_EPOCH=<n>), this makes every Python process the test
# starts stop right after writing the checkpoint of epoch n, until it is killed: a kill test then
# kills at a known point, however slow or loaded the machine, instead of racing the training.
_STALL = """
import os
if os.environ.get("GENLAB_TEST_STALL_AFTER_EPOCH"):
    import time
    from pipeline import checkpoint

    _save = checkpoint.save

    def save(folder, epoch, *args, **kwargs):
        _save(folder, epoch, *args, **kwargs)
        if epoch == int(os.environ["GENLAB_TEST_STALL_AFTER_EPOCH"]):
            time.sleep(3600)

    checkpoint.save = save
"""


@pytest.fixture
def stall_after_epoch(tmp_path):
    """The environment variables that make the processes a test starts stop after epoch n's
    checkpoint (a function of n), through a sitecustomize module under tmp_path."""
    hook = tmp_path / "stall_hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_STALL, encoding="utf-8")
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    return lambda n: {"PYTHONPATH": path, "GENLAB_TEST_STALL_AFTER_EPOCH": str(n)}


@pytest.fixture(scope="session", autouse=True)
def nothing_written_to_the_project_root():
    """Tests write under their temporary folders only: MLflow's default store (./mlruns, where a
    new SQLite store's Default experiment keeps artifacts when run from here) must not appear in
    the project root."""
    stray = [REPO / name for name in ("mlruns", "mlartifacts", "mlflow.db", "outputs", "multirun")]
    before = {p for p in stray if p.exists()}
    yield
    made = [str(p) for p in stray if p.exists() and p not in before]
    assert not made, f"the tests wrote {made} into the project root"
