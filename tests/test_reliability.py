"""Training survives interruption and divergence: checkpoints, resume, the divergence guard."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import mlflow
import numpy as np
import pytest

from pipeline import config, fetch, train, vectorize
from tests.conftest import tiny

# Two batch parts (pipeline.model.Parallel, what `auto` is on 2 cores) whatever this machine's cores:
# the resumed model is then the Parallel one read back from the checkpoint.
RESUME = ["experiment=tiny", "vectorize.max_chars=60000", "train.epochs=5", "train.deterministic=true",
          "train.batch_parts=2"]


def _prepare(folder, data_dir, overrides):
    """A DVC-style working folder: params.yaml and the vectorized data, ready for `python -m pipeline.train`."""
    folder.mkdir()
    overrides = [*overrides, f"mlflow.tracking_uri=sqlite:///{folder}/mlflow.db"]
    config.write_params(overrides, folder / "params.yaml")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        cfg = config.load()
        fetch.run(cfg)
        vectorize.run(cfg)
    finally:
        os.chdir(cwd)
    return cfg


def _train(folder, **kwargs):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.train"], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights_in_the_same_run(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("GENLAB_DATA_DIR", str(data_dir))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    cfg = _prepare(whole, data_dir, RESUME)
    _prepare(killed, data_dir, RESUME)

    out, _ = _train(whole).communicate(timeout=600)
    assert "resuming" not in out and (whole / "models/model.keras").exists(), out[-3000:]

    proc = _train(killed)
    latest = killed / cfg.paths.checkpoints / "latest"
    deadline = time.time() + 600
    while not (latest.exists() and latest.read_text().strip() >= "epoch_0002"):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "models/model.keras").exists()  # nothing half-finished was exported

    out, _ = _train(killed).communicate(timeout=600)
    assert "train: resuming after epoch" in out, out[-3000:]
    resumed_after = int(out.split("train: resuming after epoch ")[1].split()[0])
    assert 2 <= resumed_after < 5

    a = keras.saving.load_model(whole / "models/model.keras", safe_mode=True).get_weights()
    b = keras.saving.load_model(killed / "models/model.keras", safe_mode=True).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # bit for bit
    assert (whole / "metrics/history.csv").read_text().count("\n") == 6
    rows = lambda f: [(r["epoch"], r["loss"], r["val_loss"]) for r in csv.DictReader(open(f))]  # noqa: E731
    assert rows(whole / "metrics/history.csv") == rows(killed / "metrics/history.csv")

    # One MLflow run, every epoch's metrics exactly once, resumed in place.
    client = mlflow.MlflowClient(f"sqlite:///{killed}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["resumed_from_epoch"] == str(resumed_after)
    history = client.get_metric_history(runs[0].info.run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [float(r[2]) for r in rows(killed / "metrics/history.csv")])
    assert json.loads((killed / "models/meta.json").read_text())["mlflow"]["run_id"] == runs[0].info.run_id
    assert not (killed / cfg.paths.checkpoints).exists()  # removed once the outputs are written


def test_a_checkpoint_of_other_settings_is_not_resumed(workdir, capsys):
    cfg = tiny(workdir, "train.epochs=1")
    fetch.run(cfg)
    vectorize.run(cfg)
    from pipeline import checkpoint

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    checkpoint.save(workdir / "checkpoints", 1, model, model.get_weights(), [], {"fingerprint": "another"})
    train.run(cfg)
    assert "ignoring the checkpoint" in capsys.readouterr().out
    assert json.loads((workdir / "metrics/train.json").read_text())["epochs"] == 1


DIVERGE = ["train.epochs=6", "train.plateau.patience=100"]  # no plateau cut: every lr change is the guard's


@pytest.fixture
def nan_weights_at_epoch_5(monkeypatch):
    """The weights turn NaN as epoch 5 begins, so that epoch 5 diverges (a NaN loss), whatever the
    trajectory: the guard is tested on a divergence it must catch, not on one a seed happens to give."""
    from pipeline import callbacks

    epoch_end = callbacks.epoch_end

    def poisoned(*args, **kwargs):
        callback = epoch_end(*args, **kwargs)
        begin = callback.on_epoch_begin

        def on_epoch_begin(epoch, logs=None):
            if epoch == 4:
                callback.model.set_weights([np.full_like(w, np.nan) for w in callback.model.get_weights()])
            begin(epoch, logs)

        callback.on_epoch_begin = on_epoch_begin
        return callback

    monkeypatch.setattr(callbacks, "epoch_end", poisoned)


def test_divergence_stops_and_keeps_the_best_model(workdir, nan_weights_at_epoch_5):
    cfg = tiny(workdir, *DIVERGE, "train.divergence.action=stop")
    fetch.run(cfg)
    vectorize.run(cfg)
    result = train.run(cfg)
    assert result["stopped"].startswith("epoch 5 diverged") and "keeping the best model" in result["stopped"]
    rows = list(csv.DictReader((workdir / "metrics/history.csv").open()))
    val = [float(r["val_loss"]) for r in rows]
    assert result["epochs"] == 5 and np.isnan(val[4]) and result["best_epoch"] == 1 + int(np.argmin(val[:4]))
    run = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(result["run_id"])
    assert run.data.tags["diverged"] == result["stopped"]
    # the exported model is the best epoch's: its validation loss is the best one
    model = keras.saving.load_model(workdir / "models/model.keras", safe_mode=True)
    model.compile(loss="sparse_categorical_crossentropy")
    loss = model.evaluate(train.make_dataset(np.load(workdir / "data/prepared/val.npy"), 20, 3, 64, None, 0), verbose=0)
    assert loss == pytest.approx(result["best_val_loss"], rel=1e-4) and loss == pytest.approx(min(val[:4]), rel=1e-6)


def test_divergence_rolls_back_with_a_lower_learning_rate(workdir, nan_weights_at_epoch_5):
    cfg = tiny(workdir, *DIVERGE)
    fetch.run(cfg)
    vectorize.run(cfg)
    result = train.run(cfg)
    assert result["rollbacks"] == 1 and result["stopped"] is None and result["epochs"] == 6
    rows = list(csv.DictReader((workdir / "metrics/history.csv").open()))
    lr = cfg.train.learning_rate
    assert [float(r["lr"]) for r in rows] == pytest.approx([lr] * 5 + [lr * cfg.train.plateau.factor])
    # epoch 6 starts again from the best epoch's weights (not the NaN ones) and trains on from there
    val = [float(r["val_loss"]) for r in rows]
    assert np.isnan(val[4]) and np.isfinite(val[5]) and val[5] < min(val[:4]) + 0.05
    assert "rolled back" in mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(result["run_id"]).data.tags["diverged"]


def test_a_first_epoch_that_diverges_is_an_error_and_writes_nothing(workdir):
    cfg = tiny(workdir, "train.learning_rate=1e6", "train.optimizer=sgd", "train.clipnorm=null")
    fetch.run(cfg)
    vectorize.run(cfg)
    with pytest.raises(train.TrainError, match=r"epoch 1 diverged: .* for a uniform guess.*Lower train.learning_rate"):
        train.run(cfg)
    assert not (workdir / "models/model.keras").exists() and not (workdir / "metrics/train.json").exists()


def test_plateau_halves_the_learning_rate(workdir):
    cfg = tiny(workdir, "train.learning_rate=1.0", "train.clipnorm=null", "train.epochs=6", "train.plateau.patience=1",
               "train.divergence.max_ratio=10")
    fetch.run(cfg)
    vectorize.run(cfg)
    train.run(cfg)
    rows = list(csv.DictReader((workdir / "metrics/history.csv").open()))
    lrs, val = [float(r["lr"]) for r in rows], [float(r["val_loss"]) for r in rows]
    for k in range(1, 6):  # after each epoch that did not improve on the best, the rate halves
        improved = val[k - 1] < min(val[:k - 1], default=np.inf)
        assert lrs[k] == (lrs[k - 1] if improved else lrs[k - 1] * 0.5)


def test_credentials_are_never_logged(workdir, monkeypatch):
    from pipeline import tracking

    assert tracking.redact("http://alice:s3cret@mlflow.example:5000/x") == "http://alice:***@mlflow.example:5000/x"
    assert tracking.flatten({"mlflow": {"tracking_uri": "postgresql://bob:pw@db/mlflow"}}) == {
        "mlflow.tracking_uri": "postgresql://bob:***@db/mlflow"}
    for name in ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "DATABRICKS_TOKEN"):
        monkeypatch.setenv(name, "s3cret-" + name)
    cfg = tiny(workdir, "train.epochs=1", "+mlflow.tags.remote=https://carol:hunter2@example.org/repo.git")
    fetch.run(cfg)
    vectorize.run(cfg)
    result = train.run(cfg)
    run = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(result["run_id"])
    logged = " ".join([*run.data.params.values(), *run.data.tags.values(), (workdir / "models/meta.json").read_text()])
    assert "s3cret" not in logged and "hunter2" not in logged
    assert run.data.tags["remote"] == "https://carol:***@example.org/repo.git"


def test_models_load_in_safe_mode(tmp_path):
    """A model file holding Python code (a Lambda layer) is refused, not run."""
    from pipeline import model as models

    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(3, 3)(inputs)
    x = keras.layers.Lambda(lambda t: t[:, -1, :] * 1.0)(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    (tmp_path / "m").mkdir()
    keras.Model(inputs, outputs).save(tmp_path / "m/model.keras")
    (tmp_path / "m/meta.json").write_text(json.dumps({"vocab": ["a", "b", "c"], "maxlen": 5, "lowercase": False}))
    with pytest.raises(models.ModelError, match=r"model.keras: cannot be loaded .*safe_mode"):
        models.load(tmp_path / "m")


def test_documented_servers_listen_on_localhost_only():
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    commands = [line for line in readme.splitlines() if line.lstrip().startswith(("mlflow ui", "mlflow server", "mlflow models serve"))]
    assert len(commands) >= 2
    for line in commands:
        assert "127.0.0.1" in line, f"README starts a server on every interface: {line}"
