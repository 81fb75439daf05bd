"""Stage train (GAN): train the DCGAN on the frogs, scoring it every `train.check_every` steps.

Reads <paths.raw>/cifar10_frogs.npz and `seed`, `gan.model`, `gan.train`, `gan.evaluate` (and
`mlflow`, which only says where to log). The last `train.holdout` frogs are never trained on: they
are the memorisation check's reference. Every check (`pipeline.gan.checks`): d_loss, g_loss, D(x),
D(G(z)), KID and FID on the evaluation network's features, diversity, to MLflow and history.csv,
the grid of the same latent vectors to MLflow, the guard, a checkpoint (a killed run resumes from
it to the same weights, in the same MLflow run). The exported generator is the best KID's.
Writes <paths.models>/generator.keras and meta.json; <paths.metrics>/history.csv, losses.png,
train.json (KID and FID of the exported generator with their floor and ceiling, the memorisation
ratio: the numbers experiments are compared by) and train_info.json (the whole record).
"""
from __future__ import annotations

import json
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
from pipeline.networks import NetworkError


def split(frogs: np.ndarray, holdout: int, train_frogs: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The training frogs (the first `train_frogs` of all but the last `holdout`) and the held-out ones."""
    if holdout >= len(frogs) - 1:
        raise TrainError(f"train: gan.train.holdout={holdout} leaves fewer than 2 of the {len(frogs)} frogs to train on")
    return frogs[:len(frogs) - holdout][:train_frogs], frogs[len(frogs) - holdout:]


def batch_order(n: int, seed: int, start: int, count: int) -> np.ndarray:
    """Indices of the training images from position `start` to `start + count` of the run's stream:
    pass p over the n images is permutation p of (seed, p), so any stretch of the stream (a resumed
    run's) is what the uninterrupted run fed."""
    positions = np.arange(start, start + count)
    passes = {p: np.random.default_rng([seed, p]).permutation(n) for p in np.unique(positions // n)}
    return np.array([passes[p // n][p % n] for p in positions], dtype=np.int64)


def make_model(cfg, keras):
    from pipeline.gan.model import GAN

    m, t = cfg.model, cfg.train
    model = GAN(m.latent_dim, m.seed_channels, m.filters, m.d_filters, m.dropout, t.label_noise, m.ema, seed=cfg.seed)
    compile_model(model, t, keras)
    return model


def compile_model(model, t, keras) -> None:
    def optimizer(name, lr):
        kwargs = {"learning_rate": lr, "clipvalue": t.clipvalue}
        if name == "adam":
            kwargs["beta_1"] = t.beta_1
        return {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}[name](**kwargs)

    model.compile(optimizer(t.d_optimizer, t.d_learning_rate), optimizer(t.g_optimizer, t.g_learning_rate))


def scorer_for(e, seed: int, reference: np.ndarray, images: int):
    """A `quality.Scorer` on the evaluation network `e` (the evaluate section), `images` a side
    (at most half the real frogs: the floor compares two disjoint real sets)."""
    from pipeline import networks
    from pipeline.gan.quality import Scorer

    extractor = networks.feature_extractor(e.network, e.weights, e.layer, (e.size, e.size, 3), seed)
    return Scorer(extractor, reference, min(images, len(reference) // 2), e.size, e.batch_size, seed)


def run(cfg) -> dict:
    cfg = config.section(cfg, "gan")
    keras = import_keras()
    import mlflow

    from pipeline.gan import checks, fetch, quality

    t, e = cfg.train, cfg.evaluate
    models_dir, metrics_dir = Path(cfg.paths.models), Path(cfg.paths.metrics)
    data = Path(cfg.paths.raw) / f"{cfg.data.name}.npz"
    train_frogs, held_out = split(fetch.read(data), t.holdout, t.frogs)
    for folder in (models_dir, metrics_dir):
        artifacts.ensure_writable(folder)
    uri = tracking.resolve_uri(cfg.mlflow.tracking_uri)
    experiment_id = tracking.connect(uri, cfg.mlflow.experiment)  # fail before any training

    set_threads(cfg.threads, 1)
    keras.utils.set_random_seed(cfg.seed)
    scorer = scorer_for(e, cfg.seed, train_frogs, e.images)
    prefix = f"{e.network}_{e.weights if e.weights in ('imagenet', 'hed', 'random') else 'custom'}"
    rng = np.random.default_rng(cfg.seed)
    z_grid = rng.standard_normal((t.grid ** 2, cfg.model.latent_dim)).astype(np.float32)
    z_eval = rng.standard_normal((scorer.n, cfg.model.latent_dim)).astype(np.float32)

    params = OmegaConf.to_container(cfg, resolve=True)
    data_sha = artifacts.sha256_of(data)
    fingerprint = checkpoint.fingerprint({"data": data_sha, **{k: params[k] for k in ("seed", "model", "train", "evaluate")}})
    checkpoints = Path(cfg.paths.checkpoints) if t.checkpoint else None
    state = {"history": [], "best_kid": math.inf, "best_step": 0, "rollbacks": 0, "run_id": None, "fingerprint": fingerprint}
    found = checkpoint.latest(checkpoints, fingerprint) if checkpoints else None
    callback = checks.check_end(t, state, checkpoints, scorer, z_eval, z_grid)
    if found:
        state.update(found[1])
        print(f"train: resuming after step {state['history'][-1]['step']} from the checkpoint in {checkpoints}", flush=True)
        model = keras.saving.load_model(found[0] / "model.keras", safe_mode=True)
        compile_model(model, t, keras)
        checks.restore(model, model.get_weights(), checkpoint.load_arrays(found[0] / "optimizer.npz"))
        callback.best_weights = checkpoint.load_arrays(found[0] / "best_weights.npz")
        callback.best_optimizer = checkpoint.load_arrays(found[0] / "best_optimizer.npz")
    else:
        model = make_model(cfg, keras)

    n_checks = math.ceil(t.steps / t.check_every)
    with tracking.run(state["run_id"], experiment_id, lambda: tracking.run_name(cfg, config.section(config.compose(), "gan"))) as active:
        run_id = state["run_id"] = active.info.run_id
        if found:
            epochs.replay_unlogged(run_id, state["history"], "d_loss", "step")
            mlflow.set_tag("resumed_from_step", str(state["history"][-1]["step"]))
        else:
            mlflow.log_params(tracking.flatten(params))
            mlflow.set_tags(tracking.flatten({**tracking.environment_tags(), **cfg.mlflow.tags, "seed": cfg.seed,
                                              "data.sha256": data_sha, "evaluate.features": prefix}))
        extra = [epochs.progress_bar(n_checks)] if sys.stdout.isatty() else []
        started, first = time.perf_counter(), len(state["history"])
        for c in range(first, n_checks):
            steps = min(t.check_every, t.steps - c * t.check_every)
            order = batch_order(len(train_frogs), cfg.seed, c * t.check_every * t.batch_size, steps * t.batch_size)
            model.reseed(cfg.seed, c + 1)  # each check's noise from (seed, check): a resume draws the same
            data, batch = epochs.in_batches(train_frogs[order], t.batch_size)
            model.fit(data, batch_size=batch, initial_epoch=c, epochs=c + 1, shuffle=False, verbose=0,
                      callbacks=[callback, *extra])
            release_free_memory()
            if callback.stop_reason:
                break
        seconds = time.perf_counter() - started
        history = state["history"]
        if callback.best_weights is None:
            raise TrainError("train: no check scored a usable generator (every check tripped the guard); see the guard tag in MLflow")
        model.set_weights(callback.best_weights)  # export the best KID's generator
        best = next(r for r in history if r["step"] == state["best_step"])
        images = model.generate(z_eval)
        nearest_generated = float(np.median(quality.nearest_distance(images, train_frogs)))
        nearest_held_out = float(np.median(quality.nearest_distance(held_out, train_frogs)))
        metrics = {f"kid_{prefix}": best["kid"], f"fid_{prefix}": best["fid"],
                   **{f"{k.split('_')[0]}_{prefix}_{k.split('_')[1]}": v for k, v in scorer.bounds(train_frogs).items()},
                   "best_diversity": best["diversity"], "memorisation_ratio": nearest_generated / nearest_held_out,
                   "best_step": state["best_step"]}
        ran = sum(r["seconds"] + r["score_seconds"] for r in history[first:])
        steps_run = history[-1]["step"] - (history[first - 1]["step"] if first else 0)
        info = {**metrics, "features": f"{e.network} ({e.weights}) {e.layer} at {e.size} x {e.size}, {scorer.n} images a side",
                "nearest_training_rms_generated": nearest_generated, "nearest_training_rms_held_out": nearest_held_out,
                "steps": history[-1]["step"], "seconds": seconds,
                "steps_per_second": steps_run / max(sum(r["seconds"] for r in history[first:]), 1e-9),
                "seconds_per_check": ran / max(len(history) - first, 1), "parameters": model.generator.count_params(),
                "rollbacks": state["rollbacks"], "stopped": callback.stop_reason, "backend": keras.backend.backend()}
        meta = {"model": {"latent_dim": cfg.model.latent_dim, "ema": cfg.model.ema},
                "config": {k: params[k] for k in ("seed", "data", "model", "train", "evaluate")},
                "mlflow": {"tracking_uri": tracking.redact(uri), "experiment_id": active.info.experiment_id, "run_id": run_id}}
        with artifacts.atomic_path(models_dir / "generator.keras") as tmp:
            model.scored_generator().save(tmp)
        artifacts.write_json(models_dir / "meta.json", meta)
        epochs.write_history(history, metrics_dir / "history.csv")
        plot(history, metrics_dir / "losses.png", prefix)
        for path, folder in ((models_dir / "generator.keras", "model"), (models_dir / "meta.json", "model"),
                             (metrics_dir / "history.csv", None), (metrics_dir / "losses.png", None)):
            mlflow.log_artifact(str(path), folder)
        info["peak_rss_mib"] = peak_rss_mib()
        mlflow.log_metrics({k: v for k, v in info.items() if isinstance(v, (int, float)) and k != "best_step"})
        artifacts.write_json(metrics_dir / "train_info.json", info)
        artifacts.write_json(metrics_dir / "train.json", metrics)
    if checkpoints is not None:
        checkpoint.clear(checkpoints)  # the outputs are written: nothing left to resume
    print(f"train: KID ({prefix}) {best['kid']:.4f} at step {state['best_step']} (floor {metrics[f'kid_{prefix}_floor']:.4f}, "
          f"noise {metrics[f'kid_{prefix}_ceiling']:.4f}); memorisation ratio {metrics['memorisation_ratio']:.2f}; "
          f"{info['steps_per_second']:.2f} steps/s; MLflow run {run_id}")
    return {**info, "run_id": run_id}


def plot(history: list[dict], path: Path, features: str) -> None:
    """d_loss and g_loss, and KID, per check, as one PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    a.plot(steps, [r["d_loss"] for r in history], "o-", label="d_loss")
    a.plot(steps, [r["g_loss"] for r in history], "o-", label="g_loss")
    a.set(xlabel="step", ylabel="binary cross-entropy", title="losses (mean over each check's steps)")
    a.legend()
    b.plot(steps, [r["kid"] for r in history], "o-", color="C2")
    b.set(xlabel="step", ylabel=f"KID ({features})", title="KID against the real frogs (lower is better)", yscale="log")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def log_reused(cfg, result: dict) -> None:
    """What `run` logs, for a job that reused a stored generator instead of training it."""
    import csv

    import mlflow

    cfg = config.section(cfg, "gan")
    mlflow.log_params(tracking.flatten(OmegaConf.to_container(cfg, resolve=True)))
    with (Path(cfg.paths.metrics) / "history.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            epochs.log_epoch({k: int(v) if k == "step" else float(v) for k, v in row.items()}, "step")
    metrics = json.loads((Path(cfg.paths.metrics) / "train.json").read_text(encoding="utf-8"))
    mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    mlflow.set_tag("stage.train.source_run", result["run_id"])


def main() -> None:
    try:
        run(config.load())
    except (config.ConfigError, tracking.TrackingError, TrainError, FetchError, NetworkError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
