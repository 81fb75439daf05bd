"""Generating text from a trained model, fast, with the book's temperature sampling.

`sample_next` is the book's formula (log p / T, renormalise, draw) made safe: it never returns
NaN for zero probabilities or tiny temperatures. `Generator` runs the trained LSTM in numpy one
character at a time, for several streams at once (one per temperature), in one of two modes:

- window (the book's semantics): each next character is predicted from the last `maxlen`
  characters, recomputed from a zero state, exactly `model(window)`;
- stateful: the LSTM state is carried from character to character, so each step costs one cell
  update. Identical to `window` while the text is shorter than maxlen; after that it conditions
  on the whole history instead of the last maxlen characters.

Calling `model.predict` once per character, as the book does, spends nearly all its time in
per-call overhead; the numpy cell gives the same probabilities (to float32 rounding).
"""
from __future__ import annotations

import numpy as np

MODES = ("window", "stateful")


def sample_next(probs, temperature, rng: np.random.Generator) -> np.ndarray:
    """Draw one index per row of `probs` (shape (V,) or (B, V)) after reweighting by `temperature`
    (a scalar or one per row). Zeros, unnormalised rows and temperatures near 0 are all safe:
    as T -> 0 this is the argmax."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    p = np.where(np.isfinite(p) & (p > 0), p, 0.0)
    empty = p.sum(axis=-1) == 0
    p[empty] = 1.0  # nothing usable in the row: uniform rather than NaN
    t = np.broadcast_to(np.asarray(temperature, dtype=np.float64), (p.shape[0],))
    with np.errstate(divide="ignore"):
        logp = np.log(p)
    # Subtract the max before dividing by T: the best entry becomes exactly 0/T = 0, so no
    # overflow or inf-inf for any T > 0, and q is a valid distribution with q[argmax] > 0.
    z = (logp - logp.max(axis=-1, keepdims=True)) / t[:, None]
    q = np.exp(z)
    cdf = np.cumsum(q, axis=-1)
    x = (1.0 - rng.random(p.shape[0])) * cdf[:, -1]  # in (0, total]: never lands on a zero-mass index
    idx = (cdf < x[:, None]).sum(axis=-1)
    return idx if np.ndim(probs) > 1 else idx[0]


def _sigmoid(x):
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # no overflow warnings for large |x|


class Generator:
    """Numpy inference for the `lstm` family: the trained weights, no Keras call per character."""

    def __init__(self, model, maxlen: int):
        emb = model.get_layer("one_hot").get_weights()[0]
        kernel, recurrent, bias = model.get_layer("lstm").get_weights()
        self.input_proj = (emb @ kernel).astype(np.float32)  # one-hot row lookup replaces x @ W
        self.recurrent, self.bias = recurrent.astype(np.float32), bias.astype(np.float32)
        self.dense_w, self.dense_b = (w.astype(np.float32) for w in model.get_layer("next_char").get_weights())
        self.units = recurrent.shape[0]
        self.maxlen = maxlen

    def zero_state(self, batch: int):
        return (np.zeros((batch, self.units), np.float32), np.zeros((batch, self.units), np.float32))

    def step(self, ids: np.ndarray, state):
        """One LSTM cell update (Keras gate order i, f, c, o) for a batch of character ids."""
        h, c = state
        z = self.input_proj[ids] + h @ self.recurrent + self.bias
        i, f, g, o = np.split(z, 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        return h, (h, c)

    def probs(self, h: np.ndarray) -> np.ndarray:
        logits = h @ self.dense_w + self.dense_b
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def run(self, windows: np.ndarray, state=None):
        """Feed (batch, time) ids from `state` (zero by default); return the last output and state."""
        state = state if state is not None else self.zero_state(len(windows))
        h = state[0]
        for t in range(windows.shape[1]):
            h, state = self.step(windows[:, t], state)
        return h, state

    def window_probs(self, windows: np.ndarray) -> np.ndarray:
        """`model(windows)` for (batch, time) ids: the next-character distribution."""
        return self.probs(self.run(np.asarray(windows))[0])

    def generate(self, prompt_ids, temperatures, length: int, rng: np.random.Generator,
                 mode: str = "window", greedy: bool = False) -> np.ndarray:
        """`length` new ids after `prompt_ids` for each temperature, all streams in one batch.
        Returns an array (len(temperatures), length)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if len(prompt_ids) == 0:
            raise ValueError("the prompt is empty: give at least one character")
        temps = np.asarray(temperatures, dtype=np.float64)
        streams = np.tile(np.asarray(prompt_ids, dtype=np.int64)[-self.maxlen:], (len(temps), 1))
        out = np.empty((len(temps), length), dtype=np.int64)
        h, state = self.run(streams)  # stateful mode primes on the same (last maxlen) characters
        for k in range(length):
            p = self.probs(h)
            nxt = p.argmax(axis=-1) if greedy else sample_next(p, temps, rng)
            out[:, k] = nxt
            if k + 1 == length:
                break
            if mode == "stateful":
                h, state = self.step(nxt, state)
            else:
                streams = np.concatenate([streams, nxt[:, None]], axis=1)[:, -self.maxlen:]
                h, _ = self.run(streams)
        return out
