"""Stage train: fit the model on windows cut from the character ids, log every epoch to MLflow.

Reads <paths.prepared>/{train,val}.npy and vocab.json, and `seed`, `vectorize.maxlen`,
`vectorize.step`, `vectorize.val_step`, `model`, `train` (and `mlflow`, which only says where to
log). Writes, under <paths.models>/: model.keras (the weights of the best validation epoch, as the
model that predicts after a window's last position, whatever `train.targets`) and meta.json (vocab,
maxlen, lowercase, the config, the MLflow run); under <paths.metrics>/: history.csv (one row per
epoch), loss.png (loss and val_loss per epoch) and train.json. After every epoch it generates
text at each of `train.epoch_samples.temperatures` from a held-out window and logs it to MLflow.
The model is logged twice: the Keras file under model/, and the MLflow pyfunc text generator
(`pipeline.text.pyfunc`) under text_generator, registered as `mlflow.registered_model` if set.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from pipeline import artifacts, config, epochs, tracking
from pipeline.epochs import TrainError
from pipeline.text import callbacks, lstm_cpu
from pipeline.machine import import_tensorflow, peak_rss_mib, release_free_memory, set_threads
from pipeline.text.cpu import batch_parts, build_loops_first, prepare_fused_lstm
from pipeline.text.vectorize import make_dataset

DATA_FILES = ("train.npy", "val.npy", "vocab.json")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # DVC's own content hash for a file


def _log_setup(cfg, params: dict, data_md5: dict) -> None:
    import mlflow

    mlflow.log_params(tracking.flatten(params))
    mlflow.set_tags(tracking.flatten({**tracking.environment_tags(), **cfg.mlflow.tags, "seed": cfg.seed,
                                      **{f"data.{name.split('.')[0]}_md5": md5 for name, md5 in data_md5.items()},
                                      "corpus.sha256": cfg.corpus.sha256}))


def log_reused(cfg, result: dict) -> None:
    """What `run` logs (params, tags, per-epoch and final metrics), for a job that reused a stored
    model instead of training it; the model's own artifacts stay in the run that trained it."""
    cfg = config.section(cfg, "text")
    import mlflow

    prepared, metrics_dir = Path(cfg.paths.prepared), Path(cfg.paths.metrics)
    _log_setup(cfg, OmegaConf.to_container(cfg, resolve=True), {name: _md5(prepared / name) for name in DATA_FILES})
    with (metrics_dir / "history.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            epochs.log_epoch({k: int(v) if k == "epoch" else float(v) for k, v in row.items()})
    mlflow.log_metrics({"best_val_loss": result["best_val_loss"], "best_val_bpc": result["val_bpc"],
                        "seconds_per_epoch": result["seconds_per_epoch"]})
    mlflow.set_tag("stage.train.source_run", result["run_id"])


def run(cfg) -> dict:
    cfg = config.section(cfg, "text")  # the text section with the shared keys (seed, mlflow, ...)
    t = cfg.train
    if build_loops_first(t.fused_lstm, cfg.model.name, t.targets):
        # Before TensorFlow's import: a child process compiling the loops (the first time on a
        # machine) and this process never hold their memory at once.
        lstm_cpu.compile_apart()
    tf = import_tensorflow()
    import keras
    import mlflow

    from pipeline import checkpoint
    from pipeline.text import pyfunc
    from pipeline.text.model import Parallel, build as build_model, why_not_fusable

    prepared, models_dir, metrics_dir = Path(cfg.paths.prepared), Path(cfg.paths.models), Path(cfg.paths.metrics)
    vocab = json.loads((prepared / "vocab.json").read_text(encoding="utf-8"))
    train_ids, val_ids = np.load(prepared / "train.npy"), np.load(prepared / "val.npy")
    maxlen, step = cfg.vectorize.maxlen, cfg.vectorize.step
    for folder in (models_dir, metrics_dir):
        artifacts.ensure_writable(folder)

    # Fail before any training if the tracking store is unusable.
    uri = tracking.resolve_uri(cfg.mlflow.tracking_uri)
    experiment_id = tracking.connect(uri, cfg.mlflow.experiment)

    parts = batch_parts(t.batch_parts, cfg.threads, t.batch_size)
    set_threads(cfg.threads, parts)
    fused = prepare_fused_lstm(t.fused_lstm, cfg.model.name, t.targets, parts, cfg.threads)
    if t.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg.seed)
    params = OmegaConf.to_container(cfg, resolve=True)
    data_md5 = {name: _md5(prepared / name) for name in DATA_FILES}
    fingerprint = checkpoint.fingerprint({"data": data_md5, **{k: params[k] for k in ("seed", "vectorize", "model", "train")}})
    checkpoints = Path(cfg.paths.checkpoints) if t.checkpoint else None

    keys, sequence = OmegaConf.to_container(cfg.model), t.targets == "all"

    def build():
        nonlocal fused
        m = build_model(len(vocab), sequence=sequence, **keys)
        if fused and (reason := why_not_fusable(m)):
            if t.fused_lstm != "auto":
                raise TrainError(f"train.fused_lstm=true: {reason}; set train.fused_lstm to auto or false")
            print(f"train: fused_lstm auto: {reason}; training with Keras's LSTM", flush=True)
            fused = False
        m = Parallel(m, parts, fused) if parts > 1 or fused else m
        m.compile(optimizer=epochs.make_optimizer(t.optimizer, t.learning_rate, t.clipnorm), loss="sparse_categorical_crossentropy",
                  steps_per_execution=t.steps_per_execution)
        return m

    state = epochs.new_state(cfg.seed, fingerprint)
    found = checkpoint.latest(checkpoints, fingerprint) if checkpoints else None
    if found:
        state.update(found[1])
        print(f"train: resuming after epoch {state['epoch']} from the checkpoint in {checkpoints}", flush=True)
    callback = epochs.epoch_end(t, state, checkpoints, prefix="text.train.", uniform_loss=math.log(len(vocab)),
                                extra=callbacks.bits, describe=lambda row: f"val_bpc {row['val_bpc']:.3f}  ",
                                on_epoch=callbacks.samples(t, vocab, val_ids, maxlen))
    model = epochs.resume(found[0], callback) if found else build()
    val_ds = make_dataset(val_ids, maxlen, cfg.vectorize.val_step or step, t.batch_size, None, cfg.seed)
    # The exported model is the trained one's twin (the same weights) without the batch parts (a
    # resumed checkpoint may have them whatever `parts` is now), and, trained on all targets, the
    # twin that predicts after the last position only: val_loss is then that twin's on the held-out
    # windows, the book's figure, whatever the training objective.
    exported = build_model(len(vocab), **keys) if sequence or isinstance(model, Parallel) else model
    held_out = [callbacks.held_out(exported, val_ds)] if sequence else []

    with tracking.run(state["run_id"], experiment_id, lambda: tracking.run_name(cfg, config.section(config.compose(), "text"))) as active:
        run_id = state["run_id"] = active.info.run_id
        if found:
            epochs.replay_unlogged(run_id, state["history"])
            mlflow.set_tag("resumed_from_epoch", str(state["epoch"]))
        else:
            _log_setup(cfg, params, data_md5)
        # A progress bar on a terminal; in a log, the callback's one line per epoch says it all.
        extra = [epochs.progress_bar(t.epochs)] if sys.stdout.isatty() else []
        started, first, time_stop = time.perf_counter(), len(state["history"]), None
        # One dataset for all epochs, each iteration in the order of the epoch it serves.
        current = {"epoch": first}
        train_ds = make_dataset(train_ids, maxlen, step, t.batch_size, t.shuffle_buffer, cfg.seed,
                                lambda: current["epoch"], t.targets)
        for epoch in range(first, t.epochs):  # one fit() per epoch: each has its own shuffle
            current["epoch"] = epoch
            model.fit(train_ds, validation_data=None if sequence else val_ds, initial_epoch=epoch, epochs=epoch + 1,
                      callbacks=[*held_out, callback, *extra], shuffle=False, verbose=0)
            release_free_memory()
            if callback.stop_reason:
                break
            elapsed = time.perf_counter() - started
            if t.time_limit is not None and epoch + 1 < t.epochs and elapsed * (epoch + 2 - first) / (epoch + 1 - first) > t.time_limit:
                # Equal-time comparisons (bench/quality.py): never start an epoch expected to overrun.
                time_stop = f"time limit: {elapsed:.0f} s after {epoch + 1} epochs, of train.time_limit {t.time_limit:g} s"
                print(f"train: {time_stop}", flush=True)
                break
        seconds = time.perf_counter() - started
        history = state["history"]
        exported.set_weights(callback.best_weights)  # export the best validation epoch, as char-rnn advises

        ran = len(history) - (state.get("epoch", 0) if found else 0)
        metrics = {"loss": history[-1]["loss"], "val_loss": history[-1]["val_loss"],
                   "best_val_loss": state["best_val_loss"], "best_epoch": state["best_epoch"],
                   "val_bpc": state["best_val_loss"] / callbacks.LN2, "epochs": len(history), "seconds": seconds,
                   "seconds_per_epoch": seconds / max(ran, 1), "parameters": model.count_params(),
                   "rollbacks": state["rollbacks"], "stopped": callback.stop_reason or time_stop}
        meta = {"vocab": vocab, "maxlen": maxlen, "lowercase": cfg.vectorize.lowercase, "model": cfg.model.name,
                "serve_max_length": cfg.mlflow.serve_max_length,  # what the logged text generator serves at most
                "config": {k: params[k] for k in ("seed", "corpus", "vectorize", "model", "train")},  # no mlflow: no URIs
                "mlflow": {"tracking_uri": tracking.redact(uri), "experiment_id": active.info.experiment_id, "run_id": run_id}}

        with artifacts.atomic_path(models_dir / "model.keras") as tmp:
            exported.save(tmp)
        artifacts.write_json(models_dir / "meta.json", meta)
        epochs.write_history(history, metrics_dir / "history.csv")
        epochs.plot_losses(history, metrics_dir / "loss.png", "nats per character")

        mlflow.log_artifact(str(models_dir / "model.keras"), "model")
        mlflow.log_artifact(str(models_dir / "meta.json"), "model")
        mlflow.log_artifact(str(metrics_dir / "history.csv"))
        mlflow.log_artifact(str(metrics_dir / "loss.png"))
        pyfunc.log(models_dir, cfg.mlflow.registered_model)
        metrics["peak_rss_mib"] = peak_rss_mib()  # the whole stage's, its last step included
        mlflow.log_metrics({"best_val_loss": metrics["best_val_loss"], "best_val_bpc": metrics["val_bpc"],
                            "seconds_per_epoch": metrics["seconds_per_epoch"], "peak_rss_mib": metrics["peak_rss_mib"]})
        artifacts.write_json(metrics_dir / "train.json", metrics)
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
