"""Stage sample (GAN): images from the exported generator (<paths.models>/generator.keras).

Reads `seed`, `gan.sample` and `gan.evaluate` (the network that scores the images), and the frogs
(<paths.raw>/cifar10_frogs.npz) to score against. Writes under <paths.samples>/:
  images.npz          `images` generated frogs, key x (n, 32, 32, 3) uint8
  grid.png            the first `grid` x `grid` of them
  interpolation.png   4 rows of `steps` images along great circles between two random latent
                      vectors (slerp: a Gaussian's mass lies near a sphere, not on the chord)
and <paths.metrics>/sample.json: KID of these images against as many real frogs, with its floor and
ceiling at that number of images, and their diversity relative to the real frogs'. The pictures
and the record go to the MLflow run that trained the generator.
"""
from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from pipeline import artifacts, config, pictures, tracking
from pipeline.download import FetchError
from pipeline.networks import NetworkError

ROWS = 4  # interpolation rows


class SampleError(ValueError):
    """The model or the sample settings cannot make the pictures asked for."""


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """`steps` points from `a` to `b` (each (d,)) along the great circle, radii interpolated linearly."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    omega = np.arccos(np.clip(a @ b / (na * nb), -1.0, 1.0))
    if omega < 1e-6:
        return ((1 - t) * a + t * b).astype(np.float32)
    direction = (np.sin((1 - t) * omega) * a / na + np.sin(t * omega) * b / nb) / np.sin(omega)
    return (direction * ((1 - t) * na + t * nb)).astype(np.float32)


def generate(generator, z: np.ndarray, batch: int = 250) -> np.ndarray:
    import keras

    from pipeline.gan.model import to_uint8

    return np.concatenate([to_uint8(keras.ops.convert_to_numpy(generator(z[i:i + batch]))) for i in range(0, len(z), batch)])


def run(cfg) -> dict:
    cfg = config.section(cfg, "gan")
    from pipeline.machine import import_keras

    keras = import_keras()
    from pipeline.gan import fetch
    from pipeline.gan.train import scorer_for, split

    s = cfg.sample
    tracking.connect(tracking.resolve_uri(cfg.mlflow.tracking_uri), cfg.mlflow.experiment)  # fail fast
    model_file = Path(cfg.paths.models) / "generator.keras"
    try:
        generator = keras.saving.load_model(model_file, safe_mode=True)
    except (OSError, ValueError) as e:
        raise SampleError(f"{model_file}: not a generator model file ({str(e).splitlines()[0]}); retrain (`dvc repro gan_train`)") from None
    meta = json.loads((Path(cfg.paths.models) / "meta.json").read_text(encoding="utf-8"))
    latent = meta["model"]["latent_dim"]
    train_frogs, _ = split(fetch.read(Path(cfg.paths.raw) / f"{cfg.data.name}.npz"), meta["config"]["train"]["holdout"],
                           meta["config"]["train"]["frogs"])
    if s.grid ** 2 > s.images:
        raise SampleError(f"gan.sample.grid: a {s.grid} x {s.grid} grid needs {s.grid ** 2} images, gan.sample.images is {s.images}")
    samples_dir = Path(cfg.paths.samples)
    for folder in (samples_dir.parent, Path(cfg.paths.metrics)):
        artifacts.ensure_writable(folder)

    rng = np.random.default_rng([cfg.seed, 1])  # not the train stage's fixed vectors: fresh samples
    images = generate(generator, rng.standard_normal((s.images, latent)).astype(np.float32))
    ends = rng.standard_normal((ROWS, 2, latent))
    strips = generate(generator, np.concatenate([slerp(a, b, s.steps) for a, b in ends]))
    shown = {"grid.png": pictures.tile(images[:s.grid ** 2].reshape(s.grid, s.grid, *images.shape[1:])),
             "interpolation.png": pictures.tile(strips.reshape(ROWS, s.steps, *images.shape[1:]))}

    e = cfg.evaluate
    prefix = f"{e.network}_{e.weights if e.weights in ('imagenet', 'hed', 'random') else 'custom'}"
    scorer = scorer_for(e, cfg.seed, train_frogs, s.images)
    score = scorer.score(images[:scorer.n])
    bounds = scorer.bounds(train_frogs)
    metrics = {f"kid_{prefix}": score["kid"], f"kid_{prefix}_floor": bounds["kid_floor"],
               f"kid_{prefix}_ceiling": bounds["kid_ceiling"], "diversity": score["diversity"], "images": int(scorer.n)}

    staging = samples_dir.with_name(f".{samples_dir.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, picture in shown.items():
        pictures.save_png(picture, staging / name)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=images)
    (staging / "images.npz").write_bytes(buf.getvalue())
    shutil.rmtree(samples_dir, ignore_errors=True)
    staging.rename(samples_dir)
    artifacts.write_json(Path(cfg.paths.metrics) / "sample.json", metrics)
    result = {"files": sorted([*shown, "images.npz"]), **metrics}
    with tracking.run(meta["mlflow"]["run_id"]):
        log(samples_dir, result)
    print(f"sample: {len(images)} images in {samples_dir / 'images.npz'}, {samples_dir / 'grid.png'}, "
          f"{samples_dir / 'interpolation.png'}; KID ({prefix}) of {scorer.n} of them {score['kid']:.4f} "
          f"(floor {bounds['kid_floor']:.4f}, noise {bounds['kid_ceiling']:.4f})")
    return result


def log(folder: Path, result: dict) -> None:
    import mlflow

    for name in result["files"]:
        if name.endswith(".png"):
            mlflow.log_artifact(str(folder / name), "sample")
    mlflow.log_dict(result, "sample/sample.json")
    mlflow.log_metrics({f"sample.{k}": v for k, v in result.items() if isinstance(v, float)})


def log_reused(cfg, result: dict) -> None:
    log(Path(config.section(cfg, "gan").paths.samples), result)


def main() -> None:
    try:
        run(config.load())
    except (config.ConfigError, SampleError, FetchError, NetworkError, tracking.TrackingError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
