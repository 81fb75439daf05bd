import json

import numpy as np
import pytest

from pipeline.text import fetch, vectorize
from tests.conftest import tiny


def test_book_figures_on_full_nietzsche(data_dir):
    """DLwP §8.1: 200278 sequences of 60 characters, 57 distinct characters after lowercasing."""
    text = vectorize.read_corpus(data_dir / "nietzsche.txt").lower()
    assert len(text) == 600893
    vocab = vectorize.build_vocab(text)
    assert len(vocab) == 57
    assert vectorize.count_windows(len(text), 60, 3) == 200278
    assert len(range(0, len(text) - 60, 3)) == 200278  # the book's own loop


def _pairs(ids, maxlen, step, shuffle, targets="last", batch_size=7):
    """Every (window, target) pair the training input pipeline gives, in the order it gives them."""
    ds = vectorize.make_dataset(ids, maxlen, step, batch_size, shuffle, 5, 0, targets)
    return [(x.tolist(), y.tolist() if targets == "all" else int(y)) for xb, yb in ds.as_numpy_iterator()
            for x, y in zip(xb, yb)]


def test_training_windows_are_the_books_slices_of_the_text():
    """The book's loop, `for i in range(0, len(text) - maxlen, step)`: sentence text[i:i+maxlen],
    next_char text[i+maxlen]. The training pipeline must give exactly those pairs, in that order
    unshuffled, as the same set shuffled; with targets=all, the window shifted by one."""
    text = "the quick brown fox jumps over the lazy dog; it was not amused.\n" * 3
    vocab = vectorize.build_vocab(text)
    ids = vectorize.encode(text, vocab)
    for maxlen, step in [(10, 3), (7, 1), (12, 4), (len(text) - 1, 1)]:
        book = [(text[i:i + maxlen], text[i + maxlen]) for i in range(0, len(text) - maxlen, step)]
        got = [(vectorize.decode(x, vocab), vocab[y]) for x, y in _pairs(ids, maxlen, step, None)]
        assert got == book, (maxlen, step)
        shuffled = [(vectorize.decode(x, vocab), vocab[y]) for x, y in _pairs(ids, maxlen, step, 0)]
        assert sorted(shuffled) == sorted(book) and (len(book) < 3 or shuffled != book)
        shifted = [(vectorize.decode(x, vocab), vectorize.decode(y, vocab)) for x, y in _pairs(ids, maxlen, step, None, "all")]
        assert shifted == [(text[i:i + maxlen], text[i + 1:i + maxlen + 1]) for i in range(0, len(text) - maxlen, step)]


def test_a_shuffle_buffer_keeps_each_window_with_its_own_target():
    """Positions as ids (each id names where it stands), so a pair can be checked wherever the
    shuffle put it: the window starts on a multiple of step, and its target follows it."""
    ids = np.arange(230, dtype=np.uint8)
    pairs = _pairs(ids, 20, 3, 50)
    starts = [x[0] for x, _ in pairs]
    assert sorted(starts) == list(range(0, 230 - 20, 3)) and starts != sorted(starts)
    for x, y in pairs:
        assert x == list(range(x[0], x[0] + 20)) and y == x[0] + 20


def test_encode_decode_round_trip_and_dtypes():
    text = "Zarathustra spoke: «ἀρχή»\n"
    vocab = vectorize.build_vocab(text)
    assert vocab == sorted(set(text))
    ids = vectorize.encode(text, vocab)
    assert ids.dtype == np.uint8 and vectorize.decode(ids, vocab) == text
    big = "".join(chr(0x4E00 + i) for i in range(300))
    ids = vectorize.encode(big, vectorize.build_vocab(big))
    assert ids.dtype == np.uint16 and ids.max() == 299
    assert vectorize.decode(ids, vectorize.build_vocab(big)) == big


def test_run_writes_ids_vocab_and_summary(workdir):
    cfg = tiny(workdir)
    fetch.run(cfg)
    summary = vectorize.run(cfg)
    prepared = workdir / "data/prepared"
    vocab = json.loads((prepared / "vocab.json").read_text(encoding="utf-8"))
    train, val = np.load(prepared / "train.npy"), np.load(prepared / "val.npy")
    text = (workdir / "data/raw/nietzsche.txt").read_text(encoding="utf-8").lower()[:20000]
    assert train.dtype == np.uint8 and len(train) + len(val) == 20000
    assert len(val) == 2000  # the held-out tail, 10%
    assert vectorize.decode(train, vocab) + vectorize.decode(val, vocab) == text
    assert summary["vocab_size"] == len(vocab) == len(set(text))
    assert summary["windows_train"] == vectorize.count_windows(18000, 20, 3) == len(range(0, 18000 - 20, 3))
    assert json.loads((workdir / "metrics/vectorize.json").read_text()) == summary


def test_too_short_for_a_validation_window(workdir):
    own = workdir / "short.txt"
    own.write_text("a" * 200)
    cfg = tiny(workdir, "text/corpus=custom", f"text.corpus.path={own}", "text.vectorize.maxlen=30")
    fetch.run(cfg)
    with pytest.raises(vectorize.VectorizeError, match="validation.*maxlen"):
        vectorize.run(cfg)
    assert not (workdir / "data/prepared").exists()


def test_not_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(vectorize.VectorizeError, match="byte offset 3"):
        vectorize.read_corpus(path)


def test_tinyshakespeare_keeps_its_case_with_one_override(workdir):
    """`corpus=tinyshakespeare` alone gives char-rnn's and nanoGPT's 65 mixed-case characters."""
    cfg = tiny(workdir, "text/corpus=tinyshakespeare", "text.vectorize.max_chars=null")
    assert cfg.vectorize.lowercase is False
    fetch.run(cfg)
    vectorize.run(cfg)
    vocab = json.loads((workdir / "data/prepared/vocab.json").read_text())
    assert len(vocab) == 65 and "A" in vocab and "a" in vocab
    n = len(np.load(workdir / "data/prepared/train.npy")) + len(np.load(workdir / "data/prepared/val.npy"))
    assert n == 1115394


@pytest.mark.parametrize("shuffle", [None, 0, 50])
@pytest.mark.parametrize("targets", ["last", "all"])
def test_one_dataset_for_all_epochs_gives_each_epochs_batches(shuffle, targets):
    """Training iterates one dataset whose epoch is read when an iteration starts: each iteration
    must give exactly the batches of a dataset built for that epoch, and the epochs differ."""
    import tensorflow as tf

    tf.random.set_seed(3)  # as keras.utils.set_random_seed does in the train stage
    ids = np.random.default_rng(0).integers(0, 30, 3000).astype(np.uint8)
    current = {"epoch": 0}
    shared = vectorize.make_dataset(ids, 10, 3, 64, shuffle, 7, lambda: current["epoch"], targets)
    seen = {}
    for epoch in (0, 1, 2, 1):
        current["epoch"] = epoch
        got = list(shared.as_numpy_iterator())
        want = list(vectorize.make_dataset(ids, 10, 3, 64, shuffle, 7, epoch, targets).as_numpy_iterator())
        assert len(got) == len(want) == 16  # ceil(997 windows / 64)
        for (x, y), (wx, wy) in zip(got, want):
            np.testing.assert_array_equal(x, wx)
            np.testing.assert_array_equal(y, wy)
        seen[epoch] = np.concatenate([x[:, 0] for x, _ in got])
    assert sorted(seen[0].tolist()) == sorted(seen[1].tolist())  # the same windows, each once
    assert (seen[0] == seen[1]).all() == (shuffle is None)  # in a new order each epoch when shuffled


def test_a_bom_and_windows_line_ends_are_normalised_and_reported(workdir, capsys):
    """A leading BOM is dropped and \\r\\n and lone \\r become \\n, so none of them enters the
    vocabulary; the stage says so and records the counts; text.vectorize.normalize=false keeps the text."""
    own = workdir / "windows.txt"
    own.write_bytes(("\ufeff" + "line one\r\nline two\rline three\r\n" * 40).encode("utf-8"))
    cfg = tiny(workdir, "text/corpus=custom", f"text.corpus.path={own}", "text.vectorize.maxlen=10")
    fetch.run(cfg)
    summary = vectorize.run(cfg)
    vocab = json.loads((workdir / "data/prepared/vocab.json").read_text(encoding="utf-8"))
    assert "\ufeff" not in vocab and "\r" not in vocab and "\n" in vocab
    assert (summary["normalized_bom"], summary["normalized_crlf"], summary["normalized_cr"]) == (1, 80, 40)
    ids = np.concatenate([np.load(workdir / "data/prepared/train.npy"), np.load(workdir / "data/prepared/val.npy")])
    assert vectorize.decode(ids, vocab) == "line one\nline two\nline three\n" * 40
    assert f"{own}: removed 1 byte-order mark(s), turned 80 \\r\\n and 40 lone \\r into \\n" in capsys.readouterr().out
    assert json.loads((workdir / "metrics/vectorize.json").read_text())["normalized_crlf"] == 80

    kept = vectorize.run(tiny(workdir, "text/corpus=custom", f"text.corpus.path={own}", "text.vectorize.maxlen=10",
                              "text.vectorize.normalize=false"))
    vocab = json.loads((workdir / "data/prepared/vocab.json").read_text(encoding="utf-8"))
    assert "\ufeff" in vocab and "\r" in vocab and "normalized_crlf" not in kept


def test_errors_name_the_users_file_not_the_copy(workdir):
    own = workdir / "mine.txt"
    own.write_bytes("café".encode("latin-1") * 50)
    cfg = tiny(workdir, "text/corpus=custom", f"text.corpus.path={own}")
    fetch.run(cfg)
    with pytest.raises(vectorize.VectorizeError, match=rf"^{own}: not UTF-8 text"):
        vectorize.run(cfg)
