"""The quality table: model family x corpus x held-out loss x bits per character x training time x
machine, measured by running the real stages, never typed by hand.

    python bench/quality.py --list                         # the rows it knows
    python bench/quality.py nietzsche/book nietzsche/gru   # measure these rows (each minutes to hours)
    python bench/quality.py --docs                         # rewrite docs/text.md's table from what was measured
    python bench/quality.py tinyshakespeare/quality --set text.train.time_limit=1200   # with an extra override

Each row runs fetch, vectorize, train and sample in a fresh process, in its own folder under
bench/runs/<corpus>-<row>/ (not tracked, emptied first), with the row's Hydra overrides on top of conf/. The
equal-time rows (`time_limit: book`) get `train.time_limit` set to the measured training time of
the same corpus's book row, which therefore runs first. Every measured row is kept, with its
machine and date, in bench/quality.json; `python bench/gpu.py record` adds the rows trained on a
GPU machine without TensorFlow (tinyshakespeare/gpu-*), checked by the sample stage here;
--docs (or its old name --readme) renders that file into docs/text.md between the quality-table markers, with the text the
best model of each corpus wrote at temperature 0.5. Needs the corpora: $GENLAB_DATA_DIR.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from compare import cpu  # bench/compare.py, beside this script: the CPU's model and AVX-512 or not

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench/quality.json"
RUNS = ROOT / "bench/runs"
START, END = "<!-- quality-table:start -->", "<!-- quality-table:end -->"

# corpus/row -> (Hydra overrides, time limit). "book" is the book's recipe (conf/ defaults: LSTM(128),
# 10 epochs); the others train for the book row's measured time, so the comparison is at equal time.
ROWS = {
    "nietzsche/book": ([], None),
    "nietzsche/quality": (["experiment=quality"], "book"),
    "nietzsche/gru": (["text/model=gru"], "book"),
    "nietzsche/stacked_lstm": (["text/model=stacked_lstm"], "book"),
    "nietzsche/conv1d": (["text/model=conv1d"], "book"),
    "tinyshakespeare/book": (["text/corpus=tinyshakespeare"], None),
    "tinyshakespeare/quality": (["experiment=quality_tinyshakespeare"], None),
}


def machine() -> str:
    import tensorflow as tf

    gpus = [tf.config.experimental.get_device_details(d).get("device_name", d.name)
            for d in tf.config.list_physical_devices("GPU")]
    where = ", ".join(gpus) if gpus else f"{os.cpu_count()}-core {cpu()}"
    return f"{where}, TF {tf.__version__}"


def child(row: str, overrides: list[str]) -> dict:
    """The four stages of `row` in its folder; what they measured, as one JSON-able dict."""
    from pipeline import config
    from pipeline.text import fetch, sample, train, vectorize

    folder = RUNS / row.replace("/", "-")
    # From nothing: a checkpoint that an interrupted measurement left would be resumed, and the
    # training time would leave out the epochs it holds.
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.chdir(folder)
    corpus = row.split("/")[0]
    cfg = config.compose_section([f"text/corpus={corpus}", *overrides, f"mlflow.tracking_uri=sqlite:///{folder}/mlflow.db",
                          "text.sample.temperature=[0.5]", "text.sample.length=600"])
    for stage in (fetch, vectorize):
        stage.run(cfg)
    trained = train.run(cfg)
    sampled = sample.run(cfg)
    return {"row": row, "corpus": corpus, "family": cfg.model.name, "overrides": overrides,
            "val_loss": trained["best_val_loss"], "val_bpc": trained["val_bpc"], "sample_val_loss": sampled["val_loss"],
            "best_epoch": trained["best_epoch"], "epochs": trained["epochs"], "train_seconds": trained["seconds"],
            "parameters": trained["parameters"], "stopped": trained["stopped"], "machine": machine(),
            "date": datetime.date.today().isoformat(), "prompt": sampled["prompt"],
            "sample_t0.5": (folder / "samples/text/temperature_0.5.txt").read_text(encoding="utf-8")[len(sampled["prompt"]):].rstrip("\n")}


def load() -> dict:
    return json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {}


def save(results: dict) -> None:
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(RESULTS)


def measure(row: str, results: dict, extra: list[str]) -> dict:
    overrides, limit = ROWS[row]
    overrides = [*overrides, *extra]
    if limit == "book":
        book = results.get(f"{row.split('/')[0]}/book")
        if book is None:
            sys.exit(f"error: {row} trains for the book row's time: measure {row.split('/')[0]}/book first")
        overrides.append(f"text.train.time_limit={book['train_seconds']:.0f}")
    started = time.perf_counter()
    out = RUNS / f"{row.replace('/', '-')}.json"
    out.unlink(missing_ok=True)
    # The stages' own progress shows on the terminal; the result comes back in a file.
    proc = subprocess.run([sys.executable, __file__, "--child", row, str(out), *overrides], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    if proc.returncode != 0:
        sys.exit(f"error: row {row} failed (exit {proc.returncode}); its output is above")
    result = json.loads(out.read_text(encoding="utf-8"))
    print(f"{row}: val_loss {result['val_loss']:.4f} ({result['val_bpc']:.3f} bits/char) in "
          f"{result['train_seconds'] / 60:.1f} min of training, {time.perf_counter() - started:.0f} s in all", flush=True)
    return result


def table(results: dict) -> str:
    lines = [("| corpus | row | family | overrides | val loss (nats/char) | bits/char | the sample stage's val loss | "
              "best epoch / epochs | training time | parameters | machine | measured |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(results, key=lambda k: (results[k]["corpus"], results[k]["val_loss"])):
        r = results[key]
        lines.append(f"| {r['corpus']} | {key.split('/')[1]} | {r['family']} | `{' '.join(r['overrides']) or '(defaults)'}` | "
                     f"{r['val_loss']:.4f} | {r['val_bpc']:.3f} | "
                     f"{'-' if r.get('sample_val_loss') is None else format(r['sample_val_loss'], '.4f')} | {r['best_epoch']} / {r['epochs']} | "
                     f"{r['train_seconds'] / 60:.1f} min | {r['parameters']:,} | {r['machine']} | {r['date']} |")
    out = ["\n".join(lines), ""]
    for corpus in sorted({r["corpus"] for r in results.values()}):
        best = min((r for r in results.values() if r["corpus"] == corpus), key=lambda r: r["val_loss"])
        book = results.get(f"{corpus}/book")
        if book and best is not book:
            out.append(f"On {corpus}, {best['row']} beats the book's recipe by {book['val_loss'] - best['val_loss']:.4f} nats "
                       f"per character ({book['val_loss']:.4f} to {best['val_loss']:.4f}) in "
                       f"{best['train_seconds'] / 60:.1f} against {book['train_seconds'] / 60:.1f} minutes of training.\n")
        out.append(f"The best {corpus} model ({best['row']}) at temperature 0.5, after the held-out prompt "
                   f"in brackets:\n\n```\n[{best['prompt']}]{best['sample_t0.5']}\n```\n")
    return "\n".join(out)


def write_docs(results: dict) -> None:
    readme = ROOT / "docs" / "text.md"
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        sys.exit(f"error: {readme} has no {START} ... {END} block to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table(results)}\n{END}{tail}", encoding="utf-8")
    print(f"wrote the quality table ({len(results)} rows) into {readme}")


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--child":
        result = child(sys.argv[2], sys.argv[4:])
        Path(sys.argv[3]).write_text(json.dumps(result), encoding="utf-8")
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="*", help=f"rows to measure, of: {', '.join(ROWS)}")
    parser.add_argument("--list", action="store_true", help="list the rows and their overrides")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra Hydra override for the rows measured now (shown in the table), e.g. text.train.time_limit=1200")
    parser.add_argument("--docs", "--readme", dest="docs", action="store_true",
                        help="rewrite docs/text.md's quality table from bench/quality.json")
    args = parser.parse_args()
    if args.list:
        for row, (overrides, limit) in ROWS.items():
            print(f"{row:26} {' '.join(overrides) or '(defaults)'}{'  + text.train.time_limit=<book row>' if limit else ''}")
        return
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        sys.exit(f"error: unknown rows {unknown}; --list shows them")
    results = load()
    for row in args.rows:
        results[row] = measure(row, results, args.set)
        save(results)  # after every row: a long session keeps what it measured
    if args.docs:
        write_docs(results)
    elif not args.rows:
        print(table(results) if results else "nothing measured yet: name rows to measure (--list)")


if __name__ == "__main__":
    main()
