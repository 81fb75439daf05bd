import hashlib
import os

import pytest

from pipeline.text import fetch
from tests.conftest import tiny

NIETZSCHE_SHA = "9cb94a5f1f8d1359e2e018fa67306eba4ae03942b8c44643eececded39e096df"
UNREACHABLE = "http://127.0.0.1:9/nietzsche.txt"  # the discard port on loopback: refused at once


def test_mirror_copy_is_verified_and_recorded(workdir, data_dir):
    result = fetch.run(tiny(workdir))
    dest = workdir / "data/raw/nietzsche.txt"
    assert dest.read_bytes() == (data_dir / "nietzsche.txt").read_bytes()
    assert result["sha256"] == NIETZSCHE_SHA == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert result["source"] == str(data_dir / "nietzsche.txt")
    assert (workdir / "metrics/fetch.json").exists()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_the_corpus_copy_follows_the_umask_like_every_other_output(workdir, umask):
    old = os.umask(umask)
    try:
        fetch.run(tiny(workdir))
    finally:
        os.umask(old)
    mode = lambda p: (workdir / p).stat().st_mode & 0o777  # noqa: E731
    assert mode("data/raw/nietzsche.txt") == mode("metrics/fetch.json") == 0o666 & ~umask


def test_file_in_place_with_right_hash_is_not_fetched_again(workdir):
    fetch.run(tiny(workdir))
    dest = workdir / "data/raw/nietzsche.txt"
    os.utime(dest, (1, 1))
    result = fetch.run(tiny(workdir, "text.fetch.mirror=/nonexistent"))
    assert result["source"] == "already in place"
    assert dest.stat().st_mtime == 1


def test_explicit_path_wins_and_any_text_file_is_a_corpus(workdir):
    own = workdir / "mine.txt"
    own.write_text("to be or not to be, that is the question\n" * 50, encoding="utf-8")
    result = fetch.run(tiny(workdir, "text/corpus=custom", f"text.corpus.path={own}"))
    assert (workdir / "data/raw/custom.txt").read_bytes() == own.read_bytes()
    assert result["sha256"] == hashlib.sha256(own.read_bytes()).hexdigest()


def test_checksum_mismatch_is_an_error_and_leaves_nothing(workdir):
    bad = workdir / "mirror" / "nietzsche.txt"
    bad.parent.mkdir()
    bad.write_text("not the corpus")
    with pytest.raises(fetch.FetchError, match="sha256 mismatch"):
        fetch.run(tiny(workdir, f"text.fetch.mirror={bad.parent}"))
    assert not any((workdir / "data/raw").iterdir())  # not even the temporary file


def test_no_network_and_no_copy_says_how_to_provide_the_file(workdir, monkeypatch):
    monkeypatch.delenv("GENLAB_DATA_DIR")
    with pytest.raises(fetch.FetchError, match="GENLAB_DATA_DIR") as e:
        fetch.run(tiny(workdir, f"text.corpus.url={UNREACHABLE}", "text.fetch.timeout=5"))
    assert "corpus.path" in str(e.value) and UNREACHABLE in str(e.value)
    assert not any((workdir / "data/raw").iterdir())


def test_missing_explicit_path_names_it(workdir):
    with pytest.raises(fetch.FetchError, match="corpus.path: /nope/x.txt"):
        fetch.run(tiny(workdir, "text/corpus=custom", "text.corpus.path=/nope/x.txt"))


def test_download_path_streams_and_verifies(workdir, data_dir, monkeypatch):
    """The URL code path, served from a file:// URL so no network is touched."""
    monkeypatch.delenv("GENLAB_DATA_DIR")
    url = (data_dir / "nietzsche.txt").as_uri()
    result = fetch.run(tiny(workdir, f"text.corpus.url={url}"))
    assert result["source"] == url and result["sha256"] == NIETZSCHE_SHA
