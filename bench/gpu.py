"""GPU figures on a machine that has PyTorch and no TensorFlow (the lent `device` machine): the
project's own model builders (pipeline.model) trained through Keras 3's torch backend, which runs
LSTM and GRU layers on cuDNN when their activations are Keras's defaults and there is no
recurrent dropout (this script counts the calls to prove it).

    python bench/gpu.py prepare DIR          # here: the vectorize stage's ids of both corpora, into DIR
    KERAS_BACKEND=torch python bench/gpu.py run DIR --out OUT [--quality-seconds 300]

`prepare` runs the real fetch and vectorize stages (needs $GENLAB_DATA_DIR) for Nietzsche (the book's
recipe) and tiny-shakespeare (mixed case). `run` needs only Keras, numpy and OmegaConf:
1. which kernel each model family's recurrent layers take (cuDNN or Keras's generic loop);
2. the book's model (LSTM(128), maxlen 60, step 3, RMSprop 0.01, clipnorm 1) on full Nietzsche:
   one whole-epoch fit() at batch 128 and at 1024, samples/s as the user waits, and the loss;
3. the quality recipes on tiny-shakespeare, in parallel processes, each for --quality-seconds of
   training: the train stage's loop (targets all, one shuffle per epoch from the seed, val_loss on
   the held-out windows after every epoch, learning rate x0.5 after 2 epochs without improvement,
   the best epoch's weights kept). The best model is written to OUT as model.keras (in parts of
   15 MiB) with meta.json, so that the sample stage can check its held-out loss here on TensorFlow.
Everything measured goes to OUT/gpu.json; a table is printed last.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name -> (model keys, maxlen, step, batch size, learning rate). maxlen 128 windows, starting every
# 64 characters: every character is trained on twice per epoch, at two depths of context.
RECIPES = {
    "lstm3x512": ({"name": "stacked_lstm", "units": 512, "layers": 3, "dropout": 0.3, "embedding": 64}, 128, 64, 128, 0.002),
    "lstm2x512": ({"name": "stacked_lstm", "units": 512, "layers": 2, "dropout": 0.4, "embedding": 64}, 128, 64, 128, 0.002),
    "gru2x512": ({"name": "gru", "units": 512, "layers": 2, "dropout": 0.4, "embedding": 64}, 128, 64, 128, 0.002),
    # kernel 2, dilations 1..64: a receptive field of 128, the whole window
    "conv1d256": ({"name": "conv1d", "units": 256, "kernel_size": 2, "dilations": [1, 2, 4, 8, 16, 32, 64],
                   "dropout": 0.2, "embedding": 64}, 128, 64, 128, 0.002),
}
VAL_STEP = 3  # the held-out windows start every 3 characters, as in conf/experiment/quality.yaml
SEED = 1337


def prepare(folder: Path) -> None:
    import tempfile

    from pipeline import config, fetch, vectorize

    with tempfile.TemporaryDirectory() as raw:  # the corpora themselves stay out of DIR
        for corpus, maxlen in (("nietzsche", 60), ("tinyshakespeare", 256)):
            out = folder / corpus
            cfg = config.compose([f"corpus={corpus}", f"vectorize.maxlen={maxlen}", f"paths.raw={raw}",
                                  f"paths.prepared={out}", f"paths.metrics={raw}/metrics"])
            fetch.run(cfg)
            vectorize.run(cfg)


def _load(folder: Path, corpus: str):
    d = folder / corpus
    return np.load(d / "train.npy").astype(np.int32), np.load(d / "val.npy").astype(np.int32), \
        json.loads((d / "vocab.json").read_text(encoding="utf-8"))


def _kernel_counter() -> Counter:
    """Counts the calls of Keras's torch-backend recurrent kernels (cuDNN and the fallbacks)."""
    counts: Counter = Counter()
    import keras

    if keras.backend.backend() != "torch":
        return counts
    import importlib

    rnn = importlib.import_module("keras.src.backend.torch.rnn")  # the module: the package exports a function `rnn`
    for name in ("_cudnn_lstm", "_fallback_lstm", "_cudnn_gru", "_fallback_gru", "rnn"):
        def wrapped(*a, _f=getattr(rnn, name), _n=name, **k):
            counts[_n] += 1
            return _f(*a, **k)
        setattr(rnn, name, wrapped)
    return counts


def environment() -> dict:
    import keras

    env = {"keras": keras.__version__, "backend": keras.backend.backend(), "python": sys.version.split()[0]}
    if env["backend"] == "torch":
        import torch

        env.update(torch=torch.__version__, cuda=torch.cuda.is_available(),
                   device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                   cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    return env


def kernels(vocab_size: int, counts: Counter) -> dict:
    """For each family (conf/model defaults), the recurrent kernel calls of one training batch."""
    import keras

    from pipeline.model import build

    families = {"lstm": {"units": 128}, "stacked_lstm": {"units": 256, "layers": 2, "dropout": 0.2, "embedding": 32},
                "gru": {"units": 256, "layers": 2, "dropout": 0.2, "embedding": 32},
                "conv1d": {"units": 128, "kernel_size": 2, "dilations": [1, 2, 4, 8, 16, 32], "dropout": 0.1, "embedding": None}}
    x = np.random.default_rng(0).integers(0, vocab_size, (32, 60)).astype(np.int32)
    out = {}
    for name, keys in families.items():
        counts.clear()
        model = build(vocab_size, name, **keys)
        model.compile(optimizer=keras.optimizers.RMSprop(0.01), loss="sparse_categorical_crossentropy")
        model.train_on_batch(x, x[:, -1])
        out[name] = dict(counts)
    return out


def throughput(folder: Path, batch: int, counts: Counter) -> dict:
    """The book's model, one whole-epoch fit() on full Nietzsche at `batch`, after a 20-batch warm-up
    on a throwaway model (cuDNN handles, allocator): samples/s as the user waits, and the loss."""
    import keras

    from pipeline.model import build
    from pipeline.vectorize import make_windows

    train, _, vocab = _load(folder, "nietzsche")
    x, y = make_windows(train, 60, 3)
    order = np.random.default_rng([SEED, 0]).permutation(len(x))  # the train stage's epoch-0 order
    x, y = x[order], y[order]

    def fresh():
        keras.utils.set_random_seed(SEED)
        m = build(len(vocab), "lstm", units=128)
        m.compile(optimizer=keras.optimizers.RMSprop(0.01, clipnorm=1.0), loss="sparse_categorical_crossentropy")
        return m

    fresh().fit(x[: 20 * batch], y[: 20 * batch], batch_size=batch, epochs=1, shuffle=False, verbose=0)
    model = fresh()
    counts.clear()
    started = time.perf_counter()
    history = model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    seconds = time.perf_counter() - started
    return {"batch": batch, "samples": len(x), "fit_seconds": seconds, "samples_per_s": len(x) / seconds,
            "loss": history.history["loss"][-1], "kernel_calls": dict(counts)}


def held_out(model, val: np.ndarray, maxlen: int, step: int, batch: int = 1024) -> float:
    """The train stage's val_loss: the loss of the next character after each held-out window."""
    from pipeline.vectorize import make_windows

    x, y = make_windows(val, maxlen, step)
    return float(model.evaluate(x, y, batch_size=batch, verbose=0))


def quality(folder: Path, recipe: str, seconds: float, out: Path) -> dict:
    """One quality recipe on tiny-shakespeare for `seconds` of training, as the train stage runs it."""
    import keras

    from pipeline.model import build

    keys, maxlen, step, batch, lr = RECIPES[recipe]
    train, val, vocab = _load(folder, "tinyshakespeare")
    keras.utils.set_random_seed(SEED)
    model = build(len(vocab), sequence=True, **keys)
    model.compile(optimizer=keras.optimizers.Adam(lr, clipnorm=1.0), loss="sparse_categorical_crossentropy")
    exported = build(len(vocab), **keys)
    exported.compile(loss="sparse_categorical_crossentropy")
    n = len(range(0, len(train) - maxlen, step))
    offsets = np.arange(maxlen)
    history, best, best_weights, wait, started = [], math.inf, None, 0, time.perf_counter()
    epoch = 0
    while True:
        starts = np.random.default_rng([SEED, epoch]).permutation(np.arange(n) * step)
        x, y = train[starts[:, None] + offsets], train[starts[:, None] + offsets + 1]
        t0 = time.perf_counter()
        loss = model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0).history["loss"][-1]
        fit_s = time.perf_counter() - t0
        exported.set_weights(model.get_weights())
        val_loss = held_out(exported, val, maxlen, VAL_STEP)
        lr_now = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        history.append({"epoch": epoch + 1, "loss": loss, "val_loss": val_loss, "lr": lr_now, "fit_seconds": fit_s})
        print(json.dumps({"recipe": recipe, **history[-1]}), flush=True)
        if val_loss < best:
            best, best_weights, wait = val_loss, model.get_weights(), 0
        else:
            wait += 1
            if wait >= 2 and lr_now > 1e-4:  # the train stage's plateau rule (factor 0.5, patience 2, min 1e-4)
                model.optimizer.learning_rate.assign(max(lr_now * 0.5, 1e-4))
                wait = 0
        epoch += 1
        elapsed = time.perf_counter() - started
        if elapsed * (epoch + 1) / epoch > seconds:  # the train stage's time_limit rule
            break
    exported.set_weights(best_weights)
    model.set_weights(best_weights)
    # nanoGPT's figure is the mean over every position of 256-character blocks; ours is the
    # character after each maxlen window. Both, for the best weights.
    blocks = np.arange(0, len(val) - 257, 128)
    xs, ys = val[blocks[:, None] + np.arange(256)], val[blocks[:, None] + np.arange(256) + 1]
    result = {"recipe": recipe, "model": keys, "maxlen": maxlen, "step": step, "batch": batch, "learning_rate": lr,
              "epochs": epoch, "train_seconds": elapsed, "best_val_loss": best,
              "best_epoch": min(history, key=lambda r: r["val_loss"])["epoch"],
              "val_loss_maxlen60": held_out(exported, val, 60, VAL_STEP),
              "val_loss_all_positions_256": float(model.evaluate(xs, ys, batch_size=256, verbose=0)),
              "parameters": model.count_params(), "history": history}
    clean = build(len(vocab), **keys)  # uncompiled: no torch optimizer in the file, so TensorFlow loads it
    clean.set_weights(best_weights)
    clean.save(out / f"{recipe}.keras")
    (out / f"{recipe}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def run(folder: Path, out: Path, seconds: float, recipes: list[str], speed: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    counts = _kernel_counter()
    report: dict = {"environment": environment()}
    print(json.dumps(report["environment"]), flush=True)
    _, _, vocab = _load(folder, "nietzsche")
    report["kernels"] = kernels(len(vocab), counts)
    print("kernels:", json.dumps(report["kernels"]), flush=True)
    report["throughput"] = [throughput(folder, b, counts) for b in (128, 1024)] if speed else []
    for r in report["throughput"]:
        print("throughput:", json.dumps(r), flush=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    if seconds > 0 and recipes:
        jobs = {name: subprocess.Popen([sys.executable, __file__, "quality", str(folder), name, "--seconds", str(seconds),
                                        "--out", str(out)]) for name in recipes}
        failed = [name for name, p in jobs.items() if p.wait() != 0]
        if failed:
            sys.exit(f"quality recipes failed: {failed}")
        report["quality"] = {name: json.loads((out / f"{name}.json").read_text(encoding="utf-8")) for name in recipes}
        for name in recipes:
            data = (out / f"{name}.keras").read_bytes()
            for k in range(0, len(data), 15 * 2**20):  # the device tool returns files of at most 16 MiB
                (out / f"{name}.keras.part{k // (15 * 2**20)}").write_bytes(data[k:k + 15 * 2**20])
            (out / f"{name}.keras").unlink()
            (out / f"{name}.json").unlink()
    (out / "gpu.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"\n{report['environment'].get('device', 'cpu')}, Keras {report['environment']['keras']} "
          f"({report['environment']['backend']} backend)")
    for name, calls in report["kernels"].items():
        print(f"  {name:13s} kernel calls for one batch: {calls}")
    for r in report["throughput"]:
        print(f"  book model, batch {r['batch']:5d}: {r['samples_per_s']:9,.0f} samples/s over a whole-epoch fit() "
              f"({r['fit_seconds']:.1f} s), loss {r['loss']:.4f}")
    for r in report.get("quality", {}).values():
        print(f"  {r['recipe']}: best val_loss {r['best_val_loss']:.4f} at epoch {r['best_epoch']}/{r['epochs']} "
              f"in {r['train_seconds']:.0f} s; at maxlen 60 {r['val_loss_maxlen60']:.4f}; "
              f"all positions of 256 {r['val_loss_all_positions_256']:.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare").add_argument("folder", type=Path)
    r = sub.add_parser("run")
    r.add_argument("folder", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--quality-seconds", type=float, default=300)
    r.add_argument("--recipes", nargs="*", choices=sorted(RECIPES), default=sorted(RECIPES),
                   help="the quality recipes to train, in parallel (default: all)")
    r.add_argument("--no-throughput", dest="speed", action="store_false", help="skip the book model's epochs")
    q = sub.add_parser("quality")
    q.add_argument("folder", type=Path)
    q.add_argument("recipe", choices=sorted(RECIPES))
    q.add_argument("--seconds", type=float, required=True)
    q.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    if a.command == "prepare":
        prepare(a.folder)
    elif a.command == "run":
        run(a.folder, a.out, a.quality_seconds, a.recipes, a.speed)
    else:
        quality(a.folder, a.recipe, a.seconds, a.out)


if __name__ == "__main__":
    main()
