"""Stage dream (DeepDream): the base image's pixels moved by gradient ascent on the activations of
a pretrained convnet's layers, octave by octave (1st edition §8.2, keras-io `deep_dream.py`).

Reads <paths.raw>/<image.name> and `dream` (the network and its weights, the network's layers and
their weights (`layers.<network>`), size, octaves, octave_scale, iterations, step, max_loss, border, reinject). The image is
resized so that its longer side is `size`, then dreamt at `octaves` scales from the smallest up,
each `octave_scale` times the one before: `iterations` steps of normalised gradient ascent
(`step` in units of the image's [-1, 1] range, whatever the network's own preprocessing) on the
loss sum_l weight_l * mean(activation_l^2), the activations' outer `border` pixels left out,
stopping early above `max_loss`; between octaves the detail lost by upscaling is put back
(`reinject`). One compiled step (a `tf.function`, or autograd on the torch backend) per image size.
Writes <paths.samples>/dream.png and <paths.metrics>/dream.json (each octave's loss gain, final
loss, seconds per step) and history.csv (the loss at every step), and logs to MLflow the loss per
step and per octave, the image after each octave and the final one.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from pipeline import artifacts, config, pictures, tracking
from pipeline.download import FetchError
from pipeline.networks import NetworkError
from pipeline.pictures import ImageError


def octave_shapes(height: int, width: int, octaves: int, scale: float) -> list[tuple[int, int]]:
    """The image sizes dreamt at, smallest first: the original divided by scale^i, i = octaves-1 .. 0
    (keras-io's schedule)."""
    return [(int(height / scale ** i), int(width / scale ** i)) for i in range(octaves - 1, -1, -1)]


def activation_loss(features: list, weights: list[float], border: int):
    """sum_l weight_l * mean(a_l^2) over each activation map a_l, its outer `border` pixels left out
    (where the map is large enough to have an inside)."""
    from keras import ops

    total = 0.0
    for a, w in zip(features, weights):
        h, w_ = a.shape[1], a.shape[2]
        if border and h is not None and w_ is not None and min(h, w_) > 2 * border:
            a = a[:, border:h - border, border:w_ - border, :]
        total = total + w * ops.mean(ops.square(a))
    return total


def ascent_step(extractor, weights: list[float], border: int):
    """step(image, lr) -> (loss, image + lr * normalised gradient), the image (1, h, w, 3) in
    [-1, 1]; one compiled function (`pipeline.networks.input_gradient`)."""
    from keras import ops

    from pipeline.networks import input_gradient

    def loss_of(image):
        features = extractor((image + 1.0) * 127.5)
        return (activation_loss(features if isinstance(features, (list, tuple)) else [features], weights, border),)

    def ascend(image, grads, lr):
        grads = grads / ops.maximum(ops.mean(ops.abs(grads)), 1e-6)
        return image + lr * grads

    compiled = input_gradient(loss_of, ascend)

    def step(image, lr):
        (loss,), image = compiled(image, lr)
        return loss, image
    return step


def dream(step_fn, base: np.ndarray, octaves: int, scale: float, iterations: int, lr: float, max_loss: float | None,
          reinject: bool, on_step=lambda octave, i, loss: None, on_octave=lambda octave, image, first, last: None) -> np.ndarray:
    """The octave loop over `base` (h, w, 3) floats in [-1, 1]; the dreamt image, same shape."""
    from keras import ops

    original = ops.convert_to_tensor(base[None].astype(np.float32))
    shapes = octave_shapes(base.shape[0], base.shape[1], octaves, scale)
    shrunk = ops.image.resize(original, shapes[0])
    image = original
    for o, shape in enumerate(shapes):
        image = ops.image.resize(image, shape)
        first = last = None
        for i in range(iterations):
            loss, image = step_fn(image, lr)
            last = float(ops.convert_to_numpy(loss))
            first = last if first is None else first
            on_step(o, i, last)
            if max_loss is not None and last > max_loss:
                break
        if reinject:  # the detail that shrinking and upscaling lost, put back
            image = image + ops.image.resize(original, shape) - ops.image.resize(shrunk, shape)
            shrunk = ops.image.resize(original, shape)
        on_octave(o, ops.convert_to_numpy(image)[0], first, last)
    return ops.convert_to_numpy(image)[0]


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((image + 1.0) * 127.5), 0, 255).astype(np.uint8)


def run(cfg) -> dict:
    cfg = config.section(cfg, "dream")
    from pipeline import networks
    from pipeline.machine import import_keras, peak_rss_mib, set_threads

    import_keras()
    import mlflow

    base = pictures.read_image(Path(cfg.paths.raw) / cfg.image.name, cfg.size, cfg.image.max_pixels, 32)
    samples, metrics_dir = Path(cfg.paths.samples), Path(cfg.paths.metrics)
    for folder in (samples, metrics_dir):
        artifacts.ensure_writable(folder)
    experiment_id = tracking.connect(tracking.resolve_uri(cfg.mlflow.tracking_uri), cfg.mlflow.experiment)
    set_threads(cfg.threads, 1)
    chosen = cfg.layers[cfg.network]
    extractor = networks.feature_extractor(cfg.network, cfg.weights, list(chosen), (None, None, 3), cfg.seed)
    step_fn = ascent_step(extractor, [float(w) for w in chosen.values()], cfg.border)
    history, octaves = [], []
    params = OmegaConf.to_container(cfg, resolve=True)

    with tracking.run(None, experiment_id, lambda: tracking.run_name(cfg, config.section(config.compose(), "dream"))) as active:
        mlflow.log_params(tracking.flatten(params))
        mlflow.set_tags(tracking.flatten({**tracking.environment_tags(), **cfg.mlflow.tags, "seed": cfg.seed}))

        def on_step(o, i, loss):
            history.append({"step": len(history) + 1, "octave": o + 1, "iteration": i + 1, "loss": loss})

        def on_octave(o, image, first, last):
            from mlflow.entities import Metric

            # The octave's steps in one write: a store write per step would cost more than some steps.
            now = int(time.time() * 1000)
            mlflow.MlflowClient().log_batch(active.info.run_id, metrics=[
                Metric("loss", r["loss"], now, r["step"]) for r in history if r["octave"] == o + 1])
            gain = last / first if first else float("nan")
            octaves.append({"octave": o + 1, "size": list(image.shape[:2]), "first_loss": first, "last_loss": last, "gain": gain})
            mlflow.log_metrics({"octave_loss": last, "octave_gain": gain}, step=o + 1)
            mlflow.log_image(to_uint8(image), f"octaves/octave_{o + 1}.png")
            print(f"octave {o + 1}/{cfg.octaves} ({image.shape[1]} x {image.shape[0]}): loss {first:.4g} -> {last:.4g} "
                  f"(x{gain:.2f}), {time.perf_counter() - started:.1f} s", flush=True)

        started = time.perf_counter()  # the octave loop alone: seconds_per_step is the dream's, not the run's set-up
        result_image = dream(step_fn, base.astype(np.float32) / 127.5 - 1.0, cfg.octaves, cfg.octave_scale, cfg.iterations,
                             cfg.step, cfg.max_loss, cfg.reinject, on_step, on_octave)
        seconds = time.perf_counter() - started
        out = to_uint8(result_image)
        pictures.save_png(out, samples / "dream.png", scale=1)
        metrics = {"gain": octaves[-1]["gain"], "final_loss": octaves[-1]["last_loss"],
                   **{f"gain_octave_{o['octave']}": o["gain"] for o in octaves},
                   "seconds_per_step": seconds / max(len(history), 1), "steps": len(history)}
        info = {**metrics, "octaves": octaves, "seconds": seconds, "size": list(out.shape[:2]), "layers": dict(chosen),
                "network": f"{cfg.network} ({cfg.weights})", "peak_rss_mib": peak_rss_mib(), "run_id": active.info.run_id}
        _write_history(history, metrics_dir / "history.csv")
        artifacts.write_json(metrics_dir / "dream.json", metrics)
        artifacts.write_json(metrics_dir / "dream_info.json", info)
        mlflow.log_artifact(str(samples / "dream.png"), "dream")
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    print(f"dream: {samples / 'dream.png'} ({out.shape[1]} x {out.shape[0]}), loss x{metrics['gain']:.2f} in the last octave, "
          f"{metrics['seconds_per_step']:.2f} s a step; MLflow run {active.info.run_id}")
    return info


def _write_history(history: list[dict], path: Path) -> None:
    lines = ["step,octave,iteration,loss"] + [f"{r['step']},{r['octave']},{r['iteration']},{r['loss']!r}" for r in history]
    artifacts.write_text(path, "\n".join(lines) + "\n")


def main() -> None:
    try:
        run(config.load())
    except (config.ConfigError, tracking.TrackingError, FetchError, NetworkError, ImageError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
