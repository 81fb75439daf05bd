"""GPU figures on a machine that has PyTorch and no TensorFlow (the lent `device` machine): the
project's own model builders (pipeline.text.model) trained through Keras 3's torch backend, which runs
LSTM and GRU layers on cuDNN when their activations are Keras's defaults and there is no recurrent
dropout (this script counts the kernel calls to show it).

    python bench/gpu.py prepare DIR                    # here: the vectorize stage's ids of both corpora
    KERAS_BACKEND=torch PYTHONPATH=<wheels>:. python bench/gpu.py run DIR --out OUT [--quality-seconds 300] [--recipes ...]
        [--pipeline [--corpus-dir MIRROR]]
    python bench/gpu.py record DIR OUT...              # here again: into bench/gpu.json and bench/quality.json

`prepare` runs the real fetch and vectorize stages (needs $GENLAB_DATA_DIR) for Nietzsche and
tiny-shakespeare. `run` needs Keras, numpy, Hydra and OmegaConf (carried as wheels, with namex,
optree and antlr4-python3-runtime) and the repository on PYTHONPATH (it is not installed there),
and measures:
1. which kernel each model family's recurrent layers take (cuDNN or Keras's generic loop);
2. the book's model (conf/ defaults) on full Nietzsche: one whole-epoch fit() at batch 128 and at
   1024, samples/s as the user waits, and the loss after it;
3. the quality recipes (RECIPES: Hydra overrides, composed from conf/) on tiny-shakespeare, in
   parallel processes, each for its train.epochs or --quality-seconds of training: the train stage's
   loop (targets all, one shuffle per epoch from the seed, val_loss on the held-out windows after
   every epoch, the plateau rule, the best epoch's weights kept). Each model is written to OUT in
   parts of 15 MiB (the device tool returns files of at most 16 MiB), with OUT/gpu.json.
4. with --pipeline, the default pipeline's work, stage by stage (`default_pipeline`): fetch and
   vectorize (from the corpus in --corpus-dir), the train stage's loop with conf/ as it is (10
   epochs, the per-epoch samples included), the sample stage's work. The stages themselves need
   TensorFlow and MLflow, which that machine lacks; this is their work on its GPU.
`record` puts each model through the project's sample stage here, on TensorFlow (its held-out loss
must match the GPU's), and adds the rows to the quality table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GPU_RESULTS = ROOT / "bench/gpu.json"

# name -> Hydra overrides on conf/: the quality recipes measured on the GPU. The first is the
# tiny-shakespeare quality experiment itself; the others change its family or depth.
RECIPES = {
    "lstm2x512": ["experiment=quality_tinyshakespeare"],
    "lstm3x512": ["experiment=quality_tinyshakespeare", "text.model.layers=3", "text.model.dropout=0.3"],
    "gru2x512": ["experiment=quality_tinyshakespeare", "text/model=gru"],
    # kernel 2, dilations 1..64: a receptive field of 128 characters, the whole window
    "conv1d256": ["experiment=quality_tinyshakespeare", "text/model=conv1d", "~text.model.layers", "text.model.units=256",
                  "text.model.dilations=[1,2,4,8,16,32,64]", "text.model.dropout=0.2"],
}


def prepare(folder: Path) -> None:
    import tempfile

    from pipeline import config
    from pipeline.text import fetch, vectorize

    with tempfile.TemporaryDirectory() as raw:  # the corpora themselves stay out of DIR
        for corpus in ("nietzsche", "tinyshakespeare"):
            cfg = config.compose_section([f"text/corpus={corpus}", f"text.paths.raw={raw}", f"text.paths.prepared={folder / corpus}",
                                  f"text.paths.metrics={raw}/metrics"])
            fetch.run(cfg)
            vectorize.run(cfg)


def _load(d: Path):
    """The vectorize stage's outputs in folder `d`: train and val ids, the vocabulary."""
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


def _optimizer(t):
    """The train stage's optimizer (`train.optimizer`, learning_rate, clipnorm), by Keras's own lookup."""
    import keras

    return keras.optimizers.get({"class_name": t.optimizer, "config": {"learning_rate": t.learning_rate, "clipnorm": t.clipnorm}})


def kernels(vocab_size: int, counts: Counter) -> dict:
    """For each family (its conf/model defaults), the recurrent kernel calls of one training batch."""
    from omegaconf import OmegaConf

    from pipeline import config
    from pipeline.text.model import MODELS, build

    x = np.random.default_rng(0).integers(0, vocab_size, (32, 60)).astype(np.int32)
    out = {}
    for name in MODELS:
        counts.clear()
        model = build(vocab_size, **OmegaConf.to_container(config.compose_section([f"text/model={name}"]).model))
        model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")
        model.train_on_batch(x, x[:, -1])
        out[name] = dict(counts)
    return out


def throughput(folder: Path, batch: int, counts: Counter) -> dict:
    """The book's model (conf/ defaults), one whole-epoch fit() on full Nietzsche at `batch`, after a
    20-batch warm-up on a throwaway model (cuDNN handles, allocator): samples/s as the user waits."""
    import keras
    from omegaconf import OmegaConf

    from pipeline import config
    from pipeline.text.model import build
    cfg = config.compose_section([f"text.train.batch_size={batch}"])
    train, _, vocab = _load(folder / "nietzsche")
    x, y = windows(train, cfg.vectorize.maxlen, cfg.vectorize.step)
    order = np.random.default_rng([cfg.seed, 0]).permutation(len(x))  # the train stage's epoch-0 order
    x, y = x[order], y[order]

    def fresh():
        keras.utils.set_random_seed(cfg.seed)
        m = build(len(vocab), **OmegaConf.to_container(cfg.model))
        m.compile(optimizer=_optimizer(cfg.train), loss="sparse_categorical_crossentropy")
        return m

    fresh().fit(x[: 20 * batch], y[: 20 * batch], batch_size=batch, epochs=1, shuffle=False, verbose=0)
    model = fresh()
    counts.clear()
    started = time.perf_counter()
    history = model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    seconds = time.perf_counter() - started
    return {"batch": batch, "samples": len(x), "fit_seconds": seconds, "samples_per_s": len(x) / seconds,
            "loss": history.history["loss"][-1], "kernel_calls": dict(counts)}


def windows(ids: np.ndarray, maxlen: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """The book's (window, next character) pairs as arrays, for fit() from numpy on a machine
    without TensorFlow (whose tf.data `make_dataset` needs): the train stage's window starts,
    gathered here."""
    from pipeline.text.vectorize import window_starts

    starts = window_starts(len(ids), maxlen, step, None, 0, 0)
    return ids[starts[:, None] + np.arange(maxlen)], ids[starts + maxlen]


def held_out(model, val: np.ndarray, maxlen: int, step: int, batch: int = 1024) -> float:
    """The train stage's val_loss: the loss of the next character after each held-out window."""
    x, y = windows(val, maxlen, step)
    return float(model.evaluate(x, y, batch_size=batch, verbose=0))


def stage_loop(cfg, train: np.ndarray, val: np.ndarray, vocab: list[str], seconds: float = math.inf,
               epoch_samples: bool = False, label: str = "") -> dict:
    """The train stage's loop on the backend at hand, for `train.epochs` or `seconds` of training,
    whichever ends first: one fit() per epoch over every window in the stage's order for it (one
    shuffle per epoch from the seed), `train.targets` (last: the book's; all: every position),
    val_loss on the held-out windows after every epoch, the plateau rule, the best epoch's weights
    kept; with `epoch_samples`, the stage's per-epoch text (`train.epoch_samples`: its temperatures
    and length, from a held-out prompt, through the project's generator). Returns the history and
    the model (trained) and `exported` (its last-position twin) holding the best weights."""
    import keras
    from omegaconf import OmegaConf

    from pipeline.text.generator import for_model, held_out_prompt
    from pipeline.text.model import build
    from pipeline.text.vectorize import decode, window_starts

    keys, v, t = OmegaConf.to_container(cfg.model), cfg.vectorize, cfg.train
    maxlen, step, val_step, sequence = v.maxlen, v.step, v.val_step or v.step, t.targets == "all"
    keras.utils.set_random_seed(cfg.seed)
    model = build(len(vocab), sequence=sequence, **keys)
    model.compile(optimizer=_optimizer(t), loss="sparse_categorical_crossentropy")
    exported = build(len(vocab), **keys) if sequence else model
    if sequence:
        exported.compile(loss="sparse_categorical_crossentropy")
    temps = [float(x) for x in t.epoch_samples.temperatures]
    rng = np.random.default_rng(cfg.seed)  # the stage's callback draws its prompts and characters from this
    offsets = np.arange(maxlen)
    history, best, best_weights, wait, started = [], math.inf, None, 0, time.perf_counter()
    epoch = 0
    while True:
        starts = window_starts(len(train), maxlen, step, 0, cfg.seed, epoch)  # the train stage's order for the epoch
        x = train[starts[:, None] + offsets]
        y = train[starts[:, None] + offsets + 1] if sequence else train[starts + maxlen]
        t0 = time.perf_counter()
        loss = model.fit(x, y, batch_size=t.batch_size, epochs=1, shuffle=False, verbose=0).history["loss"][-1]
        fit_s = time.perf_counter() - t0
        if sequence:
            exported.set_weights(model.get_weights())
        val_loss = held_out(exported, val, maxlen, val_step)
        lr_now = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        history.append({"epoch": epoch + 1, "loss": loss, "val_loss": val_loss, "lr": lr_now, "fit_seconds": fit_s})
        if val_loss < best:
            best, best_weights, wait = val_loss, model.get_weights(), 0
        else:
            wait += 1
            if wait >= t.plateau.patience and lr_now > t.plateau.min_lr:  # the train stage's plateau rule
                model.optimizer.learning_rate.assign(max(lr_now * t.plateau.factor, t.plateau.min_lr))
                wait = 0
        if epoch_samples:
            t1 = time.perf_counter()
            out = for_model(exported, maxlen).generate(held_out_prompt(val, maxlen, rng), temps,
                                                      t.epoch_samples.length, rng, mode=t.epoch_samples.mode)
            history[-1].update(samples_seconds=time.perf_counter() - t1, sample=decode(out[len(temps) // 2][:60], vocab))
        history[-1]["seconds"] = time.perf_counter() - t0  # the epoch: fit, val_loss, samples
        print(json.dumps({"label": label, **history[-1]}), flush=True)
        epoch += 1
        elapsed = time.perf_counter() - started
        if epoch >= t.epochs or elapsed * (epoch + 1) / epoch > seconds:  # the train stage's time_limit rule
            break
    exported.set_weights(best_weights)
    if sequence:
        model.set_weights(best_weights)
    return {"history": history, "epochs": epoch, "train_seconds": elapsed, "best_val_loss": best,
            "best_epoch": min(history, key=lambda r: r["val_loss"])["epoch"], "model": model, "exported": exported}


def quality(folder: Path, recipe: str, seconds: float, out: Path) -> dict:
    """One quality recipe on tiny-shakespeare, as the train stage runs it (targets all), for its
    train.epochs or `seconds` of training, whichever ends first."""
    from omegaconf import OmegaConf

    from pipeline import config
    from pipeline.text.model import build

    cfg = config.compose_section(RECIPES[recipe])
    keys, v, t = OmegaConf.to_container(cfg.model), cfg.vectorize, cfg.train
    val_step = v.val_step or v.step
    assert cfg.corpus.name == "tinyshakespeare" and t.targets == "all", "a recipe trains on tiny-shakespeare, all targets"
    train, val, vocab = _load(folder / "tinyshakespeare")
    loop = stage_loop(cfg, train, val, vocab, seconds, label=recipe)
    model, exported = loop.pop("model"), loop.pop("exported")
    # nanoGPT's figure is the mean over every position of 256-character blocks; ours is the
    # character after each maxlen window. Both, for the best weights.
    blocks = np.arange(0, len(val) - 257, 128)
    xs, ys = val[blocks[:, None] + np.arange(256)], val[blocks[:, None] + np.arange(256) + 1]
    result = {"recipe": recipe, "overrides": RECIPES[recipe], "model": keys, "maxlen": v.maxlen, "step": v.step,
              "batch": t.batch_size, "learning_rate": t.learning_rate, **loop,
              "val_loss_maxlen60": held_out(exported, val, 60, val_step),
              "val_loss_all_positions_256": float(model.evaluate(xs, ys, batch_size=256, verbose=0)),
              "parameters": model.count_params()}
    clean = build(len(vocab), **keys)  # uncompiled: no torch optimizer in the file, so TensorFlow loads it
    clean.set_weights(exported.get_weights())
    clean.save(out / f"{recipe}.keras")
    (out / f"{recipe}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def default_pipeline(folder: Path, raw: Path | None, overrides: tuple[str, ...] = ()) -> dict:
    """The default pipeline's work (conf/ as it is, or with Hydra `overrides`) on this machine, stage by stage:
    fetch and vectorize (the real stages, from the corpus in the mirror folder `raw`; without it,
    the ids `prepare` wrote to DIR, and those two stages are not timed); the train stage's loop
    (`stage_loop`, its per-epoch samples included); the sample stage's work (the best model saved
    and loaded back, its prompt drawn from the seed, `sample.temperature` x `sample.length`
    characters in `sample.mode` through the project's generator, their measures, the held-out
    loss). Not the stages themselves, which need TensorFlow (their input pipeline) and MLflow."""
    import tempfile

    import keras

    from pipeline import config
    from pipeline.text import fetch, sample_metrics, vectorize
    from pipeline.text.config import temperatures
    from pipeline.text.generator import for_model, held_out_prompt
    from pipeline.text.vectorize import decode

    seconds: dict = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if raw is not None:
            cfg = config.compose_section([*overrides, f"text.fetch.mirror={raw}", f"text.paths.raw={tmp}/raw", f"text.paths.prepared={tmp}/prepared",
                                  f"text.paths.metrics={tmp}/metrics"])
            for name, stage in (("fetch", fetch), ("vectorize", vectorize)):
                t0 = time.perf_counter()
                stage.run(cfg)
                seconds[name] = time.perf_counter() - t0
            prepared = Path(cfg.paths.prepared)
        else:
            cfg = config.compose_section(list(overrides))
            prepared = folder / cfg.corpus.name
        train, val, vocab = _load(prepared)
        maxlen, s = cfg.vectorize.maxlen, cfg.sample

        t0 = time.perf_counter()
        loop = stage_loop(cfg, train, val, vocab, epoch_samples=True, label="default")
        loop["exported"].save(Path(tmp) / "model.keras")
        seconds["train"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        model = keras.saving.load_model(Path(tmp) / "model.keras", safe_mode=True)
        model.compile(loss="sparse_categorical_crossentropy")  # as the sample stage does, for its held-out loss
        rng = np.random.default_rng(cfg.seed)  # the sample stage's prompt and draws
        prompt = held_out_prompt(val, maxlen, rng)
        temps = temperatures(s.temperature)
        generator = for_model(model, maxlen)
        t1 = time.perf_counter()
        out = generator.generate(prompt, temps, s.length, rng, mode=s.mode, greedy=s.greedy)
        generate_s = time.perf_counter() - t1
        val_loss = held_out(model, val, maxlen, cfg.vectorize.val_step or cfg.vectorize.step, batch=512)
        sample_metrics.measure_all(generator, prompt, {str(t): (ids, decode(ids, vocab)) for t, ids in zip(temps, out)},
                                   decode(train, vocab))
        seconds["sample"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    history = [{k: r[k] for k in ("epoch", "loss", "val_loss", "lr", "fit_seconds", "samples_seconds", "seconds")}
               for r in loop["history"]]
    return {"overrides": list(overrides), "corpus": cfg.corpus.name, "epochs": loop["epochs"], "batch": cfg.train.batch_size,
            "stages_timed": list(seconds), "seconds": seconds, "best_val_loss": loop["best_val_loss"],
            "best_epoch": loop["best_epoch"], "sample_val_loss": val_loss, "sample_generate_seconds": generate_s,
            "sample_chars_per_second": len(temps) * s.length / generate_s, "history": history,
            "sample_t0.5": decode(out[temps.index(0.5)] if 0.5 in temps else out[0], vocab)[:200]}


def run(folder: Path, out: Path, seconds: float, recipes: list[str], speed: bool, pipeline: bool = False,
        raw: Path | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    counts = _kernel_counter()
    report: dict = {"date": datetime.date.today().isoformat(), "argv": sys.argv[1:], "environment": environment()}
    print(json.dumps(report["environment"]), flush=True)
    _, _, vocab = _load(folder / "nietzsche")
    report["kernels"] = kernels(len(vocab), counts)
    print("kernels:", json.dumps(report["kernels"]), flush=True)
    report["throughput"] = [throughput(folder, b, counts) for b in (128, 1024)] if speed else []
    for r in report["throughput"]:
        print("throughput:", json.dumps(r), flush=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    if pipeline:
        report["pipeline"] = default_pipeline(folder, raw)
        print("pipeline:", json.dumps({k: v for k, v in report["pipeline"].items() if k != "history"}), flush=True)
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
    if "pipeline" in report:
        r = report["pipeline"]
        print(f"  default pipeline ({r['epochs']} epochs at batch {r['batch']}): {r['seconds']['total']:.1f} s "
              f"({', '.join(f'{k} {v:.1f} s' for k, v in r['seconds'].items() if k != 'total')}); "
              f"best val_loss {r['best_val_loss']:.4f} at epoch {r['best_epoch']}")
    for r in report.get("quality", {}).values():
        print(f"  {r['recipe']}: best val_loss {r['best_val_loss']:.4f} at epoch {r['best_epoch']}/{r['epochs']} "
              f"in {r['train_seconds']:.0f} s; at maxlen 60 {r['val_loss_maxlen60']:.4f}; "
              f"all positions of 256 {r['val_loss_all_positions_256']:.4f}")


def _sample(folder: Path, name: str, parts: list[Path]) -> dict:
    """The model `run` brought back for recipe `name`, through the project's sample stage, here on
    TensorFlow: its held-out loss and its text at temperature 0.5 (600 characters)."""
    from pipeline import artifacts, config, tracking
    from pipeline.text import sample

    run_dir = ROOT / "bench/runs" / f"tinyshakespeare-gpu-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "models").mkdir(parents=True)
    (run_dir / "models/model.keras").write_bytes(b"".join(p.read_bytes() for p in parts))
    cfg = config.compose_section([*RECIPES[name], f"text.paths.prepared={folder / 'tinyshakespeare'}", f"text.paths.models={run_dir}/models",
                          f"text.paths.samples={run_dir}/samples", f"text.paths.metrics={run_dir}/metrics",
                          f"mlflow.tracking_uri=sqlite:///{run_dir}/mlflow.db", "text.sample.temperature=[0.5]", "text.sample.length=600"])
    uri = tracking.resolve_uri(cfg.mlflow.tracking_uri)
    experiment_id = tracking.connect(uri, cfg.mlflow.experiment)
    with tracking.run(None, experiment_id) as active:  # the run the sample stage logs to, as training's would be
        run_id = active.info.run_id
    vocab = json.loads((folder / "tinyshakespeare/vocab.json").read_text(encoding="utf-8"))
    artifacts.write_json(run_dir / "models/meta.json", {
        "vocab": vocab, "maxlen": cfg.vectorize.maxlen, "lowercase": cfg.vectorize.lowercase, "model": cfg.model.name,
        "mlflow": {"tracking_uri": tracking.redact(uri), "experiment_id": experiment_id, "run_id": run_id}})
    sampled = sample.run(cfg)
    text = (run_dir / "samples/text/temperature_0.5.txt").read_text(encoding="utf-8")
    return {"sample_val_loss": sampled["val_loss"], "prompt": sampled["prompt"],
            "sample_t0.5": text[len(sampled["prompt"]):].rstrip("\n")}


def record(outs: list[Path], folder: Path) -> None:
    """Here, on TensorFlow: what `run` wrote to each OUT, into bench/gpu.json, and one row per quality
    recipe into bench/quality.json (docs/text.md's quality table: `python bench/quality.py --docs`). A
    recipe whose model came back goes through the sample stage first, which must reproduce its
    held-out loss."""
    sys.path.insert(0, str(ROOT / "bench"))
    import quality as table

    measured = json.loads(GPU_RESULTS.read_text(encoding="utf-8")) if GPU_RESULTS.is_file() else {}
    results = table.load()
    for out in outs:
        report = json.loads((out / "gpu.json").read_text(encoding="utf-8"))
        env, recipes = report["environment"], report.get("quality", {})
        measured[f"{report['date']} {env['device']} {out.resolve().name}"] = report
        for name, q in recipes.items():
            row = {"row": f"tinyshakespeare/gpu-{name}", "corpus": "tinyshakespeare", "family": q["model"]["name"],
                   "overrides": RECIPES[name], "val_loss": q["best_val_loss"], "val_bpc": q["best_val_loss"] / math.log(2),
                   "val_loss_all_positions_256": q["val_loss_all_positions_256"], "best_epoch": q["best_epoch"],
                   "epochs": q["epochs"], "train_seconds": q["train_seconds"], "parameters": q["parameters"],
                   "machine": f"{env['device']}, Keras {env['keras']} on {env['backend']} {env.get('torch', '')} (bench/gpu.py)"
                              + (f", {len(recipes)} recipes sharing it" if len(recipes) > 1 else ""),
                   "date": report["date"], "sample_val_loss": None, "prompt": "", "sample_t0.5": ""}
            parts = sorted(out.glob(f"{name}.keras.part*"), key=lambda p: int(p.name.rsplit("part", 1)[1]))
            if parts:
                row.update(_sample(folder, name, parts))
                gap = abs(row["sample_val_loss"] - row["val_loss"])
                print(f"{name}: val_loss {row['val_loss']:.4f} on the GPU, {row['sample_val_loss']:.4f} from the sample stage here")
                if gap > 2e-3:
                    sys.exit(f"error: {name}: the sample stage's held-out loss differs from the GPU's by {gap:.4f}")
            results[row["row"]] = row
    table.save(results)
    tmp = GPU_RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(measured, indent=1) + "\n", encoding="utf-8")
    tmp.replace(GPU_RESULTS)
    print(f"recorded {len(outs)} run(s) in {GPU_RESULTS} and {table.RESULTS}")


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
    r.add_argument("--pipeline", action="store_true", help="also time the default pipeline's work (default_pipeline)")
    r.add_argument("--corpus-dir", type=Path, help="with --pipeline: a mirror folder holding the corpus, to time fetch and vectorize too")
    rec = sub.add_parser("record")
    rec.add_argument("folder", type=Path)
    rec.add_argument("outs", type=Path, nargs="+")
    q = sub.add_parser("quality")
    q.add_argument("folder", type=Path)
    q.add_argument("recipe", choices=sorted(RECIPES))
    q.add_argument("--seconds", type=float, required=True)
    q.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    if a.command == "prepare":
        prepare(a.folder)
    elif a.command == "record":
        record(a.outs, a.folder)
    elif a.command == "run":
        run(a.folder, a.out, a.quality_seconds, a.recipes, a.speed, a.pipeline, a.corpus_dir)
    else:
        quality(a.folder, a.recipe, a.seconds, a.out)


if __name__ == "__main__":
    main()
