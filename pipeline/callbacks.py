"""The train stage's Keras callbacks: what happens at every epoch end, and the progress bar.

`epoch_end` records the losses, keeps the best weights (and optimizer state), cuts the learning
rate on a plateau, catches divergence (a NaN/inf loss, or one far above its best) and rolls back
or stops, generates and logs the epoch's samples, writes the checkpoint, then logs the metrics.
All its state lives in one JSON-able dict, which the checkpoint saves and a resume restores.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from pipeline.vectorize import decode

LN2 = math.log(2.0)


class TrainError(RuntimeError):
    """Training cannot produce a model (it diverged before any good epoch)."""


def log_epoch(row: dict) -> None:
    import mlflow

    mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


def epoch_end(t, vocab, val_ids, maxlen, state, checkpoints: Path | None):
    """The Keras callback run after every epoch: record the losses; keep the best weights; cut the
    learning rate on a plateau; catch divergence (NaN/inf, or a loss far above its best) and roll
    back or stop; generate and log the epoch's samples; checkpoint; log the metrics."""
    import keras
    import mlflow

    from pipeline import checkpoint
    from pipeline.generator import for_model, held_out_prompt
    from pipeline.model import unwrap

    temps = [float(x) for x in t.epoch_samples.temperatures]
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
            row = {"epoch": n, "loss": float(logs["loss"]), "val_loss": float(logs["val_loss"])}
            row.update(bpc=row["loss"] / LN2, val_bpc=row["val_loss"] / LN2,
                       seconds=time.perf_counter() - self.started, lr=float(opt.learning_rate.numpy()))
            state["history"].append(row)
            good = [r for r in state["history"][:-1] if r["epoch"] in state["good_epochs"]]
            best_loss = min((r["loss"] for r in good), default=math.inf)
            # Guessing uniformly costs ln(V) nats: far above that is diverged even in the first epoch.
            val_reference = min(state["best_val_loss"], math.log(len(vocab)))
            diverged = not (math.isfinite(row["loss"]) and math.isfinite(row["val_loss"])) or (
                row["loss"] > guard.max_ratio * best_loss or row["val_loss"] > guard.max_ratio * val_reference)
            if diverged:
                against = (f"the best val_loss {state['best_val_loss']:.4g} (epoch {state['best_epoch']})" if state["best_epoch"]
                           else f"{math.log(len(vocab)):.4g} for a uniform guess")
                message = (f"epoch {n} diverged: loss {row['loss']:.4g}, val_loss {row['val_loss']:.4g} against {against}, "
                           f"at learning rate {row['lr']:.3g}")
                if self.best_weights is None:
                    mlflow.set_tag("diverged", message)
                    advice = ("Lower train.learning_rate or train.clipnorm" if t.clipnorm is not None
                              else "Lower train.learning_rate or set train.clipnorm")
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
                    self.best_optimizer = [v.numpy() for v in opt.variables]
                else:
                    state["wait"] += 1
                    if state["wait"] >= t.plateau.patience and row["lr"] > t.plateau.min_lr:
                        lr = max(row["lr"] * t.plateau.factor, t.plateau.min_lr)
                        self._set_lr(lr)
                        state["wait"] = 0
                        notes.append(f"train: val_loss has not improved for {t.plateau.patience} epochs; learning rate now {lr:.3g}")

            prompt = held_out_prompt(val_ids, maxlen, rng)
            out = for_model(unwrap(self.model), maxlen).generate(prompt, temps, t.epoch_samples.length, rng, mode=t.epoch_samples.mode)
            seed_text = decode(prompt, vocab)
            for temp, ids in zip(temps, out, strict=True):
                text = f"--- seed: {seed_text!r}\n{seed_text}{decode(ids, vocab)}\n"
                mlflow.log_text(text, f"samples/epoch_{n:03d}/temperature_{temp}.txt")
            state["rng"] = rng.bit_generator.state
            if checkpoints is not None:
                checkpoint.save(checkpoints, n, self.model, self.best_weights, self.best_optimizer, state)
            log_epoch(row)  # after the checkpoint: a resume logs what a kill cut off, never twice
            print(f"epoch {n}/{t.epochs}: loss {row['loss']:.4f}  val_loss {row['val_loss']:.4f}  "
                  f"val_bpc {row['val_bpc']:.3f}  ({row['seconds']:.1f} s)  "
                  f"T={temps[len(temps) // 2]}: {decode(out[len(temps) // 2][:60], vocab)!r}", flush=True)
            for note in notes:
                print(note, flush=True)

    return EpochEnd()


def held_out(model, val_ds):
    """The callback that sets the epoch's val_loss to `model`'s loss on `val_ds`, after copying the
    trained weights into it: `model` is the last-position twin of a model trained on all targets."""
    import keras

    model.compile(loss="sparse_categorical_crossentropy")

    class HeldOut(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            model.set_weights(self.model.get_weights())
            logs["val_loss"] = float(model.evaluate(val_ds, verbose=0))

    return HeldOut()


def progress_bar(epochs: int):
    """Keras's progress bar, saying "Epoch 3/10" although each fit() call runs one epoch."""
    import keras

    class Progbar(keras.callbacks.ProgbarLogger):
        def set_params(self, params):
            super().set_params({**params, "epochs": epochs, "verbose": 1})

    return Progbar()


def resume(folder: Path, callback):
    """The checkpoint's model, with its optimizer state; its best weights go to the callback."""
    import keras

    from pipeline import checkpoint

    model = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    callback.best_weights = checkpoint.load_arrays(folder / "best_weights.npz")
    callback.best_optimizer = checkpoint.load_arrays(folder / "best_optimizer.npz")
    return model
