"""Stage vectorize: turn the corpus into character ids and a vocabulary.

Reads <paths.raw>/<corpus.name>.txt and `vectorize` (lowercase, max_chars, val_fraction, and
maxlen/step for the summary). Writes, under <paths.prepared>/: vocab.json (the sorted distinct
characters), train.npy and val.npy (the text as uint8 ids, uint16 when the vocabulary needs it;
val is the held-out tail). Windows are never written: `make_dataset` cuts them from the ids
in the input pipeline of the train stage (and of the sample stage's held-out loss).
Writes <paths.metrics>/vectorize.json: corpus length, vocabulary size, windows per split.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline import artifacts, config
from pipeline.machine import without_autotuner


class VectorizeError(ValueError):
    pass


def build_vocab(text: str) -> list[str]:
    return sorted(set(text))


def encode(text: str, vocab: list[str]) -> np.ndarray:
    """The ids of `text` in the smallest unsigned dtype that holds the vocabulary."""
    if len(vocab) > np.iinfo(np.uint16).max + 1:
        raise VectorizeError(f"{len(vocab)} distinct characters; character ids are uint16, which hold at most 65536")
    dtype = np.uint8 if len(vocab) <= 256 else np.uint16
    # A lookup table over code points, vectorised: no Python loop over the characters.
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.zeros(max(map(ord, vocab)) + 1, dtype=dtype)
    table[[ord(ch) for ch in vocab]] = np.arange(len(vocab))
    return table[codes]


def decode(ids, vocab: list[str]) -> str:
    return "".join(vocab[i] for i in ids)


def count_windows(n_chars: int, maxlen: int, step: int) -> int:
    """How many (window, next character) pairs the book's loop
    `for i in range(0, len(text) - maxlen, step)` makes from `n_chars` characters."""
    return len(range(0, n_chars - maxlen, step))


def window_starts(n_chars: int, maxlen: int, step: int, shuffle: int | None, seed: int, epoch: int) -> np.ndarray:
    """Where the windows of `epoch` start, in the order training reads them: every `step` characters,
    permuted by (seed, epoch) when `shuffle` is 0 (all windows); a buffer (shuffle > 0) is applied
    by the input pipeline on top of this order."""
    s = np.arange(count_windows(n_chars, maxlen, step), dtype=np.int64) * step
    return np.random.default_rng([seed, epoch]).permutation(s) if shuffle == 0 else s


def make_dataset(ids: np.ndarray, maxlen: int, step: int, batch_size: int, shuffle: int | None, seed: int,
                 epoch: int | Callable[[], int] = 0, targets: str = "last"):
    """(window, target) batches gathered from `ids` on the fly: the book's windows, never stored.
    `targets`: "last", the id after each window (the book's); "all", the id after every position
    of the window (the window shifted by one: maxlen targets per window, char-rnn's objective).
    `shuffle`: None for none, 0 for all windows, else a buffer size. The order depends only on
    (seed, epoch), so a resumed run sees the same batches as an uninterrupted one. `epoch` may be
    a function, read each time the dataset is iterated: one dataset then serves every epoch, each
    in its own order. Training builds it once so: a dataset built per epoch kept 1-3 MiB of the
    process's memory each time (measured; which of its parts stays is not)."""
    import tensorflow as tf

    n = count_windows(len(ids), maxlen, step)
    table = tf.constant(ids.astype(np.int32))
    offsets = tf.range(maxlen, dtype=tf.int64)

    def starts(e: int) -> np.ndarray:
        return window_starts(len(ids), maxlen, step, shuffle, seed, e)

    if callable(epoch):
        current = lambda: np.int64(epoch())  # noqa: E731
        ds = tf.data.Dataset.from_tensors(0).flat_map(lambda _: _epoch_starts(tf, current, starts, n, shuffle, seed))
        ds = ds.apply(tf.data.experimental.assert_cardinality(n))  # flat_map hides it from Keras's progress
    else:
        ds = tf.data.Dataset.from_tensor_slices(starts(epoch))
        if shuffle:
            ds = ds.shuffle(shuffle, seed=seed * 100_003 + epoch)
    if targets == "all":
        ds = ds.batch(batch_size).map(
            lambda s: (tf.gather(table, s[:, None] + offsets), tf.gather(table, s[:, None] + offsets + 1)))
    else:
        ds = ds.batch(batch_size).map(
            lambda s: (tf.gather(table, s[:, None] + offsets), tf.gather(table, s + maxlen)))
    # A batch is one small gather: one input thread and two batches ahead keep the model fed.
    return without_autotuner(ds)


def _epoch_starts(tf, current, starts, n: int, shuffle: int | None, seed: int):
    """The window starts of the epoch `current()` names, computed when an iterator starts: the same
    order as `make_dataset` with that epoch given as a number."""
    e = tf.numpy_function(current, [], tf.int64, stateful=True)
    ds = tf.data.Dataset.from_tensor_slices(tf.ensure_shape(tf.numpy_function(starts, [e], tf.int64, stateful=True), [n]))
    return ds.shuffle(shuffle, seed=seed * 100_003 + e) if shuffle else ds


def read_corpus(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data:  # valid UTF-8 may hold NULs, but no text does
        raise VectorizeError(f"{path}: a binary file, not text (a NUL byte at byte offset {data.index(0)})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise VectorizeError(f"{path}: not UTF-8 text (invalid byte 0x{data[e.start]:02x} at byte offset {e.start})") from None


def split(text: str, val_fraction: float, maxlen: int, source: str) -> tuple[str, str]:
    """Hold out the tail of the text; both parts must give at least one window."""
    n_val = int(round(len(text) * val_fraction))
    train, val = text[: len(text) - n_val], text[len(text) - n_val:]
    for part, name in ((train, "training"), (val, "validation")):
        if len(part) < maxlen + 1:
            raise VectorizeError(
                f"{source}: {len(text)} characters leave {len(part)} for {name}, fewer than "
                f"vectorize.maxlen+1 = {maxlen + 1}; use a longer corpus, a smaller maxlen or another val_fraction")
    return train, val


def normalize(text: str) -> tuple[str, dict[str, int]]:
    """`text` without a leading byte-order mark and with Windows (\\r\\n) and old Mac (lone \\r)
    line ends as \\n, and how many of each there were: otherwise they become characters of the
    vocabulary, and generated text gets stray carriage returns."""
    crlf = text.count("\r\n")
    counts = {"bom": int(text.startswith("\ufeff")), "crlf": crlf, "cr": text.count("\r") - crlf}
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n"), counts


def run(cfg) -> dict:
    cfg = config.section(cfg, "text")  # the text section with the shared keys (seed, mlflow, ...)
    v = cfg.vectorize
    raw = Path(cfg.paths.raw) / f"{cfg.corpus.name}.txt"
    # Errors name the user's own file where there is one: data/raw/ holds a byte-identical copy.
    source = Path(cfg.corpus.path) if cfg.corpus.path else raw
    try:
        text = read_corpus(raw)
    except VectorizeError as e:
        raise VectorizeError(str(e).replace(str(raw), str(source), 1)) from None
    normalized = None
    if v.normalize:
        text, normalized = normalize(text)
        if any(normalized.values()):
            print(f"vectorize: {source}: removed {normalized['bom']} byte-order mark(s), turned {normalized['crlf']} "
                  f"\\r\\n and {normalized['cr']} lone \\r into \\n (vectorize.normalize=false keeps them)")
    if v.lowercase:
        text = text.lower()
    if v.max_chars is not None:
        text = text[: v.max_chars]
    if not text:
        raise VectorizeError(f"{source}: the corpus is empty")
    train_text, val_text = split(text, v.val_fraction, v.maxlen, str(source))
    vocab = build_vocab(text)
    try:
        train_ids, val_ids = encode(train_text, vocab), encode(val_text, vocab)
    except VectorizeError as e:
        raise VectorizeError(f"{source}: {e}") from None
    out = Path(cfg.paths.prepared)
    for folder in (out, Path(cfg.paths.metrics)):
        artifacts.ensure_writable(folder)
    for name, ids in (("train.npy", train_ids), ("val.npy", val_ids)):
        with artifacts.atomic_path(out / name) as tmp:
            np.save(tmp, ids)
    artifacts.write_json(out / "vocab.json", vocab)
    summary = {
        "corpus": cfg.corpus.name,
        "characters": len(text),
        "vocab_size": len(vocab),
        "dtype": str(train_ids.dtype),
        "train_characters": len(train_text),
        "val_characters": len(val_text),
        "windows_all": count_windows(len(text), v.maxlen, v.step),
        "windows_train": count_windows(len(train_text), v.maxlen, v.step),
        "windows_val": count_windows(len(val_text), v.maxlen, v.step),
        **{f"normalized_{k}": n for k, n in (normalized or {}).items()},
    }
    artifacts.write_json(Path(cfg.paths.metrics) / "vectorize.json", summary)
    print("vectorize: " + json.dumps(summary))
    return summary


def main() -> None:
    try:
        run(config.load())
    except (config.ConfigError, VectorizeError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
