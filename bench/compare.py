"""genlab against the book's code (bench/book_reference.py), measured in the same run, on the same
corpus and model size: vectorize, training, generation, and a no-op `dvc repro`.

    python bench/compare.py            # a table: figure, book, genlab, ratio, target, met
    python bench/compare.py --json     # one JSON object per figure instead
    python bench/compare.py --reps 5 --train-reps 3

Every measurement runs in a fresh process of its own (so peak RSS is that side's alone) and times
only the work, after imports and any warm-up. Cheap figures are the median of --reps runs: of
--reps processes for vectorize, of --reps runs in one process per side for generation. Training
at batch 128 is the book's whole one-epoch fit() against genlab's real pipeline: a throwaway copy of
the project, `dvc repro` with text.train.epochs=1, whose train stage reports its epoch time (validation,
per-epoch samples and checkpoint included), loss and peak RSS in metrics/train.json; the same copy
then times no-op repros. The two run in turn, --train-reps times each (median; default 1: each is a
full epoch). Batch 512 (reported, no target) runs once with and once without XLA, over the first
--batches-512 batches of an epoch (default 96; 0: whole epochs), its loss set against the book's
running loss after as many samples. The last row is the command's own wall time. Needs the Nietzsche
corpus: $GENLAB_DATA_DIR or data/raw/nietzsche.txt. Each extra --train-reps adds two training epochs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.machine import peak_rss_mib

ROOT = Path(__file__).resolve().parent.parent
MAXLEN, STEP, UNITS = 60, 3, 128  # the book's recipe; also genlab's defaults (checked in main)


def _corpus() -> Path:
    for path in (Path(os.environ.get("GENLAB_DATA_DIR", "/nonexistent")) / "nietzsche.txt",
                 ROOT / "data/raw/nietzsche.txt"):
        if path.is_file():
            return path
    sys.exit("error: no nietzsche.txt: set GENLAB_DATA_DIR to a folder holding it, or run `dvc repro` first")


# --- children: each prints one JSON line ---------------------------------------------------------

def child_vectorize(side: str) -> dict:
    path = _corpus()
    if side == "book":
        from bench import book_reference as book

        started = time.perf_counter()
        text = path.read_text(encoding="utf-8").lower()
        x, y, chars, _ = book.vectorize(text, MAXLEN, STEP)
        return {"seconds": time.perf_counter() - started, "windows": len(x), "bytes_out": x.nbytes + y.nbytes}
    import numpy as np

    from pipeline.text import vectorize as v

    out = Path(tempfile.mkdtemp())
    started = time.perf_counter()  # what the vectorize stage does: read, split, ids, write .npy
    text = v.read_corpus(path).lower()
    train_text, val_text = v.split(text, 0.1, MAXLEN, str(path))
    vocab = v.build_vocab(text)
    for name, part in (("train.npy", train_text), ("val.npy", val_text)):
        np.save(out / name, v.encode(part, vocab))
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in out.iterdir())
    shutil.rmtree(out)
    return {"seconds": seconds, "windows": v.count_windows(len(text), MAXLEN, STEP), "bytes_out": size}


def _phases(mark: int = 0):
    """A callback that notes when fit() starts training and when its epoch ends, so that the whole
    call splits into setup, the epoch (its steps) and the teardown after it; and, with `mark`, the
    epoch's running loss after its first `mark` batches. It is async-safe, so Keras still hands
    batch ends to its thread pool as it does with no batch hook: the fit() measured is the same."""
    import keras

    class Phases(keras.callbacks.Callback):
        begin = end = loss_at_mark = None
        async_safe = True

        def on_train_begin(self, logs=None):
            self.begin = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if mark and batch + 1 == mark:
                self.loss_at_mark = float(logs["loss"])

        def on_epoch_end(self, epoch, logs=None):
            self.end = time.perf_counter()

    return Phases()


def child_train(side: str, batch: int, jit: bool, batches: int = 0, mark: int = 0) -> dict:
    """One fit() at `batch`, timed whole: the whole epoch, or its first `batches` batches (genlab's
    only). `mark` (the book's only): also the running loss after that many batches."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(1337)
    text = _corpus().read_text(encoding="utf-8").lower()
    if side == "book":
        from bench import book_reference as book

        x, y, chars, _ = book.vectorize(text, MAXLEN, STEP)
        model = book.build_model(MAXLEN, len(chars), UNITS)
        phases = _phases(mark)
        started = time.perf_counter()  # the whole fit() call, as the user waits for it
        history = model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[phases])
        seconds, samples = time.perf_counter() - started, len(x)
    else:
        from pipeline import config, epochs
        from pipeline.text import train, vectorize as v
        from pipeline.machine import set_threads
        from pipeline.text.cpu import batch_parts, prepare_fused_lstm
        from pipeline.text.model import MODELS, Parallel

        cfg = config.compose_section([f"text.train.batch_size={batch}"])
        t = cfg.train
        # As the train stage runs it; XLA compiles the step into one program for all the threads, which
        # batch parts (one thread per op) would starve: 983 samples/s at batch 512 with 2 parts, 1,580 with 1.
        # XLA cannot compile the fused LSTM's loops (they run outside TensorFlow): with jit_compile it
        # compiles Keras's LSTM.
        parts = 1 if jit else batch_parts(t.batch_parts, cfg.threads, batch)
        set_threads(cfg.threads, parts)
        fused = not jit and prepare_fused_lstm(t.fused_lstm, cfg.model.name, t.targets, parts, cfg.threads)
        train_text, _ = v.split(text, cfg.vectorize.val_fraction, MAXLEN, "corpus")
        vocab = v.build_vocab(text)
        ids = v.encode(train_text, vocab)
        model = MODELS[cfg.model.name](len(vocab), cfg.model.units)
        model = Parallel(model, parts, fused) if parts > 1 or fused else model
        model.compile(optimizer=epochs.make_optimizer(t.optimizer, t.learning_rate, t.clipnorm),
                      loss="sparse_categorical_crossentropy", jit_compile=jit,
                      steps_per_execution=t.steps_per_execution)
        data = train.make_dataset(ids, MAXLEN, STEP, batch, t.shuffle_buffer, cfg.seed, 0)
        samples = v.count_windows(len(train_text), MAXLEN, STEP)
        if batches:
            data, samples = data.take(batches), min(samples, batches * batch)
        phases = _phases()
        started = time.perf_counter()  # the whole fit() call, dataset included
        history = model.fit(data, epochs=1, verbose=0, callbacks=[phases])
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "samples": samples, "samples_per_second": samples / seconds,
            "loss": float(np.asarray(history.history["loss"][-1])), "setup_seconds": phases.begin - started,
            "epoch_seconds": phases.end - phases.begin, "teardown_seconds": started + seconds - phases.end,
            **({"loss_at_mark": phases.loss_at_mark} if mark else {})}


def child_generate(side: str, length: int, reps: int) -> dict:
    """Characters per second of one stream and of 4 temperatures at once: the book's loop (window
    mode only: `predict` on the last maxlen characters), or genlab's generator in both modes. Each
    figure is the median of `reps` runs in this one process, after a warm-up (a process costs 10 s
    of TensorFlow start-up here, and generation keeps no state between runs); genlab's one stream
    and four streams run in turn, and <mode>_4_over_1 is the median of their time ratios
    (window_cells_4_over_1: the same for the window mode's cell updates alone). Flat keys:
    <mode>_<streams>_<what>."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(1337)  # speed does not depend on training: untrained weights
    text = _corpus().read_text(encoding="utf-8").lower()
    chars = sorted(set(text))
    seed_text = text[1000:1000 + MAXLEN]

    def timed(run) -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    if side == "book":
        from bench import book_reference as book

        model = book.build_model(MAXLEN, len(chars), UNITS)
        index = {c: i for i, c in enumerate(chars)}
        book.generate(model, seed_text, chars, index, MAXLEN, 2, 0.5)  # warm-up: the first predict traces
        seconds = statistics.median(timed(lambda: book.generate(model, seed_text, chars, index, MAXLEN, length, 0.5))
                                    for _ in range(reps))
        return {"window_1_chars_per_second": length / seconds, "window_1_seconds_per_stream_char": seconds / length}
    from pipeline.text.generator import Generator
    from pipeline.text.model import MODELS

    gen = Generator(MODELS["lstm"](len(chars), UNITS), MAXLEN)
    prompt = np.array([chars.index(c) for c in seed_text])
    temps = {1: [0.5], 4: [0.2, 0.5, 1.0, 1.2]}
    out = {}
    for mode in ("stateful", "window"):
        for n in temps:
            gen.generate(prompt, temps[n], 5, np.random.default_rng(0), mode=mode)  # warm-up
        # One stream and four taken in turn, so that a slow spell of the machine falls on both,
        # and their cost ratio is the median of the ratios within each turn.
        runs = [{n: timed(lambda: gen.generate(prompt, temps[n], length, np.random.default_rng(0), mode=mode))
                 for n in temps} for _ in range(reps)]
        for n in temps:
            seconds = statistics.median(run[n] for run in runs)
            out[f"{mode}_{n}_chars_per_second"] = n * length / seconds
            out[f"{mode}_{n}_seconds_per_stream_char"] = seconds / length
        out[f"{mode}_4_over_1"] = statistics.median(run[4] / run[1] for run in runs)
    # What no exact window mode can avoid: each character of each stream is fed to the maxlen
    # windows that read it. Their batched cell update alone (no sampling, no Python per character),
    # for the windows of four streams against one stream's, timed the same way.
    def cell_updates(n: int, count: int = 200):
        ids, state = np.tile(prompt[:n], MAXLEN), gen.zero_state(MAXLEN * n)
        for _ in range(count):
            _, state = gen.step(ids, state)

    for n in temps:
        cell_updates(n, 5)  # warm-up
    runs = [{n: timed(lambda: cell_updates(n)) for n in temps} for _ in range(reps)]
    out["window_cells_4_over_1"] = statistics.median(run[4] / run[1] for run in runs)
    return out


def child_dvc(reps: int) -> dict:
    """A throwaway git+DVC copy of the project; `dvc repro` of the default pipeline on full Nietzsche
    for one epoch, whose train stage reports its own peak RSS (metrics/train.json); then `dvc repro`
    with nothing changed, `reps` times (the median)."""
    work = Path(tempfile.mkdtemp())
    try:
        (work / ".dvc").mkdir()
        for name in ("conf", "pipeline", "dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore"):
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
        # Absolute: the stages run in `work`, where a relative GENLAB_DATA_DIR would name nothing.
        env = {**os.environ, "GENLAB_DATA_DIR": str(_corpus().parent.resolve()), "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        subprocess.run(["git", "init", "-q"], cwd=work, check=True)
        for command in (["pipeline.config", "text.train.epochs=1"], ["dvc", "repro"]):
            done = subprocess.run([sys.executable, "-m", *command], cwd=work, env=env, capture_output=True, text=True)
            if done.returncode:  # what failed, not only that it did
                raise RuntimeError(f"{' '.join(command)} in {work} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        trained = json.loads((work / "metrics/train.json").read_text(encoding="utf-8"))
        import numpy as np

        from pipeline.text.vectorize import count_windows

        samples = count_windows(len(np.load(work / "data/prepared/train.npy")), MAXLEN, STEP)
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=work, env=env, check=True,
                                 capture_output=True, text=True)
            times.append(time.perf_counter() - started)
            if "Running stage" in out.stdout:
                raise RuntimeError(f"a no-op dvc repro ran a stage:\n{out.stdout}")
        return {"seconds": statistics.median(times), "stage_peak_mib": trained["peak_rss_mib"],
                "stage_seconds_per_epoch": trained["seconds_per_epoch"], "samples": samples,
                "samples_per_second": samples / trained["seconds_per_epoch"], "loss": trained["loss"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)


CHILDREN = {"vectorize": child_vectorize, "train": child_train, "generate": child_generate, "dvc": child_dvc}


# --- parent -------------------------------------------------------------------------------------

def _child(name: str, *args) -> dict:
    """One measurement in a fresh process."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", name, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        sys.exit(f"error: {name} {args} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {name} {' '.join(map(str, args))} ({time.perf_counter() - started:.0f} s): {result}", file=sys.stderr, flush=True)
    return result


def _median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def measure(reps: int, name: str, *args) -> dict:
    """Median of `reps` fresh processes; `peak_mib` is the median peak RSS."""
    return _median([_child(name, *args) for _ in range(reps)])


def measure_pair(reps: int, book: tuple, genlab: tuple) -> tuple[dict, dict]:
    """The book's and genlab's runs (each: child name and arguments) taken in turn (book, genlab,
    book, genlab, ...), so that a slow spell of the machine falls on both sides; each side's median."""
    runs = [(_child(*book), _child(*genlab)) for _ in range(reps)]
    return _median([b for b, _ in runs]), _median([g for _, g in runs])


def cpu() -> str:
    """The CPU's model and whether it has AVX-512: TensorFlow's CPU kernels, and so the ratios, differ
    between CPUs of the same name with and without it."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.machine())
    return f"{name} ({'AVX-512' if ' avx512f' in info else 'no AVX-512'})"


def _version(*names: str) -> str:
    """An installed package's version, read from its metadata: importing TensorFlow only to ask
    would cost the parent 10 s of the benchmark's wall time."""
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def machine() -> str:
    return (f"{cpu()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"TensorFlow {_version('tensorflow', 'tensorflow-cpu')}, Keras {_version('keras')}, numpy {_version('numpy')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per figure")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the cheap figures (median)")
    parser.add_argument("--train-reps", type=int, default=1,
                        help="repetitions of the batch-128 training epoch, book and genlab in turn (median)")
    parser.add_argument("--batches-512", type=int, default=96,
                        help="batches of the batch-512 runs, at most 300 (0: a whole epoch each, about 2 minutes more)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 <= args.batches_512 <= 300:  # an epoch of full Nietzsche has 352 batches of 512
        parser.error(f"--batches-512 must be 0 (whole epochs) or 1-300, got {args.batches_512}")
    if args.child:
        name, *rest = args.child
        conv = [int(a) if a.lstrip("-").isdigit() else (a == "True") if a in ("True", "False") else a for a in rest]
        result = CHILDREN[name](*conv)
        print(json.dumps({**result, "peak_mib": peak_rss_mib()}))
        return

    from pipeline import config

    d = config.compose_section()
    assert (d.vectorize.maxlen, d.vectorize.step, d.model.units, d.train.batch_size) == (MAXLEN, STEP, UNITS, 128), \
        "genlab's defaults no longer match the book's recipe: update the benchmark"
    print(f"corpus {_corpus()}; measuring (each line: one fresh process) ...", file=sys.stderr, flush=True)
    began = time.perf_counter()
    r = args.reps
    figures = []

    def add(figure, book, genlab, ratio, target, met, unit):
        figures.append({"figure": figure, "book": book, "genlab": genlab, "ratio": ratio, "target": target,
                        "met": met, "unit": unit})

    vb, vg = measure(r, "vectorize", "book"), measure(r, "vectorize", "genlab")
    add("vectorize wall time", vb["seconds"], vg["seconds"], vb["seconds"] / vg["seconds"], ">= 30x faster",
        vb["seconds"] / vg["seconds"] >= 30, "s")
    add("vectorize peak RSS", vb["peak_mib"], vg["peak_mib"], vb["peak_mib"] / vg["peak_mib"], ">= 10x less",
        vb["peak_mib"] / vg["peak_mib"] >= 10, "MiB")

    # Training at batch 128: the book's whole fit() against genlab's real train stage, one epoch
    # under `dvc repro` (validation, per-epoch samples and checkpoint included: the epoch as the
    # user waits for it), taken in turn; the same throwaway repository then times no-op repros.
    mark = args.batches_512 * 512 // 128  # the book's batches for as many samples as batch 512's measure
    tb, dvc = measure_pair(args.train_reps, ("train", "book", 128, False, 0, mark), ("dvc", r))
    ratio = dvc["samples_per_second"] / tb["samples_per_second"]
    add("train samples/s, batch 128, whole epochs (book: fit(); genlab: the train stage's epoch)",
        tb["samples_per_second"], dvc["samples_per_second"], ratio, ">= 1.2x", ratio >= 1.2, "samples/s")
    for part, what in (("setup", "before its first step"), ("epoch", "its steps"), ("teardown", "after its last step")):
        add(f"book's fit() at batch 128: {what}", tb[f"{part}_seconds"], None, None, "report", None, "s")
    add("loss after 1 epoch, batch 128", tb["loss"], dvc["loss"], dvc["loss"] / tb["loss"],
        "within noise (|diff| <= 0.05)", abs(dvc["loss"] - tb["loss"]) <= 0.05, "nats")
    one_gb = 10**9 / 2**20  # in MiB
    add("train peak RSS, full Nietzsche (book: its fit() process; genlab: the train stage)", tb["peak_mib"],
        dvc["stage_peak_mib"], tb["peak_mib"] / dvc["stage_peak_mib"], f"genlab <= 1 GB ({one_gb:.1f} MiB)",
        dvc["stage_peak_mib"] <= one_gb, "MiB")
    add("no-op dvc repro", None, dvc["seconds"], None, "<= 10 s", dvc["seconds"] <= 10, "s")
    # Batch 512 (reported, no target) over the first --batches-512 batches of an epoch, the whole
    # fit() call timed: its throughput against the book's steps at 128 (the measure), and its
    # running loss against the book's after as many samples. Two whole epochs took 230 s of the
    # benchmark's 13 minutes; --batches-512 0 measures them whole, their loss after the epoch.
    n = args.batches_512
    for jit in (False, True):
        t5 = measure(1, "train", "genlab", 512, jit, n)
        label, steps = f"batch 512{' + jit_compile' if jit else ''}", tb["samples"] / tb["epoch_seconds"]
        span = f"its first {n} batches" if n else "a whole epoch"
        add(f"train samples/s, {label}, fit() of {span} (vs the book's steps at 128)", steps,
            t5["samples_per_second"], t5["samples_per_second"] / steps, "report", None, "samples/s")
        book_loss = tb["loss_at_mark"] if n else tb["loss"]
        add(f"loss after {f'{n * 512:,} samples' if n else '1 epoch'}, {label} (book: batch 128)", book_loss, t5["loss"],
            t5["loss"] / book_loss, "report", None, "nats")

    book_len, gen_len = 40, 2000
    gb, gg = _child("generate", "book", book_len, r), _child("generate", "genlab", gen_len, r)
    for mode, target in (("stateful", 1000), ("window", 30)):
        ratio = gg[f"{mode}_1_chars_per_second"] / gb["window_1_chars_per_second"]
        add(f"generate chars/s, one stream, {mode} mode", gb["window_1_chars_per_second"],
            gg[f"{mode}_1_chars_per_second"], ratio, f">= {target}x", ratio >= target, "chars/s")
        cost = gg[f"{mode}_4_over_1"]
        add(f"4 temperatures / 1 temperature, time, {mode} mode", None, cost, cost, "<= 1.5", cost <= 1.5, "x")
    cells = gg["window_cells_4_over_1"]
    add(f"4 temperatures / 1, window mode: its cell updates alone ({MAXLEN} windows a stream, the floor of exact windows)",
        None, cells, cells, "report", None, "x")
    minutes = (time.perf_counter() - began) / 60
    add("benchmark wall time (this command, all of the above)", None, minutes, None, "< 10 min", minutes < 10, "min")

    print(f"measured in {minutes:.1f} minutes", file=sys.stderr, flush=True)
    if args.json:
        for f in figures:
            print(json.dumps(f))
        return
    print(f"machine: {machine()}")
    print(f"corpus: {_corpus()} (maxlen {MAXLEN}, step {STEP}, LSTM({UNITS})); medians of {r} runs, {args.train_reps} per side for training at batch 128")
    fmt = lambda v: "-" if v is None else f"{v:,.4g}"  # noqa: E731
    rows = [("figure", "book", "genlab", "ratio", "target", "met")] + [
        (f["figure"] + f" [{f['unit']}]", fmt(f["book"]), fmt(f["genlab"]), fmt(f["ratio"]), f["target"],
         "-" if f["met"] is None else ("yes" if f["met"] else "NO")) for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for k, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main()
