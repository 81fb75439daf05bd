"""Stage train: fit the model on windows cut from the character ids, log every epoch to MLflow.

Reads <paths.prepared>/{train,val}.npy and vocab.json, and `seed`, `vectorize.maxlen`,
`vectorize.step`, `model`, `train` (and `mlflow`, which only says where to log). Writes, under
<paths.models>/: model.keras (the weights of the best validation epoch) and meta.json (vocab,
maxlen, lowercase, the config, the MLflow run); under <paths.metrics>/: history.csv (one row per
epoch), loss.png (loss and val_loss per epoch) and train.json. After every epoch it generates
text at each of `train.epoch_samples.temperatures` from a held-out window and logs it to MLflow.
The model is logged twice: the Keras file under model/, and the MLflow pyfunc text generator
(`pipeline.pyfunc`) under text_generator, registered as `mlflow.registered_model` if set.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from pipeline import artifacts, config, pyfunc, tracking
from pipeline.vectorize import count_windows, decode

LN2 = math.log(2.0)


def make_dataset(ids: np.ndarray, maxlen: int, step: int, batch_size: int, shuffle: int | None, seed: int,
                 epoch: int = 0):
    """(window, next id) batches gathered from `ids` on the fly: the book's windows, never stored.
    `shuffle`: None for none, 0 for all windows, else a buffer size. The order depends only on
    (seed, epoch), so a resumed run sees the same batches as an uninterrupted one."""
    import tensorflow as tf

    starts = np.arange(count_windows(len(ids), maxlen, step), dtype=np.int64) * step
    if shuffle == 0:
        starts = np.random.default_rng([seed, epoch]).permutation(starts)
    table = tf.constant(ids.astype(np.int32))
    offsets = tf.range(maxlen, dtype=tf.int64)
    ds = tf.data.Dataset.from_tensor_slices(starts)
    if shuffle:
        ds = ds.shuffle(shuffle, seed=seed * 100_003 + epoch)
    ds = ds.batch(batch_size).map(
        lambda s: (tf.gather(table, s[:, None] + offsets), tf.gather(table, s + maxlen)),
        num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def make_optimizer(name: str, learning_rate: float, clipnorm: float | None = None):
    import keras

    return {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
            "sgd": keras.optimizers.SGD}[name](learning_rate=learning_rate, clipnorm=clipnorm)


class TrainError(RuntimeError):
    pass


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # DVC's own content hash for a file


def plot_losses(history: list[dict], path: Path) -> None:
    """loss and val_loss per epoch, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(epochs, [r["loss"] for r in history], "o-", label="loss (train)")
    ax.plot(epochs, [r["val_loss"] for r in history], "o-", label="val_loss (held out)")
    best = min(history, key=lambda r: r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf)
    ax.annotate(f"best {best['val_loss']:.3f}", (best["epoch"], best["val_loss"]), textcoords="offset points",
                xytext=(0, 8), ha="center", fontsize=8)
    ax.set(xlabel="epoch", ylabel="nats per character", title="training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def _log_epoch(row: dict) -> None:
    import mlflow

    mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


def _epoch_end(t, vocab, val_ids, maxlen, state, checkpoints: Path | None):
    """The Keras callback run after every epoch: record the losses; keep the best weights; cut the
    learning rate on a plateau; catch divergence (NaN/inf, or a loss far above its best) and roll
    back or stop; generate and log the epoch's samples; checkpoint; log the metrics."""
    import keras
    import mlflow

    from pipeline import checkpoint
    from pipeline.generator import Generator

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
                mlflow.set_tag("diverged", message)
                if self.best_weights is None:
                    raise TrainError(f"train: {message}; no epoch trained well, so there is no model to keep. "
                                     "Lower train.learning_rate or set train.clipnorm.")
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
                print(f"train: {self.stop_reason or message}", flush=True)
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
                        print(f"train: val_loss has not improved for {t.plateau.patience} epochs; learning rate now {lr:.3g}", flush=True)

            start = int(rng.integers(0, len(val_ids) - maxlen))
            prompt = val_ids[start:start + maxlen]
            out = Generator(self.model, maxlen).generate(prompt, temps, t.epoch_samples.length, rng, mode=t.epoch_samples.mode)
            seed_text = decode(prompt, vocab)
            for temp, ids in zip(temps, out, strict=True):
                text = f"--- seed: {seed_text!r}\n{seed_text}{decode(ids, vocab)}\n"
                mlflow.log_text(text, f"samples/epoch_{n:03d}/temperature_{temp}.txt")
            state["rng"] = rng.bit_generator.state
            if checkpoints is not None:
                checkpoint.save(checkpoints, n, self.model, self.best_weights, self.best_optimizer, state)
            _log_epoch(row)  # after the checkpoint: a resume logs what a kill cut off, never twice
            print(f"epoch {n}/{t.epochs}: loss {row['loss']:.4f}  val_loss {row['val_loss']:.4f}  "
                  f"val_bpc {row['val_bpc']:.3f}  ({row['seconds']:.1f} s)  "
                  f"T={temps[len(temps) // 2]}: {decode(out[len(temps) // 2][:60], vocab)!r}", flush=True)

    return EpochEnd()


def _progress_bar(epochs: int):
    """Keras's progress bar, saying "Epoch 3/10" although each fit() call runs one epoch."""
    import keras

    class Progbar(keras.callbacks.ProgbarLogger):
        def set_params(self, params):
            super().set_params({**params, "epochs": epochs, "verbose": 1})

    return Progbar()


def _resume(folder: Path, build, callback):
    """The checkpoint's model, with its optimizer state; its best weights go to the callback."""
    import keras

    model = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    best = build()
    best.load_weights(folder / "best.weights.h5")
    callback.best_weights = best.get_weights()
    with np.load(folder / "best_optimizer.npz") as z:
        callback.best_optimizer = [z[f"arr_{i}"] for i in range(len(z.files))]
    return model


def run(cfg) -> dict:
    import keras
    import mlflow
    import tensorflow as tf

    from pipeline import checkpoint
    from pipeline.model import MODELS

    prepared, models_dir, metrics_dir = Path(cfg.paths.prepared), Path(cfg.paths.models), Path(cfg.paths.metrics)
    vocab = json.loads((prepared / "vocab.json").read_text(encoding="utf-8"))
    train_ids, val_ids = np.load(prepared / "train.npy"), np.load(prepared / "val.npy")
    maxlen, step, t = cfg.vectorize.maxlen, cfg.vectorize.step, cfg.train
    for folder in (models_dir, metrics_dir):
        artifacts.ensure_writable(folder)

    # Fail before any training if the tracking store is unusable.
    uri = tracking.resolve_uri(cfg.mlflow.tracking_uri)
    experiment_id = tracking.connect(uri, cfg.mlflow.experiment)

    if t.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg.seed)
    params = OmegaConf.to_container(cfg, resolve=True)
    data_md5 = {name: _md5(prepared / name) for name in ("train.npy", "val.npy", "vocab.json")}
    fingerprint = checkpoint.fingerprint({"data": data_md5, **{k: params[k] for k in ("seed", "vectorize", "model", "train")}})
    checkpoints = Path(cfg.paths.checkpoints) if t.checkpoint else None

    def build():
        m = MODELS[cfg.model.name](len(vocab), cfg.model.units)
        m.compile(optimizer=make_optimizer(t.optimizer, t.learning_rate, t.clipnorm), loss="sparse_categorical_crossentropy")
        return m

    state = {"history": [], "good_epochs": [], "best_val_loss": math.inf, "best_epoch": 0, "wait": 0, "rollbacks": 0,
             "rng": np.random.default_rng(cfg.seed).bit_generator.state, "run_id": None, "fingerprint": fingerprint}
    found = checkpoint.latest(checkpoints, fingerprint) if checkpoints else None
    if found:
        state.update(found[1])
        print(f"train: resuming after epoch {state['epoch']} from the checkpoint in {checkpoints}", flush=True)
    callback = _epoch_end(t, vocab, val_ids, maxlen, state, checkpoints)
    model = _resume(found[0], build, callback) if found else build()
    val_ds = make_dataset(val_ids, maxlen, step, t.batch_size, None, cfg.seed)

    with mlflow.start_run(run_id=state["run_id"], experiment_id=None if state["run_id"] else experiment_id) as active:
        run_id = state["run_id"] = active.info.run_id
        if found:
            logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "loss")}
            for row in state["history"]:
                if row["epoch"] not in logged:
                    _log_epoch(row)  # the epoch a kill cut off between its checkpoint and its metrics
            mlflow.set_tag("resumed_from_epoch", str(state["epoch"]))
        else:
            mlflow.log_params(tracking.flatten(params))
            mlflow.set_tags(tracking.flatten({**tracking.environment_tags(), **cfg.mlflow.tags, "seed": cfg.seed,
                                              **{f"data.{name.split('.')[0]}_md5": md5 for name, md5 in data_md5.items()},
                                              "corpus.sha256": cfg.corpus.sha256}))
        # A progress bar on a terminal; in a log, the callback's one line per epoch says it all.
        callbacks = [callback] + ([_progress_bar(t.epochs)] if sys.stdout.isatty() else [])
        started = time.perf_counter()
        for epoch in range(len(state["history"]), t.epochs):  # one fit() per epoch: each has its own shuffle
            model.fit(make_dataset(train_ids, maxlen, step, t.batch_size, t.shuffle_buffer, cfg.seed, epoch),
                      validation_data=val_ds, initial_epoch=epoch, epochs=epoch + 1, callbacks=callbacks,
                      shuffle=False, verbose=0)
            if callback.stop_reason:
                break
        seconds = time.perf_counter() - started
        history = state["history"]
        model.set_weights(callback.best_weights)  # export the best validation epoch, as char-rnn advises

        ran = len(history) - (state.get("epoch", 0) if found else 0)
        metrics = {"loss": history[-1]["loss"], "val_loss": history[-1]["val_loss"],
                   "best_val_loss": state["best_val_loss"], "best_epoch": state["best_epoch"],
                   "val_bpc": state["best_val_loss"] / LN2, "epochs": len(history), "seconds": seconds,
                   "seconds_per_epoch": seconds / max(ran, 1), "parameters": model.count_params(),
                   "rollbacks": state["rollbacks"], "stopped": callback.stop_reason}
        meta = {"vocab": vocab, "maxlen": maxlen, "lowercase": cfg.vectorize.lowercase, "model": cfg.model.name,
                "config": {k: params[k] for k in ("seed", "corpus", "vectorize", "model", "train")},  # no mlflow: no URIs
                "mlflow": {"tracking_uri": tracking.redact(uri), "experiment_id": active.info.experiment_id, "run_id": run_id}}

        with artifacts.atomic_path(models_dir / "model.keras") as tmp:
            model.save(tmp)
        artifacts.write_json(models_dir / "meta.json", meta)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        artifacts.write_text(metrics_dir / "history.csv", buf.getvalue())
        plot_losses(history, metrics_dir / "loss.png")
        artifacts.write_json(metrics_dir / "train.json", metrics)

        mlflow.log_metrics({"best_val_loss": metrics["best_val_loss"], "best_val_bpc": metrics["val_bpc"],
                            "seconds_per_epoch": metrics["seconds_per_epoch"]})
        mlflow.log_artifact(str(models_dir / "model.keras"), "model")
        mlflow.log_artifact(str(models_dir / "meta.json"), "model")
        mlflow.log_artifact(str(metrics_dir / "history.csv"))
        mlflow.log_artifact(str(metrics_dir / "loss.png"))
        pyfunc.log(models_dir, cfg.mlflow.registered_model)
    if checkpoints is not None:
        checkpoint.clear(checkpoints)  # the outputs are written: nothing left to resume
    print(f"train: best val_loss {metrics['best_val_loss']:.4f} ({metrics['val_bpc']:.3f} bits/char) "
          f"at epoch {metrics['best_epoch']}; {metrics['seconds_per_epoch']:.1f} s/epoch; MLflow run {run_id}")
    return {**metrics, "run_id": run_id}


def main() -> None:
    try:
        run(config.load())
    except (config.ConfigError, tracking.TrackingError, TrainError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
