"""genlab's DCGAN against the book's training loop (bench/gan_reference.py, re-stated as it runs),
timed in the same run on the same frogs, the same networks (the default config's widths, or the
book's with --book) and the same batch size: training steps per second.

    python bench/gan.py                 # 6 blocks of 25 steps each side, default widths
    python bench/gan.py --book          # the book's widths (128/256 generator, 128 discriminator)
    python bench/gan.py --json          # the figures as one JSON object

Each side runs in a fresh process of its own. The reference is the book's Python loop (one
`generator.predict` and two `train_on_batch` calls a step); genlab's is its real train stage
(`pipeline.gan.train.run`, in a throwaway folder), one check every block, whose scoring is timed
apart and left out of the step rate. The rate is the median over the blocks after the first (which
traces the graphs). Needs cifar10_frogs.npz in $GENLAB_DATA_DIR.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BOOK = ["gan.model.seed_channels=128", "gan.model.filters=256", "gan.model.d_filters=128"]


def child(side: str, blocks: int, block: int, book: bool) -> dict:
    from pipeline import config
    from pipeline.machine import import_keras, peak_rss_mib

    keras = import_keras()
    overrides = BOOK if book else []
    cfg = config.compose_section(overrides, "gan")
    m, t = cfg.model, cfg.train
    path = Path(os.environ.get("GENLAB_DATA_DIR", "/nonexistent")) / "cifar10_frogs.npz"
    if not path.is_file():
        sys.exit("error: no cifar10_frogs.npz: set GENLAB_DATA_DIR to a folder holding it")
    keras.utils.set_random_seed(cfg.seed)
    if side == "reference":
        from bench import gan_reference as ref
        from pipeline.gan.fetch import read

        x = read(path)[:-t.holdout].astype(np.float32) / 127.5 - 1.0
        models = ref.build(m.latent_dim, m.seed_channels, m.filters, m.d_filters, m.dropout)
        marks = [time.perf_counter()]

        def on_step(step, d_loss, a_loss):
            if (step + 1) % block == 0:
                marks.append(time.perf_counter())

        ref.train(x, blocks * block, t.batch_size, m.latent_dim, models, on_step)
        seconds = list(np.diff(marks))
    else:
        from pipeline.gan import fetch, train

        with tempfile.TemporaryDirectory() as work:
            os.chdir(work)
            cfg = config.compose([*overrides, f"gan.train.steps={blocks * block}", f"gan.train.check_every={block}",
                                  "gan.evaluate.images=50", "gan.train.guard.action=warn",
                                  f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db"])
            fetch.run(cfg)
            train.run(cfg)
            history = [line.split(",") for line in Path("metrics/gan/history.csv").read_text().splitlines()]
            seconds = [float(r[history[0].index("seconds")]) for r in history[1:]]
            os.chdir(ROOT)
    rate = block / statistics.median(seconds[1:] or seconds)
    return {"block_seconds": seconds, "steps_per_second": rate, "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--block", type=int, default=25, help="steps per timed block")
    parser.add_argument("--book", action="store_true", help="the book's widths instead of the default config's")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=("reference", "genlab"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.blocks, args.block, args.book)))
        return
    started = time.perf_counter()
    out = {}
    for side in ("reference", "genlab"):
        cmd = [sys.executable, __file__, "--child", side, "--blocks", str(args.blocks), "--block", str(args.block)]
        proc = subprocess.run(cmd + (["--book"] if args.book else []), cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            sys.exit(f"error: the {side} run failed:\n{proc.stderr[-3000:]}")
        out[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    ref, gen = out["reference"], out["genlab"]
    ratio = gen["steps_per_second"] / ref["steps_per_second"]
    report = {"widths": "book" if args.book else "default", "blocks": args.blocks, "block": args.block,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "reference": ref, "genlab": gen,
              "speed_ratio": ratio, "wall_seconds": time.perf_counter() - started}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"DCGAN training steps on CIFAR-10 frogs, {'the book' if args.book else 'the default config'}'s widths, "
          f"{args.blocks} blocks of {args.block} steps (median of blocks 2-{args.blocks})")
    print(f"{'figure':28s} {'book loop':>10s} {'genlab':>10s} {'ratio':>7s}  target")
    print(f"{'steps per second':28s} {ref['steps_per_second']:10.2f} {gen['steps_per_second']:10.2f} {ratio:7.2f}  "
          f">= 1 (genlab as fast){'  met' if ratio >= 1 else '  NOT met'}")
    print(f"{'peak RSS (MiB)':28s} {ref['peak_rss_mib']:10.0f} {gen['peak_rss_mib']:10.0f}")
    print(f"(wall time {report['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
