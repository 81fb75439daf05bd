"""Stage sample (VAE): pictures of what the trained VAE learned, from <paths.models>/vae.keras and
MNIST's test digits (<paths.raw>/mnist.npz).

Reads `seed` and `vae.sample`. Writes under <paths.samples>/:
  latent_grid.png     the book's grid: the decoder over the prior's quantiles (2 latent dims),
                      or `grid` x `grid` prior samples for more
  samples.png         `samples` digits decoded from codes drawn from the prior
  interpolation.png   `steps` decodes on the line between the codes of two test digits (`interpolate`)
  concept.png         §8.4.2's concept vectors: the vector from the mean code of the test digits of
                      class concept[0] to that of class concept[1], added in `steps` steps to
                      `concept_digits` test digits of class concept[0], one row each
and <paths.metrics>/sample.json: how far the concept vector carries a digit (`concept_reached`, the
share of rows whose last image the VAE's own encoder puts nearer the target class's mean code) and
the vector's length. The pictures and the whole record go to the MLflow run that trained the model.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from pipeline import artifacts, config, tracking
from pipeline.download import FetchError


class SampleError(ValueError):
    """The model or the sample settings cannot make the pictures asked for."""


def concept_rows(model, x: np.ndarray, labels: np.ndarray, source: int, target: int, digits: int, steps: int):
    """(rows of decoded images, the concept vector, the codes of the rows' ends): `digits` test
    digits of class `source`, each moved in `steps` steps along mean(code | target) - mean(code | source)."""
    from pipeline.vae.images import decode, encode

    codes = encode(model, x)
    means = {c: codes[labels == c].mean(axis=0) for c in (source, target)}
    vector = means[target] - means[source]
    start = codes[labels == source][:digits]
    alphas = np.linspace(0.0, 1.0, steps, dtype=np.float32)
    moved = start[:, None, :] + alphas[None, :, None] * vector[None, None, :]
    return decode(model, moved), vector, means


def run(cfg) -> dict:
    cfg = config.section(cfg, "vae")
    from pipeline.machine import import_keras

    keras = import_keras()
    from pipeline.vae import images
    from pipeline.vae.fetch import read
    from pipeline.vae.model import VAE  # noqa: F401 - registers the class for loading

    s = cfg.sample
    tracking.connect(tracking.resolve_uri(cfg.mlflow.tracking_uri), cfg.mlflow.experiment)  # fail fast
    model_file = Path(cfg.paths.models) / "vae.keras"
    try:
        model = keras.saving.load_model(model_file, safe_mode=True)
    except (OSError, ValueError) as e:
        raise SampleError(f"{model_file}: not a VAE model file ({str(e).splitlines()[0]}); retrain (`dvc repro vae_train`)") from None
    meta = json.loads((Path(cfg.paths.models) / "meta.json").read_text(encoding="utf-8"))
    arrays = read(Path(cfg.paths.raw) / f"{cfg.data.name}.npz")
    x = arrays["x_test"].astype(np.float32)[..., None] / 255.0
    labels = arrays["y_test"]
    for i in s.interpolate:
        if i >= len(x):
            raise SampleError(f"vae.sample.interpolate: test digit {i} does not exist (the test set holds {len(x)})")
    for c in s.concept:
        if (labels == c).sum() < s.concept_digits:
            raise SampleError(f"vae.sample.concept: fewer than {s.concept_digits} test digits of class {c}")
    samples_dir = Path(cfg.paths.samples)
    for folder in (samples_dir.parent, Path(cfg.paths.metrics)):
        artifacts.ensure_writable(folder)

    rng = np.random.default_rng(cfg.seed)
    pictures = {"latent_grid.png": images.latent_picture(model, s.grid, rng)}
    side = int(np.ceil(np.sqrt(s.samples)))
    z = rng.standard_normal((side * side, model.latent_dim)).astype(np.float32)
    drawn = images.decode(model, z)
    drawn[s.samples:] = 0.5  # the last row's empty cells, grey
    pictures["samples.png"] = images.tile(drawn.reshape(side, side, 28, 28))
    ends = images.encode(model, x[list(s.interpolate)])
    alphas = np.linspace(0.0, 1.0, s.steps, dtype=np.float32)[:, None]
    line = (1 - alphas) * ends[0] + alphas * ends[1]
    strip = np.concatenate([x[s.interpolate[0]][None, ..., 0], images.decode(model, line), x[s.interpolate[1]][None, ..., 0]])
    pictures["interpolation.png"] = images.tile(strip[None])
    rows, vector, means = concept_rows(model, x, labels, s.concept[0], s.concept[1], s.concept_digits, s.steps)
    pictures["concept.png"] = images.tile(rows)
    # Did the vector carry each digit over? Its last image, encoded again, nearer the target's mean code.
    last = images.encode(model, rows[:, -1][..., None])
    reached = np.linalg.norm(last - means[s.concept[1]], axis=1) < np.linalg.norm(last - means[s.concept[0]], axis=1)

    staging = samples_dir.with_name(f".{samples_dir.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, picture in pictures.items():
        images.save_png(picture, staging / name)
    shutil.rmtree(samples_dir, ignore_errors=True)
    staging.rename(samples_dir)
    result = {"files": sorted(pictures), "latent_dim": model.latent_dim, "grid": s.grid, "samples": s.samples,
              "interpolate": list(s.interpolate), "concept": list(s.concept), "concept_vector_norm": float(np.linalg.norm(vector)),
              "concept_reached": float(reached.mean())}
    # DVC metrics: the numbers only; the whole record goes to MLflow.
    artifacts.write_json(Path(cfg.paths.metrics) / "sample.json", {k: result[k] for k in ("concept_reached", "concept_vector_norm")})
    with tracking.run(meta["mlflow"]["run_id"]):
        log(samples_dir, result)
    print(f"sample: {', '.join(str(samples_dir / n) for n in sorted(pictures))}; the concept vector {s.concept[0]} -> "
          f"{s.concept[1]} carried {reached.sum()}/{len(reached)} digits over")
    return result


def log(folder: Path, result: dict) -> None:
    import mlflow

    for name in result["files"]:
        mlflow.log_artifact(str(folder / name), "sample")
    mlflow.log_dict(result, "sample/sample.json")
    mlflow.log_metric("sample.concept_reached", result["concept_reached"])


def log_reused(cfg, result: dict) -> None:
    log(Path(config.section(cfg, "vae").paths.samples), result)


def main() -> None:
    try:
        run(config.load())
    except (config.ConfigError, SampleError, FetchError, tracking.TrackingError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
