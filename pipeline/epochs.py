"""What happens at every epoch end of a generator that fits a dataset (the text generator, the VAE):
one Keras callback, written once, that records the epoch's losses, keeps the best validation
epoch's weights (and optimizer state) for export, cuts the learning rate on a plateau, catches
divergence (a NaN/inf loss, or one far above its best) and rolls back to the best weights or stops,
calls the generator's own per-epoch work (text samples, VAE images), writes the checkpoint that a
killed run resumes from, then logs the metrics to MLflow.

Why not Keras's own `ReduceLROnPlateau`, `TerminateOnNaN`, `ModelCheckpoint` and `BackupAndRestore`:
they do each job alone but not together. `BackupAndRestore` saves the weights, the optimizer and
the epoch, not the other callbacks' state (the plateau's wait and best, the best epoch's weights),
so a resumed run would cut its learning rate at other epochs and export another model than the run
that was not killed; `TerminateOnNaN` ends training where a rollback to the best weights can go
on. Here all of that state is one JSON-able dict that `pipeline.checkpoint` saves with the model,
so a kill at any epoch resumes to the same weights, in the same MLflow run.
"""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline import artifacts


class TrainError(RuntimeError):
    """Training cannot produce a model (it diverged before any good epoch, or is misconfigured)."""


def log_epoch(row: dict, step: str = "epoch") -> None:
    """A history row's metrics to MLflow at the row's `step` column (epoch; the GAN's step)."""
    import mlflow

    mlflow.log_metrics({k: v for k, v in row.items() if k != step}, step=row[step])


def in_batches(x: np.ndarray, batch_size: int):
    """(data, batch_size) for fit() and evaluate() to read the array `x` in order, `batch_size` rows
    at a time: on TensorFlow a tf.data pipeline of the batches without the autotuner that Keras's own
    pipeline of an array has (`machine.without_autotuner`), and None; elsewhere the array itself."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return x, batch_size
    import tensorflow as tf

    from pipeline.machine import without_autotuner

    return without_autotuner(tf.data.Dataset.from_tensor_slices(x).batch(batch_size)), None


def make_optimizer(name: str, learning_rate: float, clipnorm: float | None = None):
    import keras

    return {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
            "sgd": keras.optimizers.SGD}[name](learning_rate=learning_rate, clipnorm=clipnorm)


def new_state(seed: int, fingerprint: str) -> dict:
    """The callback's state before the first epoch; `seed` seeds the per-epoch work's RNG."""
    return {"history": [], "good_epochs": [], "best_val_loss": math.inf, "best_epoch": 0, "wait": 0, "rollbacks": 0,
            "rng": np.random.default_rng(seed).bit_generator.state, "run_id": None, "fingerprint": fingerprint}


def epoch_end(t, state: dict, checkpoints: Path | None, *, prefix: str, uniform_loss: float,
              extra: Callable[[dict], dict] = lambda logs: {},
              describe: Callable[[dict], str] = lambda row: "",
              on_epoch: Callable = lambda n, model, rng: ""):
    """The Keras callback run after every epoch.

    t: the train section (epochs, clipnorm, plateau, divergence); `prefix` its keys' ("text.train.").
    state: `new_state()` or a checkpoint's, updated in place.
    uniform_loss: the loss of a model that knows nothing (ln V nats for V characters): far above
        it is diverged even in the first epoch, before there is a best to compare with.
    extra(logs): more columns for the epoch's row (the VAE's reconstruction and KL terms).
    describe(row): what the epoch's printed line shows after the losses.
    on_epoch(n, model, rng): the generator's own work after epoch n (samples, images), drawing from
        `rng`, whose state the checkpoint keeps; returns text for the end of the epoch's line.
    """
    import keras
    import mlflow

    from pipeline import checkpoint

    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    guard = t.divergence

    class EpochEnd(keras.callbacks.Callback):
        best_weights = best_optimizer = None
        started, stop_reason = 0.0, None

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def _set_lr(self, lr: float) -> None:
            self.model.optimizer.learning_rate.assign(lr)

        def on_epoch_end(self, epoch, logs=None):
            n, opt = epoch + 1, self.model.optimizer
            notes = []  # what this epoch caused (a rollback, a learning-rate cut): printed after its own line
            row = {"epoch": n, "loss": float(logs["loss"]), "val_loss": float(logs["val_loss"]), **extra(logs)}
            row.update(seconds=time.perf_counter() - self.started, lr=float(keras.ops.convert_to_numpy(opt.learning_rate)))
            state["history"].append(row)
            good = [r for r in state["history"][:-1] if r["epoch"] in state["good_epochs"]]
            best_loss = min((r["loss"] for r in good), default=math.inf)
            val_reference = min(state["best_val_loss"], uniform_loss)
            diverged = not (math.isfinite(row["loss"]) and math.isfinite(row["val_loss"])) or (
                row["loss"] > guard.max_ratio * best_loss or row["val_loss"] > guard.max_ratio * val_reference)
            if diverged:
                against = (f"the best val_loss {state['best_val_loss']:.4g} (epoch {state['best_epoch']})" if state["best_epoch"]
                           else f"{uniform_loss:.4g} for a uniform guess")
                message = (f"epoch {n} diverged: loss {row['loss']:.4g}, val_loss {row['val_loss']:.4g} against {against}, "
                           f"at learning rate {row['lr']:.3g}")
                if self.best_weights is None:
                    mlflow.set_tag("diverged", message)
                    advice = (f"Lower {prefix}learning_rate or {prefix}clipnorm" if t.clipnorm is not None
                              else f"Lower {prefix}learning_rate or set {prefix}clipnorm")
                    raise TrainError(f"train: {message}; no epoch trained well, so there is no model to keep. {advice}.")
                self.model.set_weights(self.best_weights)  # NaN weights or optimizer state are useless
                for v, value in zip(opt.variables, self.best_optimizer, strict=True):
                    v.assign(value)
                if guard.action == "rollback" and state["rollbacks"] < guard.max_rollbacks:
                    state["rollbacks"] += 1
                    lr = max(row["lr"] * t.plateau.factor, t.plateau.min_lr)
                    self._set_lr(lr)
                    message += f"; rolled back to epoch {state['best_epoch']}'s weights, learning rate now {lr:.3g}"
                else:
                    self.stop_reason = message + "; training stopped, keeping the best model"
                    self.model.stop_training = True
                notes.append(f"train: {self.stop_reason or message}")
                mlflow.set_tag("diverged", self.stop_reason or message)
            else:
                state["good_epochs"].append(n)
                if row["val_loss"] < state["best_val_loss"]:
                    state.update(best_val_loss=row["val_loss"], best_epoch=n, wait=0)
                    self.best_weights = self.model.get_weights()
                    self.best_optimizer = [keras.ops.convert_to_numpy(v) for v in opt.variables]
                else:
                    state["wait"] += 1
                    if state["wait"] >= t.plateau.patience and row["lr"] > t.plateau.min_lr:
                        lr = max(row["lr"] * t.plateau.factor, t.plateau.min_lr)
                        self._set_lr(lr)
                        state["wait"] = 0
                        notes.append(f"train: val_loss has not improved for {t.plateau.patience} epochs; learning rate now {lr:.3g}")

            tail = on_epoch(n, self.model, rng)
            state["rng"] = rng.bit_generator.state
            if checkpoints is not None:
                checkpoint.save(checkpoints, n, self.model, self.best_weights, self.best_optimizer, state)
            log_epoch(row)  # after the checkpoint: a resume logs what a kill cut off, never twice
            print(f"epoch {n}/{t.epochs}: loss {row['loss']:.4f}  val_loss {row['val_loss']:.4f}  {describe(row)}"
                  f"({row['seconds']:.1f} s){tail}", flush=True)
            for note in notes:
                print(note, flush=True)

    return EpochEnd()


def progress_bar(epochs: int):
    """Keras's progress bar, saying "Epoch 3/10" although each fit() call runs one epoch."""
    import keras

    class Progbar(keras.callbacks.ProgbarLogger):
        def set_params(self, params):
            super().set_params({**params, "epochs": epochs, "verbose": 1})

    return Progbar()


def resume(folder: Path, callback, custom_objects: dict | None = None):
    """The checkpoint's model, with its optimizer state; its best weights go to the callback."""
    import keras

    from pipeline import checkpoint

    model = keras.saving.load_model(folder / "model.keras", custom_objects=custom_objects, safe_mode=True)
    callback.best_weights = checkpoint.load_arrays(folder / "best_weights.npz")
    callback.best_optimizer = checkpoint.load_arrays(folder / "best_optimizer.npz")
    return model


def replay_unlogged(run_id: str, history: list[dict], metric: str = "loss", step: str = "epoch") -> None:
    """Log the rows of a resumed run's history that its MLflow run lacks (judged by `metric`): the
    epoch a kill cut off between its checkpoint and its metrics."""
    import mlflow

    logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, metric)}
    for row in history:
        if row[step] not in logged:
            log_epoch(row, step)


def write_history(history: list[dict], path: Path) -> None:
    """One row per epoch as CSV (a DVC plot), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    artifacts.write_text(path, buf.getvalue())


def plot_losses(history: list[dict], path: Path, unit: str) -> None:
    """loss and val_loss per epoch, as a PNG (written atomically); `unit` labels the y axis."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    xs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(xs, [r["loss"] for r in history], "o-", label="loss (train)")
    ax.plot(xs, [r["val_loss"] for r in history], "o-", label="val_loss (held out)")
    best = min(history, key=lambda r: r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf)
    ax.annotate(f"best {best['val_loss']:.3f}", (best["epoch"], best["val_loss"]), textcoords="offset points",
                xytext=(0, 8), ha="center", fontsize=8)
    ax.set(xlabel="epoch", ylabel=unit, title="training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
