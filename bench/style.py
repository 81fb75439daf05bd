"""genlab's style-transfer stage against keras-io's example (bench/style_reference.py, re-stated as
it runs), timed in the same run on the same photo and painting (the default config's), network (the
offline VGG16), size and loss: keras-io's weights (content 2.5e-8, style 1e-6, total variation
1e-6, which its SGD's learning rate is tuned to) on its layers, which are genlab's too.

    python bench/style.py                   # 100 SGD iterations of keras-io's loop as the yardstick
    python bench/style.py --iterations 50 --json

Three runs, each in its own process:
  reference     keras-io's loop: SGD at 100, decayed x0.96 every 100 steps, `--iterations` steps
  genlab sgd    the transfer stage with the same optimizer and steps (MLflow logging included)
  genlab lbfgs  the stage's L-BFGS-B on the same loss, stopped when the reference's time is spent
It prints seconds per evaluation (one loss and gradient) for the two SGD runs, and the loss each
run reaches: the SGD runs after the same steps, L-BFGS in the time the reference took for its
steps. Both sides are given the same arrays: the style image cropped to the photo's shape (keras-io
stretches it instead). Needs images/<name> in $GENLAB_DATA_DIR.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERAS_IO = {"content_weight": 2.5e-8, "style_weight": 1e-6, "tv_weight": 1e-6}
SGD = ["style.optimizer.name=sgd", "style.optimizer.learning_rate=100", "style.optimizer.decay_steps=100",
       "style.optimizer.decay_rate=0.96"]


def _overrides(cfg) -> list[str]:
    return [f"style.recipes.{cfg.network}.{k}={v}" for k, v in KERAS_IO.items()]


def _images(cfg):
    from pipeline.pictures import read_image
    from pipeline.style.transfer import crop_to

    folder = Path(os.environ.get("GENLAB_DATA_DIR", "/nonexistent")) / "images"
    paths = [folder / cfg.images.content.name, folder / cfg.images.style.name]
    for path in paths:
        if not path.is_file():
            sys.exit(f"error: no {path}: set GENLAB_DATA_DIR to the data mirror")
    content = read_image(paths[0], cfg.size, cfg.images.content.max_pixels, 32)
    return content, crop_to(read_image(paths[1], None, cfg.images.style.max_pixels, 32), *content.shape[:2])


def child(side: str, iterations: int, budget: float) -> dict:
    from pipeline import config, networks
    from pipeline.machine import import_keras, peak_rss_mib

    import_keras()
    import numpy as np

    cfg = config.compose_section([], "style")
    cfg = config.compose_section(_overrides(cfg), "style")
    recipe = dict(cfg.recipes[cfg.network])
    content, style = _images(cfg)
    if side == "reference":
        import tensorflow as tf

        from bench import style_reference as ref

        model = networks.build(cfg.network, cfg.weights, content.shape, cfg.seed)
        prep = lambda im: tf.convert_to_tensor(networks.preprocess(cfg.network, im.astype(np.float32)[None]))  # noqa: E731
        fn = ref.make(model, content.shape[0], content.shape[1], KERAS_IO["content_weight"], KERAS_IO["style_weight"],
                      KERAS_IO["tv_weight"])
        base, painting = prep(content), prep(style)
        started = time.perf_counter()
        image = ref.transfer(fn, base, painting, iterations)
        seconds = time.perf_counter() - started
        loss, _ = fn(tf.Variable(image), base, painting)
        return {"evaluations": iterations, "seconds": seconds, "seconds_per_evaluation": seconds / iterations,
                "loss": float(loss), "peak_rss_mib": peak_rss_mib()}
    if side == "sgd":
        from pipeline.style import fetch, transfer

        with tempfile.TemporaryDirectory() as work:
            os.chdir(work)
            full = config.compose([f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db", *_overrides(cfg), *SGD,
                                   f"style.evaluations={iterations}", f"style.image_every={iterations}"])
            fetch.run(full)
            info = transfer.run(full)
            os.chdir(ROOT)
        return {"evaluations": info["evaluations"], "seconds": info["seconds"], "seconds_per_evaluation": info["seconds_per_evaluation"],
                "loss": info["final_loss"], "peak_rss_mib": info["peak_rss_mib"]}
    from pipeline.style import transfer

    extractor = networks.feature_extractor(cfg.network, cfg.weights, [recipe["content_layer"], *recipe["style_layers"]],
                                           content.shape, cfg.seed)
    grad_fn = networks.input_gradient(transfer.loss_function(extractor, content, style, recipe))
    seen = []

    def on_evaluation(values, image):
        seen.append(values[0])
        if time.perf_counter() - started >= budget:
            raise transfer._Spent  # the reference's time is up: L-BFGS returns its best image so far
    started = time.perf_counter()
    image = transfer.lbfgs(grad_fn, content.astype(np.float32), 10 ** 6, on_evaluation)
    seconds = time.perf_counter() - started
    (loss, *_), _ = grad_fn(np.rint(image)[None].astype(np.float32))
    return {"evaluations": len(seen), "seconds": seconds, "seconds_per_evaluation": seconds / len(seen), "loss": float(loss),
            "peak_rss_mib": peak_rss_mib()}


def _run(side: str, iterations: int, budget: float) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", side, "--iterations", str(iterations), "--budget", str(budget)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        sys.exit(f"error: the {side} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=100, help="keras-io's SGD steps (default 100)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=("reference", "sgd", "lbfgs"), help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.iterations, args.budget)))
        return
    started = time.perf_counter()
    ref = _run("reference", args.iterations, 0)
    sgd = _run("sgd", args.iterations, 0)
    lbfgs = _run("lbfgs", args.iterations, ref["seconds"])
    ratio = ref["seconds_per_evaluation"] / sgd["seconds_per_evaluation"]
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "reference": ref, "genlab_sgd": sgd,
              "genlab_lbfgs": lbfgs, "speed_ratio": ratio, "loss_ratio_lbfgs": lbfgs["loss"] / ref["loss"],
              "wall_seconds": time.perf_counter() - started}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"Style transfer, the default photo, painting and size on the offline VGG16, keras-io's loss weights")
    print(f"{'run':34s} {'evaluations':>11s} {'seconds':>8s} {'s/eval':>7s} {'loss':>11s}")
    for name, r in (("keras-io loop (SGD)", ref), ("genlab transfer, SGD", sgd), ("genlab transfer, L-BFGS, same time", lbfgs)):
        print(f"{name:34s} {r['evaluations']:11d} {r['seconds']:8.1f} {r['seconds_per_evaluation']:7.3f} {r['loss']:11.5g}")
    print(f"seconds per evaluation, keras-io / genlab: {ratio:.2f} (target >= 1: {'met' if ratio >= 1 else 'NOT met'})")
    print(f"loss in keras-io's time for {args.iterations} iterations, L-BFGS / keras-io SGD: {report['loss_ratio_lbfgs']:.3f} "
          f"(lower is better)")
    print(f"peak RSS (MiB): keras-io {ref['peak_rss_mib']:.0f}, genlab SGD {sgd['peak_rss_mib']:.0f}, L-BFGS {lbfgs['peak_rss_mib']:.0f}")
    print(f"(wall time {report['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
