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

from pipeline import config
from pipeline.text import fetch, train, vectorize
from tests.conftest import tiny

# Two batch parts (pipeline.text.model.Parallel, what `auto` is on 2 cores) whatever this machine's cores:
# the resumed model is then the Parallel one read back from the checkpoint.
RESUME = ["experiment=tiny", "text.vectorize.max_chars=60000", "text.train.epochs=5", "text.train.deterministic=true",
          "text.train.batch_parts=2"]


def _prepare(folder, data_dir, overrides):
    """A DVC-style working folder: params.yaml and the vectorized data, ready for `python -m pipeline.text.train`."""
    folder.mkdir()
    overrides = [*overrides, f"mlflow.tracking_uri=sqlite:///{folder}/mlflow.db"]
    config.write_params(overrides, folder / "params.yaml")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        cfg = config.section(config.load(), "text")
        fetch.run(cfg)
        vectorize.run(cfg)
    finally:
        os.chdir(cwd)
    return cfg


def _train(folder, extra_env: dict | None = None, **kwargs):
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "pipeline.text.train"], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights_in_the_same_run(tmp_path, data_dir, monkeypatch, stall_after_epoch):
    monkeypatch.setenv("GENLAB_DATA_DIR", str(data_dir))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    cfg = _prepare(whole, data_dir, RESUME)
    _prepare(killed, data_dir, RESUME)

    out, _ = _train(whole).communicate(timeout=600)
    assert "resuming" not in out and (whole / "models/model.keras").exists(), out[-3000:]

    proc = _train(killed, extra_env=stall_after_epoch(2))  # it waits after epoch 2's checkpoint
    latest = killed / cfg.paths.checkpoints / "latest"
    deadline = time.time() + 600
    while not (latest.exists() and latest.read_text().strip() >= "epoch_0002"):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "models/model.keras").exists()  # nothing half-finished was exported

    out, _ = _train(killed).communicate(timeout=600)
    assert "train: resuming after epoch" in out, out[-3000:]
    resumed_after = int(out.split("train: resuming after epoch ")[1].split()[0])
    assert 2 <= resumed_after < 5
    assert resumed_after == 2  # killed where it waited: the point is known, not raced

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
    cfg = tiny(workdir, "text.train.epochs=1")
    fetch.run(cfg)
    vectorize.run(cfg)
    from pipeline import checkpoint

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    checkpoint.save(workdir / "checkpoints", 1, model, model.get_weights(), [], {"fingerprint": "another"})
    train.run(cfg)
    assert "ignoring the checkpoint" in capsys.readouterr().out
    assert json.loads((workdir / "metrics/train.json").read_text())["epochs"] == 1


DIVERGE = ["text.train.epochs=6", "text.train.plateau.patience=100"]  # no plateau cut: every lr change is the guard's


@pytest.fixture
def nan_weights_at_epoch_5(monkeypatch):
    """The weights turn NaN as epoch 5 begins, so that epoch 5 diverges (a NaN loss), whatever the
    trajectory: the guard is tested on a divergence it must catch, not on one a seed happens to give."""
    from pipeline import epochs

    epoch_end = epochs.epoch_end

    def poisoned(*args, **kwargs):
        callback = epoch_end(*args, **kwargs)
        begin = callback.on_epoch_begin

        def on_epoch_begin(epoch, logs=None):
            if epoch == 4:
                callback.model.set_weights([np.full_like(w, np.nan) for w in callback.model.get_weights()])
            begin(epoch, logs)

        callback.on_epoch_begin = on_epoch_begin
        return callback

    monkeypatch.setattr(epochs, "epoch_end", poisoned)


def test_divergence_stops_and_keeps_the_best_model(workdir, nan_weights_at_epoch_5):
    cfg = tiny(workdir, *DIVERGE, "text.train.divergence.action=stop")
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
    cfg = tiny(workdir, "text.train.learning_rate=1e6", "text.train.optimizer=sgd", "text.train.clipnorm=null")
    fetch.run(cfg)
    vectorize.run(cfg)
    with pytest.raises(train.TrainError, match=r"epoch 1 diverged: .* for a uniform guess.*Lower text\.train\.learning_rate"):
        train.run(cfg)
    assert not (workdir / "models/model.keras").exists() and not (workdir / "metrics/train.json").exists()


def test_a_diverged_first_epoch_with_clipnorm_set_does_not_advise_setting_it(workdir):
    cfg = tiny(workdir, "text.train.learning_rate=1e6", "text.train.optimizer=sgd", "text.train.clipnorm=1.0")
    fetch.run(cfg)
    vectorize.run(cfg)
    with pytest.raises(train.TrainError, match=r"epoch 1 diverged") as e:
        train.run(cfg)
    assert "set text.train.clipnorm" not in str(e.value) and "Lower text.train.learning_rate or text.train.clipnorm" in str(e.value)


def test_plateau_halves_the_learning_rate(workdir, capsys):
    cfg = tiny(workdir, "text.train.learning_rate=1.0", "text.train.clipnorm=null", "text.train.epochs=6", "text.train.plateau.patience=1",
               "text.train.divergence.max_ratio=10")
    fetch.run(cfg)
    vectorize.run(cfg)
    capsys.readouterr()
    train.run(cfg)
    lines = capsys.readouterr().out.splitlines()
    cuts = [i for i, line in enumerate(lines) if "learning rate now" in line]
    assert cuts and all(lines[i - 1].startswith("epoch ") for i in cuts)  # said after the epoch that caused it
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
    cfg = tiny(workdir, "text.train.epochs=1", "+mlflow.tags.remote=https://carol:hunter2@example.org/repo.git")
    fetch.run(cfg)
    vectorize.run(cfg)
    result = train.run(cfg)
    run = mlflow.MlflowClient(cfg.mlflow.tracking_uri).get_run(result["run_id"])
    logged = " ".join([*run.data.params.values(), *run.data.tags.values(), (workdir / "models/meta.json").read_text()])
    assert "s3cret" not in logged and "hunter2" not in logged
    assert run.data.tags["remote"] == "https://carol:***@example.org/repo.git"


def test_models_load_in_safe_mode(tmp_path):
    """A model file holding Python code (a Lambda layer) is refused, not run."""
    from pipeline.text import model as models

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
    """README and docs/: every server command they show listens on 127.0.0.1."""
    from tests.conftest import REPO

    docs = "\n".join(p.read_text(encoding="utf-8") for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    commands = [line for line in docs.splitlines() if line.lstrip().startswith(("mlflow ui", "mlflow server", "mlflow models serve"))]
    assert len(commands) >= 2
    for line in commands:
        assert "127.0.0.1" in line, f"README starts a server on every interface: {line}"


def _prepared(workdir, *overrides):
    cfg = tiny(workdir, *overrides)
    fetch.run(cfg)
    vectorize.run(cfg)
    return cfg


def _watch_epochs(monkeypatch, val_loss_bump: float = 0.0):
    """Wrap the train stage's epoch-end callback: record the epochs begun and the weights after
    each epoch; from the second epoch on, add `val_loss_bump` to the val_loss it is shown."""
    from pipeline import epochs

    seen = {"begun": [], "weights": []}
    epoch_end = epochs.epoch_end

    def watched(*args, **kwargs):
        callback = epoch_end(*args, **kwargs)
        begin, end = callback.on_epoch_begin, callback.on_epoch_end

        def on_epoch_begin(epoch, logs=None):
            seen["begun"].append(epoch)
            begin(epoch, logs)

        def on_epoch_end(epoch, logs=None):
            if epoch >= 1:
                logs["val_loss"] += val_loss_bump
            end(epoch, logs)
            seen["weights"].append(callback.model.get_weights())

        callback.on_epoch_begin, callback.on_epoch_end = on_epoch_begin, on_epoch_end
        return callback

    monkeypatch.setattr(epochs, "epoch_end", watched)
    return seen


def test_the_export_is_the_best_epochs_weights_when_a_later_epoch_is_worse(workdir, monkeypatch):
    """The best val_loss is epoch 1's (every later one is shown 1.0 worse): the exported model must
    hold the weights of the end of epoch 1, not those training ended with."""
    cfg = _prepared(workdir, "text.train.epochs=3", "text.train.divergence.max_ratio=100")
    seen = _watch_epochs(monkeypatch, val_loss_bump=1.0)
    result = train.run(cfg)
    assert result["best_epoch"] == 1 and result["epochs"] == 3
    exported = keras.saving.load_model(workdir / "models/model.keras", safe_mode=True).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(exported, seen["weights"][0], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(exported, seen["weights"][-1], strict=True))


class Killed(BaseException):
    """What a SIGKILL leaves behind, in-process: nothing after the raise runs, nothing catches it."""


def test_a_resumed_run_trains_exactly_the_epochs_left_to_the_same_weights(workdir, monkeypatch, capsys):
    """Stopped right after epoch 2's checkpoint, the next run resumes after epoch 2, trains epochs 3
    and 4 only (not 4 alone, nor 2 again), in the same MLflow run, to the weights and losses of an
    uninterrupted run."""
    from pipeline import checkpoint

    cfg = _prepared(workdir, "text.train.epochs=4", "text.train.deterministic=true")
    whole = train.run(cfg)
    history = (workdir / "metrics/history.csv").read_text()
    weights = keras.saving.load_model(workdir / "models/model.keras", safe_mode=True).get_weights()

    save = checkpoint.save

    def save_then_die(folder, epoch, *args, **kwargs):
        save(folder, epoch, *args, **kwargs)
        if epoch == 2:
            raise Killed

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(Killed):
        train.run(cfg)
    monkeypatch.setattr(checkpoint, "save", save)
    capsys.readouterr()
    seen = _watch_epochs(monkeypatch)
    resumed = train.run(cfg)
    assert "train: resuming after epoch 2 " in capsys.readouterr().out
    assert seen["begun"] == [2, 3]  # Keras counts from 0: epochs 3 and 4
    rows = lambda text: [(r["epoch"], r["loss"], r["val_loss"]) for r in csv.DictReader(text.splitlines())]  # noqa: E731
    assert rows((workdir / "metrics/history.csv").read_text()) == rows(history)
    again = keras.saving.load_model(workdir / "models/model.keras", safe_mode=True).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(again, weights, strict=True))
    assert resumed["best_val_loss"] == whole["best_val_loss"]
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted([whole["run_id"], resumed["run_id"]])  # no third run
    run = client.get_run(resumed["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from_epoch"] == "2"
    logged = client.get_metric_history(resumed["run_id"], "val_loss")
    assert sorted(m.step for m in logged) == [1, 2, 3, 4]


def test_fused_auto_trains_with_keras_lstm_when_the_loops_cannot_run_the_model(workdir, monkeypatch, capsys):
    """An LSTM the fused loops cannot run (here: dropout) under fused_lstm=auto trains with Keras's
    LSTM and says so in one line; with fused_lstm=true it is a one-line error, not a traceback."""
    from pipeline.text import cpu, lstm_cpu
    from pipeline.text import model as models

    def with_dropout(vocab_size, units, sequence=False):
        ids = keras.Input(shape=(None,), dtype="int32", name="ids")
        x = models.lstm.one_hot(vocab_size)(ids)
        x = keras.layers.LSTM(units, dropout=0.1, return_sequences=sequence, name="lstm")(x)
        return keras.Model(ids, keras.layers.Dense(vocab_size, activation="softmax", name="next_char")(x), name="lstm")

    monkeypatch.setitem(models.MODELS, "lstm", with_dropout)
    monkeypatch.setattr(train, "prepare_fused_lstm", lambda *args: True)  # what auto says on a CPU machine
    monkeypatch.setattr(lstm_cpu, "lstm_last", lambda *a, **k: pytest.fail("the fused loops ran a model with dropout"))
    cfg = _prepared(workdir, "text.train.epochs=1", "text.train.fused_lstm=auto")
    result = train.run(cfg)
    out = capsys.readouterr().out
    assert "train: fused_lstm auto: model 'lstm': the fused LSTM runs the book's model" in out and "dropout 0.1" in out
    assert "training with Keras's LSTM" in out and np.isfinite(result["best_val_loss"])
    assert cpu.might_fuse("auto", "lstm", "last")  # the case this test stands for

    strict = _prepared(workdir, "text.train.epochs=1", "text.train.fused_lstm=true")
    with pytest.raises(train.TrainError, match=r"train\.fused_lstm=true: model 'lstm'.*dropout 0\.1.*auto or false"):
        train.run(strict)


def test_fused_lstm_false_trains_with_keras_lstm_end_to_end(workdir, monkeypatch):
    """text.train.fused_lstm=false: the train stage never calls the fused loops, trains Keras's LSTM,
    and the sample stage agrees with it on the held-out loss."""
    from pipeline.text import lstm_cpu, sample

    monkeypatch.setattr(lstm_cpu, "lstm_last", lambda *a, **k: pytest.fail("fused loops ran with fused_lstm=false"))
    cfg = _prepared(workdir, "text.train.epochs=1", "text.train.fused_lstm=false", "text.sample.temperature=[0.5]")
    result = train.run(cfg)
    vocab = json.loads((workdir / "data/prepared/vocab.json").read_text())
    assert result["best_val_loss"] < np.log(len(vocab))  # it learned: better than a uniform guess
    assert sample.run(cfg)["val_loss"] == pytest.approx(result["best_val_loss"], rel=1e-5)
