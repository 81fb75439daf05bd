"""Stage transfer (neural style transfer): the content photo's pixels moved until a pretrained
convnet sees the photo's content in one layer and the style image's Gram matrices in others
(1st edition §8.3, keras-io `neural_style_transfer.py`).

Reads <paths.raw>/<images.content.name> and <images.style.name>, and `style` (the network and its
weights, `recipes.<network>`: the content layer, the style layers and the three loss weights; size,
optimizer, evaluations, image_every). The photo is resized so that its longer side is `size`; the
style image is cropped to the photo's aspect and resized to its shape. The content layer's
activations of the photo and the style layers' Gram matrices of the style image are computed once;
each evaluation then runs the network on the image being optimised only. The image starts as the
photo, in RGB [0, 255] (the network's preprocessing inside the loss), and is optimised by SciPy's
L-BFGS-B within [0, 255] (`optimizer.name: lbfgs`, the 1st edition) or by a Keras optimizer with
keras-io's exponentially decayed learning rate, clipped to [0, 255] after each step (`sgd`, `adam`,
`rmsprop`), for `evaluations` loss-and-gradient evaluations: one compiled function
(`pipeline.networks.input_gradient`).

Writes <paths.samples>/transfer.png (the result) and triptych.png (photo | style | result),
<paths.metrics>/transfer.json (final losses, SSIM to the photo, seconds per evaluation),
transfer_info.json (a record) and history.csv (the losses at every evaluation); logs to MLflow the
losses per evaluation, the image every `image_every` evaluations and the final ones.
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
from pipeline.style import losses

LOSSES = ("loss", "content_loss", "style_loss", "tv_loss")  # what each evaluation returns, in this order


def crop_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`image` (uint8 RGB) centre-cropped to the aspect of height x width, then resized to it (the
    book stretches the style image instead, which stretches its brush strokes)."""
    from PIL import Image

    h, w = image.shape[:2]
    if w * height > h * width:  # wider than the target: crop the sides
        keep = max(1, round(h * width / height))
        image = image[:, (w - keep) // 2:(w - keep) // 2 + keep]
    else:
        keep = max(1, round(w * height / width))
        image = image[(h - keep) // 2:(h - keep) // 2 + keep]
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def loss_function(extractor, content: np.ndarray, style: np.ndarray, recipe: dict):
    """loss_of(image) -> (total, content, style, total variation) for a (1, h, w, 3) float image in
    [0, 255]. `extractor` maps images to [content layer, *style layers]; the photo's content features
    and the style image's Gram matrices are computed here, once."""
    from keras import ops

    def features(image):
        return extractor(ops.convert_to_tensor(image[None].astype(np.float32)))

    content_target = features(content)[0]
    style_grams = [losses.gram(f[0]) for f in features(style)[1:]]
    pixels = content.shape[0] * content.shape[1]
    cw, sw, tw = float(recipe["content_weight"]), float(recipe["style_weight"]), float(recipe["tv_weight"])

    def loss_of(image):
        f = extractor(image)
        c = losses.content_loss(f[0], content_target)
        s = sum(losses.style_loss(losses.gram(x[0]), g, pixels) for x, g in zip(f[1:], style_grams)) / len(style_grams)
        t = losses.total_variation(image)
        return cw * c + sw * s + tw * t, c, s, t
    return loss_of


class _Spent(Exception):
    """The evaluations are spent: SciPy's `maxfun` may overrun by a line search's few."""


def lbfgs(grad_fn, start: np.ndarray, evaluations: int, on_evaluation) -> np.ndarray:
    """SciPy's L-BFGS-B from `start` (h, w, 3) within [0, 255], for exactly `evaluations`
    evaluations of `grad_fn` (fewer if it converges), on_evaluation(losses, image) after each; the
    image of the lowest loss evaluated. One run, not the book's 20 restarts, so that the curvature
    it has learnt is kept."""
    from keras import ops
    from scipy.optimize import Bounds, minimize

    shape = start.shape
    best = {"loss": np.inf, "image": start.astype(np.float32), "n": 0}

    def fun(x):
        if best["n"] == evaluations:
            raise _Spent
        image = x.reshape(shape).astype(np.float32)
        values, grads = grad_fn(ops.convert_to_tensor(image[None]))
        values = [float(ops.convert_to_numpy(v)) for v in values]
        best["n"] += 1
        if values[0] < best["loss"]:
            best.update(loss=values[0], image=image)
        on_evaluation(values, image)
        return values[0], ops.convert_to_numpy(grads).astype(np.float64).ravel()

    try:
        minimize(fun, start.astype(np.float64).ravel(), jac=True, method="L-BFGS-B", bounds=Bounds(0.0, 255.0),
                 options={"maxfun": evaluations + 10, "maxiter": evaluations})
    except _Spent:
        pass
    return best["image"]


def keras_descent(grad_fn, start: np.ndarray, evaluations: int, name: str, learning_rate: float, decay_steps: int,
                  decay_rate: float, on_evaluation) -> np.ndarray:
    """A Keras optimizer (keras-io's SGD and its schedule, or Adam, RMSprop) on the image's pixels,
    clipped to [0, 255] after each step, for `evaluations` steps; on_evaluation(losses, image) after
    each, the losses of the image before the step and the image after it."""
    import keras
    from keras import ops

    schedule = keras.optimizers.schedules.ExponentialDecay(learning_rate, decay_steps, decay_rate)
    optimizer = keras.optimizers.get({"class_name": name, "config": {"learning_rate": schedule}})
    image = keras.Variable(start[None].astype(np.float32), name="image")
    for _ in range(evaluations):
        values, grads = grad_fn(image.value)
        optimizer.apply([grads], [image])
        image.assign(ops.clip(image.value, 0.0, 255.0))
        on_evaluation([float(ops.convert_to_numpy(v)) for v in values], ops.convert_to_numpy(image.value)[0])
    return ops.convert_to_numpy(image.value)[0]


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def run(cfg) -> dict:
    cfg = config.section(cfg, "style")
    from pipeline import networks
    from pipeline.machine import import_keras, peak_rss_mib, set_threads

    import_keras()
    import mlflow
    from keras import ops

    raw = Path(cfg.paths.raw)
    c, s = cfg.images.content, cfg.images.style
    content = pictures.read_image(raw / c.name, cfg.size, c.max_pixels, 32)
    style = crop_to(pictures.read_image(raw / s.name, None, s.max_pixels, 32), *content.shape[:2])
    samples, metrics_dir = Path(cfg.paths.samples), Path(cfg.paths.metrics)
    for folder in (samples, metrics_dir):
        artifacts.ensure_writable(folder)
    experiment_id = tracking.connect(tracking.resolve_uri(cfg.mlflow.tracking_uri), cfg.mlflow.experiment)
    set_threads(cfg.threads, 1)
    recipe = OmegaConf.to_container(cfg.recipes[cfg.network])
    extractor = networks.feature_extractor(cfg.network, cfg.weights, [recipe["content_layer"], *recipe["style_layers"]],
                                           content.shape, cfg.seed)
    loss_of = loss_function(extractor, content, style, recipe)
    grad_fn = networks.input_gradient(loss_of)
    history = []
    params = OmegaConf.to_container(cfg, resolve=True)

    with tracking.run(None, experiment_id, lambda: tracking.run_name(cfg, config.section(config.compose(), "style"))) as active:
        mlflow.log_params(tracking.flatten(params))
        mlflow.set_tags(tracking.flatten({**tracking.environment_tags(), **cfg.mlflow.tags, "seed": cfg.seed}))
        logged = 0

        def flush():  # the losses since the last write, in one store write (one per evaluation would cost more than some evaluations)
            nonlocal logged
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            mlflow.MlflowClient().log_batch(active.info.run_id, metrics=[
                Metric(k, r[k], now, r["evaluation"]) for r in history[logged:] for k in LOSSES])
            logged = len(history)

        def on_evaluation(values, image):
            history.append({"evaluation": len(history) + 1, **dict(zip(LOSSES, values))})
            n = len(history)
            if n % cfg.image_every == 0 or n == cfg.evaluations:
                flush()
                mlflow.log_image(to_uint8(image), f"progress/evaluation_{n:05d}.png")
                print(f"evaluation {n}/{cfg.evaluations}: loss {values[0]:.4g} (content {values[1]:.4g}, style {values[2]:.4g}, "
                      f"tv {values[3]:.4g}), {time.perf_counter() - started:.1f} s", flush=True)

        started = time.perf_counter()  # the optimisation alone: seconds_per_evaluation is the transfer's, not the set-up's
        o = cfg.optimizer
        if o.name == "lbfgs":
            result = lbfgs(grad_fn, content.astype(np.float32), cfg.evaluations, on_evaluation)
        else:
            result = keras_descent(grad_fn, content.astype(np.float32), cfg.evaluations, o.name, o.learning_rate,
                                   o.decay_steps, o.decay_rate, on_evaluation)
        seconds = time.perf_counter() - started
        flush()
        out = to_uint8(result)
        # The losses of the image as written (rounded to uint8): the figures the metrics report; no gradient needed.
        final = [float(ops.convert_to_numpy(v)) for v in loss_of(ops.convert_to_tensor(out[None].astype(np.float32)))]
        pictures.save_png(out, samples / "transfer.png", scale=1)
        pictures.save_png(pictures.tile(np.stack([content, style, out])[None]), samples / "triptych.png", scale=1)
        metrics = {**{f"final_{k}": v for k, v in zip(LOSSES, final)}, "first_loss": history[0]["loss"],
                   "ssim_to_content": losses.ssim(out, content), "seconds_per_evaluation": seconds / len(history),
                   "evaluations": len(history)}
        info = {**metrics, "seconds": seconds, "size": list(out.shape[:2]), "recipe": recipe, "optimizer": dict(o),
                "network": f"{cfg.network} ({cfg.weights})", "peak_rss_mib": peak_rss_mib(), "run_id": active.info.run_id}
        _write_history(history, metrics_dir / "history.csv")
        artifacts.write_json(metrics_dir / "transfer.json", metrics)
        artifacts.write_json(metrics_dir / "transfer_info.json", info)
        for name in ("transfer.png", "triptych.png"):
            mlflow.log_artifact(str(samples / name), "style")
        mlflow.log_metrics(metrics)
    print(f"style: {samples / 'transfer.png'} ({out.shape[1]} x {out.shape[0]}), loss {metrics['first_loss']:.4g} -> "
          f"{metrics['final_loss']:.4g} in {len(history)} evaluations, {metrics['seconds_per_evaluation']:.2f} s each, "
          f"SSIM to the photo {metrics['ssim_to_content']:.3f}; MLflow run {active.info.run_id}")
    return info


def _write_history(history: list[dict], path: Path) -> None:
    lines = [",".join(("evaluation", *LOSSES))] + [",".join([str(r["evaluation"]), *(repr(r[k]) for k in LOSSES)]) for r in history]
    artifacts.write_text(path, "\n".join(lines) + "\n")


def main() -> None:
    try:
        run(config.load())
    except (config.ConfigError, tracking.TrackingError, FetchError, NetworkError, ImageError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
