"""Stage train (VAE): fit the VAE on MNIST's training digits, evaluating on its test digits every
epoch, then bound the test set's likelihood.

Reads <paths.raw>/mnist.npz and `seed`, `vae.model`, `vae.train`, `vae.evaluate` (and `mlflow`,
which only says where to log). Every epoch: loss, reconstruction_loss and kl_loss for train and test
(val_*), to MLflow and <paths.metrics>/history.csv, with two pictures logged to MLflow: the latent
space (the book's grid for 2 dimensions) and 8 fixed test digits with their reconstructions. The
shared per-epoch machinery (`pipeline.epochs`) keeps the best test epoch, cuts the learning rate on a
plateau, guards against divergence and checkpoints; a killed run resumes in the same MLflow run.
Writes <paths.models>/vae.keras (the best epoch's weights) and meta.json; <paths.metrics>/
history.csv, loss.png, train.json (the test set's negative ELBO and IWAE bound, in nats per
digit, the numbers experiments are compared by) and train_info.json (the whole record).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from pipeline import artifacts, checkpoint, config, epochs, tracking
from pipeline.download import FetchError
from pipeline.epochs import TrainError
from pipeline.machine import import_keras, peak_rss_mib, release_free_memory, set_threads

PIXELS = 28 * 28
UNIFORM_NATS = PIXELS * math.log(2.0)  # a model that knows nothing: p = 1/2 for every pixel
PER_EPOCH_GRID = 15  # the per-epoch latent picture's side, in digits
# Test digits per batch of the per-epoch evaluation: 10 equal batches of the 10,000 (Keras averages
# batch means, so a short last batch would weigh as much as a full one), and fewer, faster calls.
EVAL_BATCH = 1000


def load_digits(path: Path, train_digits: int | None, test_digits: int | None):
    """MNIST's training and test digits as uint8 (n, 28, 28, 1), the model scales them (`pixels`),
    and the test labels."""
    from pipeline.vae.fetch import read

    arrays = read(path)
    return arrays["x_train"][:train_digits, ..., None], arrays["x_test"][:test_digits, ..., None], arrays["y_test"][:test_digits]


def bounds(model, x: np.ndarray, k: int, batch: int, seed: int, label: str = "evaluate") -> tuple[float, float]:
    """The mean negative ELBO and IWAE bound (k samples) over the digits `x`, in nats per digit,
    with progress on long runs."""
    import keras

    model.reseed(seed, 0)
    elbo, iwae, started, shown = [], [], time.perf_counter(), 0.0
    for i in range(0, len(x), batch):
        e, w = model.bounds(x[i:i + batch], k)
        elbo.append(keras.ops.convert_to_numpy(e))
        iwae.append(keras.ops.convert_to_numpy(w))
        if time.perf_counter() - shown > 10:
            shown = time.perf_counter()
            done = min(i + batch, len(x))
            print(f"{label}: {done}/{len(x)} test digits, k={k} ({shown - started:.0f} s)", flush=True)
    return float(np.concatenate(elbo).mean()), float(np.concatenate(iwae).mean())


def run(cfg) -> dict:
    cfg = config.section(cfg, "vae")
    keras = import_keras()
    import mlflow

    from pipeline.vae import images
    from pipeline.vae.model import VAE

    t, m, e = cfg.train, cfg.model, cfg.evaluate
    models_dir, metrics_dir = Path(cfg.paths.models), Path(cfg.paths.metrics)
    data = Path(cfg.paths.raw) / f"{cfg.data.name}.npz"
    x_train, x_test, _ = load_digits(data, t.train_digits, t.test_digits)
    for folder in (models_dir, metrics_dir):
        artifacts.ensure_writable(folder)
    uri = tracking.resolve_uri(cfg.mlflow.tracking_uri)
    experiment_id = tracking.connect(uri, cfg.mlflow.experiment)  # fail before any training

    set_threads(cfg.threads, 1)
    keras.utils.set_random_seed(cfg.seed)
    params = OmegaConf.to_container(cfg, resolve=True)
    data_sha = artifacts.sha256_of(data)
    fingerprint = checkpoint.fingerprint({"data": data_sha, **{k: params[k] for k in ("seed", "model", "train")}})
    checkpoints = Path(cfg.paths.checkpoints) if t.checkpoint else None
    state = epochs.new_state(cfg.seed, fingerprint)
    found = checkpoint.latest(checkpoints, fingerprint) if checkpoints else None
    if found:
        state.update(found[1])
        print(f"train: resuming after epoch {state['epoch']} from the checkpoint in {checkpoints}", flush=True)

    shown = x_test[:t.reconstructions].astype(np.float32) / 255.0  # the same digits every epoch: progress shows frame to frame

    def pictures(n, model, rng) -> str:
        mlflow.log_image(images.latent_picture(model, PER_EPOCH_GRID, np.random.default_rng(cfg.seed)),
                         f"latent/epoch_{n:03d}.png")
        mlflow.log_image(images.reconstructions(model, shown), f"reconstructions/epoch_{n:03d}.png")
        return ""

    callback = epochs.epoch_end(
        t, state, checkpoints, prefix="vae.train.", uniform_loss=UNIFORM_NATS,
        extra=lambda logs: {k: float(logs[k]) for k in ("reconstruction_loss", "kl_loss", "val_reconstruction_loss", "val_kl_loss")},
        describe=lambda row: f"reconstruction {row['val_reconstruction_loss']:.2f}  KL {row['val_kl_loss']:.2f}  ",
        on_epoch=pictures)
    if found:
        model = epochs.resume(found[0], callback)
    else:
        model = VAE(m.filters, m.dense, m.latent_dim, t.beta, seed=cfg.seed)
        model.compile(optimizer=epochs.make_optimizer(t.optimizer, t.learning_rate, t.clipnorm))

    class Reseed(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            model.reseed(cfg.seed, epoch + 1)  # each epoch's noise from (seed, epoch): a resume draws the same

    with tracking.run(state["run_id"], experiment_id, lambda: tracking.run_name(cfg, config.section(config.compose(), "vae"))) as active:
        run_id = state["run_id"] = active.info.run_id
        if found:
            epochs.replay_unlogged(run_id, state["history"])
            mlflow.set_tag("resumed_from_epoch", str(state["epoch"]))
        else:
            mlflow.log_params(tracking.flatten(params))
            mlflow.set_tags(tracking.flatten({**tracking.environment_tags(), **cfg.mlflow.tags, "seed": cfg.seed,
                                              "data.sha256": data_sha}))
        extra = [epochs.progress_bar(t.epochs)] if sys.stdout.isatty() else []
        started, first = time.perf_counter(), len(state["history"])
        test_data, test_batch = epochs.in_batches(x_test, EVAL_BATCH)
        for epoch in range(first, t.epochs):
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(x_train))  # the epoch's shuffle, from the seed
            data, batch = epochs.in_batches(x_train[order], t.batch_size)
            model.fit(data, batch_size=batch, validation_data=test_data, validation_batch_size=test_batch,
                      initial_epoch=epoch, epochs=epoch + 1, shuffle=False, verbose=0, callbacks=[Reseed(), callback, *extra])
            release_free_memory()
            if callback.stop_reason:
                break
        seconds = time.perf_counter() - started
        history = state["history"]
        model.set_weights(callback.best_weights)  # export the best test epoch's weights
        ran = len(history) - (state.get("epoch", 0) if found else 0)

        k, n_eval = e.iwae_samples, e.images or len(x_test)
        evaluated = time.perf_counter()
        neg_elbo, neg_iwae = bounds(model, x_test[:n_eval], k, e.batch_size, cfg.seed)
        metrics = {"test_neg_elbo": neg_elbo, "test_iwae_nll": neg_iwae, "iwae_samples": k}
        info = {**metrics, "test_digits": n_eval, "evaluate_seconds": time.perf_counter() - evaluated,
                "best_val_loss": state["best_val_loss"], "best_epoch": state["best_epoch"], "epochs": len(history),
                "seconds": seconds, "seconds_per_epoch": seconds / max(ran, 1), "parameters": model.count_params(),
                "rollbacks": state["rollbacks"], "stopped": callback.stop_reason, "backend": keras.backend.backend()}
        meta = {"model": {"filters": list(m.filters), "dense": m.dense, "latent_dim": m.latent_dim, "beta": t.beta},
                "config": {k: params[k] for k in ("seed", "data", "model", "train", "evaluate")},
                "mlflow": {"tracking_uri": tracking.redact(uri), "experiment_id": active.info.experiment_id, "run_id": run_id}}
        with artifacts.atomic_path(models_dir / "vae.keras") as tmp:
            model.save(tmp)
        artifacts.write_json(models_dir / "meta.json", meta)
        epochs.write_history(history, metrics_dir / "history.csv")
        epochs.plot_losses(history, metrics_dir / "loss.png", "nats per digit (negative ELBO)")
        for path, folder in ((models_dir / "vae.keras", "model"), (models_dir / "meta.json", "model"),
                             (metrics_dir / "history.csv", None), (metrics_dir / "loss.png", None)):
            mlflow.log_artifact(str(path), folder)
        info["peak_rss_mib"] = peak_rss_mib()
        mlflow.log_metrics({**metrics, "best_val_loss": info["best_val_loss"], "seconds_per_epoch": info["seconds_per_epoch"],
                            "peak_rss_mib": info["peak_rss_mib"]})
        artifacts.write_json(metrics_dir / "train_info.json", info)
        artifacts.write_json(metrics_dir / "train.json", metrics)
    if checkpoints is not None:
        checkpoint.clear(checkpoints)  # the outputs are written: nothing left to resume
    print(f"train: test negative ELBO {neg_elbo:.2f} nats, IWAE (k={k}) {neg_iwae:.2f} nats per digit on {n_eval} test digits; "
          f"best epoch {info['best_epoch']}; {info['seconds_per_epoch']:.1f} s/epoch; MLflow run {run_id}")
    return {**info, "run_id": run_id}


def log_reused(cfg, result: dict) -> None:
    """What `run` logs, for a job that reused a stored model instead of training it."""
    import csv

    import mlflow

    cfg = config.section(cfg, "vae")
    mlflow.log_params(tracking.flatten(OmegaConf.to_container(cfg, resolve=True)))
    with (Path(cfg.paths.metrics) / "history.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            epochs.log_epoch({k: int(v) if k == "epoch" else float(v) for k, v in row.items()})
    mlflow.log_metrics({k: result[k] for k in ("test_neg_elbo", "test_iwae_nll", "best_val_loss", "seconds_per_epoch")})
    mlflow.set_tag("stage.train.source_run", result["run_id"])


def main() -> None:
    try:
        run(config.load())
    except (config.ConfigError, tracking.TrackingError, TrainError, FetchError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
