"""What happens every `train.check_every` steps of the GAN: the GAN's counterpart of the per-epoch
callback that the generators fitting a likelihood share (`pipeline.epochs`), which this one cannot
use as it is: a GAN has no validation loss to keep the best of, and its losses neither fall nor
diverge the way a likelihood's do. Here the best is the lowest KID; a check scores the generator
(KID, FID, diversity against the real frogs), draws the grid of the same latent vectors, runs the
guard (a NaN loss, a discriminator that wins, mode collapse) and acts as `train.guard.action` says,
then writes the checkpoint that a killed run resumes from and logs the row to MLflow. The pieces it
shares with the per-epoch callback (the checkpoint, MLflow rows, the replay after a resume) are
`pipeline.checkpoint` and `pipeline.epochs`'.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from pipeline import epochs, pictures
from pipeline.epochs import TrainError


def verdict(history: list[dict], patience: int, d_loss_floor: float, diversity_ratio: float) -> str | None:
    """What is wrong at the last check of `history` (rows with d_loss, g_loss, diversity), or None:
      NaN or inf losses;
      mode collapse: the generated features' diversity below `diversity_ratio` of the real frogs',
        after it was above, or for `patience` checks in a row;
      the discriminator wins: d_loss below `d_loss_floor` and g_loss rising, `patience` checks in a row."""
    row = history[-1]
    if not (math.isfinite(row["d_loss"]) and math.isfinite(row["g_loss"])):
        return f"the losses are not finite (d_loss {row['d_loss']}, g_loss {row['g_loss']})"
    low = [r["diversity"] < diversity_ratio for r in history]
    # A generator starts with near-constant output: low diversity is collapse once it has fallen
    # there from above, or has stayed there for `patience` checks in a row.
    if low[-1] and (not all(low) or (len(low) >= patience and all(low[-patience:]))):
        return (f"mode collapse: the generated images' diversity is {row['diversity']:.2f} of the real frogs' "
                f"(below {diversity_ratio})")
    recent = history[-patience - 1:]
    if len(recent) == patience + 1 and all(r["d_loss"] < d_loss_floor for r in recent[1:]) and all(
            b["g_loss"] > a["g_loss"] for a, b in zip(recent, recent[1:])):
        return (f"the discriminator wins: d_loss below {d_loss_floor} and g_loss rising for {patience} checks "
                f"(d_loss {row['d_loss']:.3g}, g_loss {row['g_loss']:.3g})")
    return None


def optimizer_arrays(model) -> list[np.ndarray]:
    import keras

    return [keras.ops.convert_to_numpy(v) for v in model.optimizer_variables()]


def restore(model, weights: list, optimizer: list) -> None:
    model.set_weights(weights)
    for v, value in zip(model.optimizer_variables(), optimizer, strict=True):
        v.assign(value)


def check_end(t, state: dict, checkpoints: Path | None, scorer, z_eval: np.ndarray, z_grid: np.ndarray):
    """The Keras callback run after every check (one `fit` call of `check_every` steps).

    t: the train section (steps, check_every, grid, guard); state: updated in place, saved with the
    checkpoint (history, best KID and its step, rollbacks, the MLflow run id); scorer: a
    `quality.Scorer`; z_eval, z_grid: the fixed latent vectors of the score and of the grid."""
    import keras
    import mlflow

    from pipeline import checkpoint

    g = t.guard
    side = t.grid

    class CheckEnd(keras.callbacks.Callback):
        best_weights = best_optimizer = None
        started, stop_reason = 0.0, None

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            model, n = self.model, epoch + 1
            step = min(n * t.check_every, t.steps)
            row = {"step": step, **{k: float(logs[k]) for k in ("d_loss", "g_loss", "d_x", "d_g_z")}}
            trained = time.perf_counter() - self.started
            images = model.generate(z_eval)
            row.update(scorer.score(images))
            row.update(seconds=trained, score_seconds=time.perf_counter() - self.started - trained)
            state["history"].append(row)
            notes = []
            problem = verdict(state["history"], g.patience, g.d_loss_floor, g.diversity_ratio)
            finite = math.isfinite(row["d_loss"]) and math.isfinite(row["g_loss"])
            if problem:
                mlflow.set_tag("guard", f"step {step}: {problem}")
            if problem and g.action == "warn" and finite:
                notes.append(f"train: step {step}: {problem}")
                problem = None  # only said: the check counts as any other
            if problem:
                if self.best_weights is None:
                    if not finite:
                        raise TrainError(f"train: step {step}: {problem}, before any check to go back to. "
                                         "Lower gan.train.d_learning_rate and g_learning_rate, or set gan.train.clipvalue.")
                    notes.append(f"train: step {step}: {problem}; no earlier check to go back to, going on")
                elif g.action == "rollback" and state["rollbacks"] < g.max_rollbacks:
                    state["rollbacks"] += 1
                    restore(model, self.best_weights, self.best_optimizer)
                    notes.append(f"train: step {step}: {problem}; rolled back to step {state['best_step']} (best KID)")
                else:
                    self.stop_reason = f"step {step}: {problem}; training stopped, keeping step {state['best_step']} (best KID)"
                    model.stop_training = True
                    notes.append(f"train: {self.stop_reason}")
            elif row["kid"] < state["best_kid"]:
                state.update(best_kid=row["kid"], best_step=step)
                self.best_weights, self.best_optimizer = model.get_weights(), optimizer_arrays(model)
            grid = model.generate(z_grid).reshape(side, side, *images.shape[1:])
            mlflow.log_image(pictures.tile(grid), f"grid/step_{step:06d}.png")
            if checkpoints is not None:
                checkpoint.save(checkpoints, n, model, self.best_weights or model.get_weights(),
                                self.best_optimizer or optimizer_arrays(model), state, {"optimizer": optimizer_arrays(model)})
            epochs.log_epoch(row, "step")  # after the checkpoint: a resume logs what a kill cut off, never twice
            print(f"step {step}/{t.steps}: d_loss {row['d_loss']:.3f}  g_loss {row['g_loss']:.3f}  D(x) {row['d_x']:.2f}  "
                  f"D(G(z)) {row['d_g_z']:.2f}  KID {row['kid']:.4f}  FID {row['fid']:.1f}  diversity {row['diversity']:.2f}  "
                  f"({row['seconds']:.1f} s + {row['score_seconds']:.1f} s scoring)", flush=True)
            for note in notes:
                print(note, flush=True)

    return CheckEnd()
