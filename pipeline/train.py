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


def make_dataset(ids: np.ndarray, maxlen: int, step: int, batch_size: int, shuffle: int | None, seed: int):
    """(window, next id) batches gathered from `ids` on the fly: the book's windows, never stored.
    `shuffle`: None for none, 0 for all windows, else a buffer size."""
    import tensorflow as tf

    starts = np.arange(count_windows(len(ids), maxlen, step), dtype=np.int64) * step
    table = tf.constant(ids.astype(np.int32))
    offsets = tf.range(maxlen, dtype=tf.int64)
    ds = tf.data.Dataset.from_tensor_slices(starts)
    if shuffle is not None:
        ds = ds.shuffle(shuffle or len(starts), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(
        lambda s: (tf.gather(table, s[:, None] + offsets), tf.gather(table, s + maxlen)),
        num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def make_optimizer(name: str, learning_rate: float):
    import keras

    return {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
            "sgd": keras.optimizers.SGD}[name](learning_rate=learning_rate)


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
    best = min(history, key=lambda r: r["val_loss"])
    ax.annotate(f"best {best['val_loss']:.3f}", (best["epoch"], best["val_loss"]), textcoords="offset points",
                xytext=(0, 8), ha="center", fontsize=8)
    ax.set(xlabel="epoch", ylabel="nats per character", title="training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def _epoch_callback(cfg_samples, vocab, val_ids, maxlen, seed, history):
    """A Keras callback: after each epoch, record the losses and bits per character, keep the best
    weights, log to MLflow and generate the per-epoch samples with the fast generator."""
    import keras
    import mlflow

    from pipeline.generator import Generator

    temps = [float(t) for t in cfg_samples.temperatures]
    rng = np.random.default_rng(seed)

    class EpochEnd(keras.callbacks.Callback):
        best_loss, best_weights, started = math.inf, None, 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            n = epoch + 1
            row = {"epoch": n, "loss": float(logs["loss"]), "val_loss": float(logs["val_loss"])}
            row.update(bpc=row["loss"] / LN2, val_bpc=row["val_loss"] / LN2,
                       seconds=time.perf_counter() - self.started)
            history.append(row)
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=n)
            if row["val_loss"] < self.best_loss:
                self.best_loss, self.best_weights = row["val_loss"], self.model.get_weights()
            start = int(rng.integers(0, len(val_ids) - maxlen))
            prompt = val_ids[start:start + maxlen]
            gen = Generator(self.model, maxlen)
            out = gen.generate(prompt, temps, cfg_samples.length, rng, mode=cfg_samples.mode)
            seed_text = decode(prompt, vocab)
            for t, ids in zip(temps, out, strict=True):
                text = f"--- seed: {seed_text!r}\n{seed_text}{decode(ids, vocab)}\n"
                mlflow.log_text(text, f"samples/epoch_{n:03d}/temperature_{t}.txt")
            print(f"epoch {n}: loss {row['loss']:.4f}  val_loss {row['val_loss']:.4f}  "
                  f"val_bpc {row['val_bpc']:.3f}  ({row['seconds']:.1f} s)  "
                  f"T={temps[len(temps) // 2]}: {decode(out[len(temps) // 2][:60], vocab)!r}", flush=True)

    return EpochEnd()


def run(cfg) -> dict:
    import keras
    import mlflow

    from pipeline.model import MODELS

    prepared, models_dir, metrics_dir = Path(cfg.paths.prepared), Path(cfg.paths.models), Path(cfg.paths.metrics)
    vocab = json.loads((prepared / "vocab.json").read_text(encoding="utf-8"))
    train_ids, val_ids = np.load(prepared / "train.npy"), np.load(prepared / "val.npy")
    maxlen, step, t = cfg.vectorize.maxlen, cfg.vectorize.step, cfg.train

    # Fail before any training if the tracking store is unusable.
    uri = tracking.resolve_uri(cfg.mlflow.tracking_uri)
    experiment_id = tracking.connect(uri, cfg.mlflow.experiment)

    keras.utils.set_random_seed(cfg.seed)
    model = MODELS[cfg.model.name](len(vocab), cfg.model.units)
    model.compile(optimizer=make_optimizer(t.optimizer, t.learning_rate), loss="sparse_categorical_crossentropy")
    train_ds = make_dataset(train_ids, maxlen, step, t.batch_size, t.shuffle_buffer, cfg.seed)
    val_ds = make_dataset(val_ids, maxlen, step, t.batch_size, None, cfg.seed)

    params = OmegaConf.to_container(cfg, resolve=True)
    history: list[dict] = []
    with mlflow.start_run(experiment_id=experiment_id) as active:
        run_id = active.info.run_id
        mlflow.log_params(tracking.flatten(params))
        mlflow.set_tags({**tracking.environment_tags(), **cfg.mlflow.tags, "seed": str(cfg.seed),
                         "data.train_md5": _md5(prepared / "train.npy"), "data.val_md5": _md5(prepared / "val.npy"),
                         "data.vocab_md5": _md5(prepared / "vocab.json"), "corpus.sha256": str(cfg.corpus.sha256)})
        callback = _epoch_callback(t.epoch_samples, vocab, val_ids, maxlen, cfg.seed, history)
        started = time.perf_counter()
        model.fit(train_ds, validation_data=val_ds, epochs=t.epochs, callbacks=[callback], shuffle=False,  # shuffled by the dataset
                  verbose=2 if not sys.stdout.isatty() else 1)
        seconds = time.perf_counter() - started
        model.set_weights(callback.best_weights)  # export the best validation epoch, as char-rnn advises

        best = min(history, key=lambda r: r["val_loss"])
        metrics = {"loss": history[-1]["loss"], "val_loss": history[-1]["val_loss"],
                   "best_val_loss": best["val_loss"], "best_epoch": best["epoch"], "val_bpc": best["val_bpc"],
                   "epochs": len(history), "seconds": seconds, "seconds_per_epoch": seconds / len(history),
                   "parameters": model.count_params()}
        meta = {"vocab": vocab, "maxlen": maxlen, "lowercase": cfg.vectorize.lowercase, "model": cfg.model.name,
                "config": {k: params[k] for k in ("seed", "corpus", "vectorize", "model", "train")}, "mlflow": {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id}}

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
    print(f"train: best val_loss {metrics['best_val_loss']:.4f} ({metrics['val_bpc']:.3f} bits/char) "
          f"at epoch {metrics['best_epoch']}; {metrics['seconds_per_epoch']:.1f} s/epoch; MLflow run {run_id}")
    return {**metrics, "run_id": run_id}


def main() -> None:
    try:
        run(config.load())
    except (config.ConfigError, tracking.TrackingError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
