"""genlab's DeepDream stage against keras-io's example (bench/dream_reference.py, re-stated as it
runs), timed in the same run on the same photo, network (the default config's: the offline VGG16
and its layers), size, octaves and steps: seconds per dream step.

    python bench/dream.py            # the default config's dream, each side in its own process
    python bench/dream.py --json

Each side's figure is the whole octave loop's wall time over its steps: graph tracing for each
octave's size and, for genlab, its MLflow logging of every step and octave are inside it. The
reference's step size is keras-io's (0.01 of an l2-normalised gradient) and has no bearing on the
time. Needs images/<name> in $GENLAB_DATA_DIR.
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


def child(side: str) -> dict:
    from pipeline import config, networks
    from pipeline.machine import import_keras, peak_rss_mib

    import_keras()
    cfg = config.compose_section([], "dream")
    layers = dict(cfg.layers[cfg.network])
    if side == "reference":
        import keras
        import numpy as np
        import tensorflow as tf

        from bench import dream_reference as ref
        from pipeline.pictures import read_image

        path = Path(os.environ.get("GENLAB_DATA_DIR", "/nonexistent")) / "images" / cfg.image.name
        if not path.is_file():
            sys.exit(f"error: no {path}: set GENLAB_DATA_DIR to the data mirror")
        base = networks.build(cfg.network, cfg.weights, (None, None, 3), cfg.seed)
        extractor = keras.Model(base.inputs, {name: base.get_layer(name).output for name in layers})
        img = tf.convert_to_tensor(networks.preprocess(cfg.network, read_image(path, cfg.size, cfg.image.max_pixels, 32)
                                                       .astype(np.float32))[None])
        steps = []
        loop = ref.make(extractor, layers)
        started = time.perf_counter()
        ref.dream(img, loop, cfg.octaves, cfg.octave_scale, cfg.iterations, 0.01, cfg.max_loss, lambda: steps.append(1))
        seconds = time.perf_counter() - started
        return {"steps": len(steps), "seconds": seconds, "seconds_per_step": seconds / len(steps), "peak_rss_mib": peak_rss_mib()}
    from pipeline.dream import dream, fetch

    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)
        full = config.compose([f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db"])
        fetch.run(full)
        info = dream.run(full)
        os.chdir(ROOT)
    return {"steps": info["steps"], "seconds": info["seconds"], "seconds_per_step": info["seconds_per_step"],
            "peak_rss_mib": info["peak_rss_mib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=("reference", "genlab"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    started, out = time.perf_counter(), {}
    for side in ("reference", "genlab"):
        proc = subprocess.run([sys.executable, __file__, "--child", side], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            sys.exit(f"error: the {side} run failed:\n{proc.stderr[-3000:]}")
        out[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    ref, gen = out["reference"], out["genlab"]
    ratio = ref["seconds_per_step"] / gen["seconds_per_step"]
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "reference": ref, "genlab": gen,
              "speed_ratio": ratio, "wall_seconds": time.perf_counter() - started}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"DeepDream, the default config (offline VGG16), {gen['steps']} steps each side")
    print(f"{'figure':28s} {'keras-io':>10s} {'genlab':>10s} {'ratio':>7s}  target")
    print(f"{'seconds per step':28s} {ref['seconds_per_step']:10.3f} {gen['seconds_per_step']:10.3f} {ratio:7.2f}  "
          f">= 1 (genlab as fast){'  met' if ratio >= 1 else '  NOT met'}")
    print(f"{'peak RSS (MiB)':28s} {ref['peak_rss_mib']:10.0f} {gen['peak_rss_mib']:10.0f}")
    print(f"(wall time {report['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
