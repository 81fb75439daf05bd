"""Numbers that compare generated samples without reading them (the sample stage logs them).

- nll_per_char: mean negative log-likelihood (nats) of each generated character under the model
  at temperature 1, each from the window the book would use (the last maxlen characters);
- word_in_corpus: the fraction of generated words that occur in the training text;
- distinct_1 .. distinct_4: distinct word n-grams / all word n-grams (Li et al. 2016): repetition
  drives them down;
- longest_copy: the longest span of the sample that occurs verbatim in the training text
  (memorisation), in characters.
Only the generated characters count, never the prompt.
"""
from __future__ import annotations

import re

import numpy as np

WORD = re.compile(r"\w+")


def nll_per_char(generator, context_ids: np.ndarray, sample_ids: np.ndarray) -> float:
    """`context_ids`: what preceded the sample (the prompt); all windows go through the model as one batch."""
    ids = np.concatenate([np.asarray(context_ids, np.int64), np.asarray(sample_ids, np.int64)])
    start, maxlen = len(context_ids), generator.maxlen
    if start == 0:
        raise ValueError("nll_per_char needs at least one character of context before the sample")
    probs = np.empty((len(sample_ids), generator.vocab_size), np.float64)
    for length in np.unique(np.minimum(np.arange(start, len(ids)), maxlen)):  # windows shorter than maxlen at first
        rows = [k for k in range(len(sample_ids)) if min(start + k, maxlen) == length]
        windows = np.stack([ids[start + k - length:start + k] for k in rows])
        probs[rows] = generator.window_probs(windows)
    picked = probs[np.arange(len(sample_ids)), ids[start:]]
    return float(-np.mean(np.log(np.maximum(picked, 1e-30))))


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def word_in_corpus(sample: str, corpus_words: set[str]) -> float:
    found = words(sample)
    return sum(w in corpus_words for w in found) / len(found) if found else 0.0


def distinct_n(sample: str, n: int) -> float:
    w = words(sample)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def longest_copy(sample: str, corpus: str) -> int:
    """Length of the longest substring of `sample` found in `corpus`: one pass, each start only
    tries to beat the best length so far, so about len(sample) substring searches."""
    best = 0
    for i in range(len(sample)):
        while i + best < len(sample) and sample[i:i + best + 1] in corpus:
            best += 1
    return best


# The names `measure` returns, in order (the sweep summary's columns).
NAMES = ("nll_per_char", "word_in_corpus", "distinct_1", "distinct_2", "distinct_3", "distinct_4", "longest_copy")


def measure(generator, context_ids, sample_ids, sample: str, corpus: str, corpus_words: set[str]) -> dict:
    return {"nll_per_char": nll_per_char(generator, context_ids, sample_ids),
            "word_in_corpus": word_in_corpus(sample, corpus_words),
            **{f"distinct_{n}": distinct_n(sample, n) for n in range(1, 5)},
            "longest_copy": longest_copy(sample, corpus)}


def measure_all(generator, context_ids, samples: dict, corpus: str) -> dict:
    """`measure` for each of `samples` ({name: (ids, text)}), all after the same context, against
    the training text `corpus` (its words gathered once)."""
    corpus_words = set(words(corpus))
    return {name: measure(generator, context_ids, ids, text, corpus, corpus_words) for name, (ids, text) in samples.items()}
