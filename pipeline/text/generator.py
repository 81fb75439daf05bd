"""Generating text from a trained model, fast, with the book's temperature sampling.

`sample_next` is the book's formula (log p / T, renormalise, draw) made safe: it never returns
NaN for zero probabilities or tiny temperatures. `Generator` runs a trained recurrent model
(LSTM or GRU layers) in numpy one character at a time, for several streams at once (one per
temperature), in one of two modes:

- window (the book's semantics): each next character is predicted from the last `maxlen`
  characters, recomputed from a zero state, exactly `model(window)`; the windows of the next
  `maxlen` characters advance together, so a character costs one batched cell update, not maxlen;
- stateful: the LSTM state is carried from character to character, so each step costs one cell
  update. Identical to `window` while the text is shorter than maxlen; after that it conditions
  on the whole history instead of the last maxlen characters.

Calling `model.predict` once per character, as the book does, spends nearly all its time in
per-call overhead; the numpy cells give the same probabilities (to float32 rounding). For up to
FEW_STREAMS streams the first LSTM layer's step is one compiled call instead
(`pipeline.text.lstm_loops.step`, the same cell). Models
without a recurrent state (conv1d) get `WindowGenerator`: one compiled forward pass per
character, window mode only. `for_model` picks the right one.

Randomness is explicit: one `numpy.random.Generator` for all streams, or one per stream, in
which case each stream's text depends only on its own generator, not on what it was batched with.
An empty prompt starts from the LSTM's initial (zero) state: the first character is drawn from
what the model predicts before it has read anything.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np

MODES = ("window", "stateful")
# Up to this many streams an LSTM step is one compiled call (`lstm_loops.step`, which reads the
# recurrent kernel once for every four streams); above it (the window mode's maxlen windows per
# stream) numpy, whose BLAS product is then the faster one.
FEW_STREAMS = 8


def _uniform(rng, n: int) -> np.ndarray:
    if isinstance(rng, np.random.Generator):
        return rng.random(n)
    if len(rng) != n:
        raise ValueError(f"{len(rng)} random generators for {n} streams")
    return np.array([r.random() for r in rng])


def sample_next(probs, temperature, rng: np.random.Generator | Sequence[np.random.Generator]) -> np.ndarray:
    """Draw one index per row of `probs` (shape (V,) or (B, V)) after reweighting by `temperature`
    (a scalar or one per row), with `rng` (one generator, or one per row). Zeros, unnormalised
    rows and temperatures near 0 are all safe: as T -> 0 this is the argmax."""
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
    x = (1.0 - _uniform(rng, p.shape[0])) * cdf[:, -1]  # in (0, total]: never lands on a zero-mass index
    idx = (cdf < x[:, None]).sum(axis=-1)
    return idx if np.ndim(probs) > 1 else idx[0]


def held_out_prompt(val_ids: np.ndarray, maxlen: int, rng: np.random.Generator) -> np.ndarray:
    """The stages' default prompt (the sample stage's and each epoch's samples): `maxlen` ids from a
    place of the held-out text that `rng` draws, the generator that then draws the characters."""
    start = int(rng.integers(0, len(val_ids) - maxlen))
    return np.asarray(val_ids[start:start + maxlen], dtype=np.int64)


def sample_logits(logits, temperature, rng) -> np.ndarray:
    """`sample_next(softmax(logits), ...)` for a model's logits (batch, V), without the softmax:
    the same draw from one uniform per row, cheaper on the generation hot path. Non-finite logits
    go through `sample_next`, which is safe for anything."""
    z = np.asarray(logits, dtype=np.float64)
    if not np.isfinite(z).all():
        with np.errstate(all="ignore"):
            e = np.exp(z - np.nanmax(np.where(np.isfinite(z), z, -np.inf), axis=-1, keepdims=True))
        return sample_next(e, temperature, rng)
    t = np.asarray(temperature, dtype=np.float64)
    q = z - z.max(axis=-1, keepdims=True)
    q /= t[:, None] if t.ndim else t  # in place, and no broadcast_to: this runs once per character
    cdf = np.exp(q, out=q).cumsum(axis=-1)
    x = (1.0 - _uniform(rng, z.shape[0])) * cdf[:, -1]
    return (cdf < x[:, None]).sum(axis=-1)


class Sampler:
    """The sampling loop shared by the generators: `stream` and `generate` over a subclass's
    `window_logits(windows)` (the window mode) and, where the family has a recurrent state,
    `run(windows, state)` / `step(ids, state)` / `logits(h)` (the stateful mode)."""

    modes = MODES
    maxlen: int
    vocab_size: int

    def window_logits(self, windows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def window_probs(self, windows: np.ndarray) -> np.ndarray:
        """`model(windows)` for (batch, time) ids: the next-character distribution."""
        logits = self.window_logits(np.asarray(windows))
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def stream(self, prompt_ids, temperatures, length: int, rng, mode: str = "window",
               greedy: bool = False) -> Iterator[np.ndarray]:
        """Yield, `length` times, the next id of each stream (one per temperature) as it is drawn.
        `rng`: one generator for all streams or one per stream."""
        if mode not in self.modes:
            raise ValueError(f"mode must be one of {self.modes} for this model ({self.family}), got {mode!r}")
        temps = np.asarray(temperatures, dtype=np.float64)
        prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)

        def draw(logits):  # sampling from logits skips a softmax per character
            return logits.argmax(axis=-1) if greedy else sample_logits(logits, temps, rng)

        if mode == "window":
            yield from self.window_stream(prompt[-self.maxlen:], len(temps), length, draw)
            return
        # The stateful mode reads the whole prompt.
        streams = np.tile(prompt, (len(temps), 1))
        h, state = self.run(streams)
        logits = self.logits(h)
        for k in range(length):
            nxt = draw(logits)
            yield nxt
            if k + 1 == length:
                break
            h, state = self.step(nxt, state)
            logits = self.logits(h)

    def window_stream(self, prompt: np.ndarray, n: int, length: int, draw) -> Iterator[np.ndarray]:
        """The window mode for `n` streams after `prompt` (at most maxlen ids): each next id is
        `draw(the logits of model(the last maxlen ids))`. Here one forward pass of a whole window
        per character; `Generator` overrides it with a pipelined version."""
        streams = np.tile(prompt, (n, 1))
        for k in range(length):
            nxt = draw(self.window_logits(streams))
            yield nxt
            streams = np.concatenate([streams, nxt[:, None]], axis=1)[:, -self.maxlen:]

    def generate(self, prompt_ids, temperatures, length: int, rng, mode: str = "window",
                 greedy: bool = False, progress: bool = False) -> np.ndarray:
        """`length` new ids after `prompt_ids` for each temperature, all streams in one batch.
        Returns an array (len(temperatures), length). `progress`: show a progress line on a
        terminal's stderr once generation has taken more than two seconds."""
        out = np.empty((len(temperatures), length), dtype=np.int64)
        bar = Progress(length, "generating") if progress else None
        for k, nxt in enumerate(self.stream(prompt_ids, temperatures, length, rng, mode, greedy)):
            out[:, k] = nxt
            if bar:
                bar.update(k + 1)
        if bar:
            bar.close()
        return out


class Unsupported(ValueError):
    """The model has a layer the numpy generator does not implement."""


class _LstmLayer:
    """Keras's LSTM equations on (features, batch) arrays. Keras orders the gates i, f, c, o; they
    are reordered to i, f, o, c so that the three sigmoid gates are contiguous, and pre-scaled by 0.5
    (exact in floating point), since sigmoid(x) = 0.5 * tanh(x / 2) + 0.5: one in-place tanh then
    covers all four gates."""

    def __init__(self, kernel, recurrent, bias, table=None):
        u = self.units = recurrent.shape[0]
        order = np.r_[0:2 * u, 3 * u:4 * u, 2 * u:3 * u]
        scale = np.r_[np.full(3 * u, 0.5), np.ones(u)].astype(np.float32)
        # C order: fancy indexing leaves Fortran order, which makes small batched matmuls 10x slower.
        # Transposed, (gates, batch): each gate is then one contiguous block, not a strided column
        # slice per row, which halves the cost of a step for 4 streams.
        self.recurrent = np.ascontiguousarray((recurrent[:, order] * scale).T, dtype=np.float32)
        if table is not None:  # the first layer: an embedding row lookup replaces x @ W, bias folded in
            self.input_proj = np.ascontiguousarray((((table @ kernel) + bias)[:, order] * scale).T, dtype=np.float32)
            # A few streams (the stateful mode, one per temperature) take the compiled step instead,
            # with Keras's gate order and the weights untransformed. The compiled loops are loaded on
            # the first such step: the window mode's batches never load them.
            self.rows = np.ascontiguousarray(table @ kernel, dtype=np.float32)
            self.row_bias = np.ascontiguousarray(bias, dtype=np.float32)
            self.recurrent_t = np.ascontiguousarray(recurrent.T, dtype=np.float32)
            self.compiled_step = None
        else:
            self.kernel = np.ascontiguousarray((kernel[:, order] * scale).T, dtype=np.float32)
            self.bias = np.ascontiguousarray((bias[order] * scale)[:, None], dtype=np.float32)

    def zero_state(self, batch: int):
        return (np.zeros((self.units, batch), np.float32), np.zeros((self.units, batch), np.float32))

    def step(self, x: np.ndarray, state):
        """`x`: ids (batch,) for the first layer, else the layer below's output (features, batch)."""
        h, c = state
        if x.ndim == 1 and len(x) <= FEW_STREAMS:
            if self.compiled_step is None:
                from pipeline.text import lstm_cpu

                self.compiled_step = lstm_cpu.load_compiled()["step"]
            # Contiguous int64 ids, C-order states: one compiled signature (a column of a prompt is strided).
            ids = np.ascontiguousarray(x, dtype=np.int64)
            h, c = self.compiled_step(ids, self.rows, self.row_bias, self.recurrent_t, h, c)
            return h, (h, c)
        u = self.units
        z = self.recurrent @ h
        if x.ndim == 1:
            z += self.input_proj.take(x, axis=1)  # take: a quarter of the cost of fancy indexing
        else:
            z += self.kernel @ x
            z += self.bias
        np.tanh(z, out=z)  # in place, no temporaries: this runs once per character per window position
        gates = z[:3 * u]
        gates *= 0.5
        gates += 0.5
        c = gates[u:2 * u] * c + gates[:u] * z[3 * u:]
        h = gates[2 * u:] * np.tanh(c)
        return h, (h, c)


class _GruLayer:
    """Keras 3's GRU (reset_after=True): gates z, r and the candidate, with separate input and
    recurrent biases; h = z * h_prev + (1 - z) * tanh(x_h + r * (U_h h_prev + b_h))."""

    def __init__(self, kernel, recurrent, bias, table=None):
        u = self.units = recurrent.shape[0]
        bias = np.asarray(bias).reshape(2, 3 * u)
        self.recurrent = np.ascontiguousarray(recurrent.T, dtype=np.float32)
        self.recurrent_bias = np.ascontiguousarray(bias[1][:, None], dtype=np.float32)
        if table is not None:
            self.input_proj = np.ascontiguousarray(((table @ kernel) + bias[0]).T, dtype=np.float32)
        else:
            self.kernel = np.ascontiguousarray(kernel.T, dtype=np.float32)
            self.bias = np.ascontiguousarray(bias[0][:, None], dtype=np.float32)

    def zero_state(self, batch: int):
        return (np.zeros((self.units, batch), np.float32),)

    def step(self, x: np.ndarray, state):
        (h,) = state
        u = self.units
        xp = self.input_proj.take(x, axis=1) if x.ndim == 1 else self.kernel @ x + self.bias
        hp = self.recurrent @ h + self.recurrent_bias
        zr = xp[:2 * u] + hp[:2 * u]
        zr *= 0.5
        np.tanh(zr, out=zr)
        zr *= 0.5
        zr += 0.5  # sigmoid, as 0.5 * tanh(x / 2) + 0.5
        z, r = zr[:u], zr[u:]
        candidate = np.tanh(xp[2 * u:] + r * hp[2 * u:])
        h = z * h + (1.0 - z) * candidate
        return h, (h,)


class Generator(Sampler):
    """Numpy inference for the recurrent families (lstm, stacked_lstm, gru): the trained weights,
    no Keras call per character, both modes. Dropout is the identity at inference."""

    def __init__(self, model, maxlen: int):
        import keras

        layers = [la for la in model.layers if not isinstance(la, (keras.layers.InputLayer, keras.layers.Dropout))]
        embedding, *cells, dense = layers
        if not (isinstance(embedding, keras.layers.Embedding) and isinstance(dense, keras.layers.Dense) and cells
                and all(type(c) in (keras.layers.LSTM, keras.layers.GRU) for c in cells)):
            raise Unsupported(f"model {model.name!r}: the numpy generator runs an embedding, LSTM/GRU layers and a "
                              f"dense softmax, not {[type(la).__name__ for la in layers]}")
        table = embedding.get_weights()[0]
        self.layers = []
        for k, cell in enumerate(cells):
            kind = _LstmLayer if isinstance(cell, keras.layers.LSTM) else _GruLayer
            self.layers.append(kind(*cell.get_weights(), table=table if k == 0 else None))
        self.dense_w, self.dense_b = (np.ascontiguousarray(w, dtype=np.float32) for w in dense.get_weights())
        self.units = self.layers[-1].units
        self.vocab_size = self.dense_b.shape[0]
        self.maxlen = maxlen
        self.family = model.name

    def zero_state(self, batch: int):
        """One state per layer, each array stored transposed as (units, batch)."""
        return [layer.zero_state(batch) for layer in self.layers]

    def step(self, ids: np.ndarray, state):
        """One update of every layer for a batch of character ids. Returns the top layer's output
        h as (batch, units) and the new state."""
        x, new = ids, []
        for layer, s in zip(self.layers, state, strict=True):
            x, s = layer.step(x, s)
            new.append(s)
        return x.T, new

    def logits(self, h: np.ndarray) -> np.ndarray:
        return h @ self.dense_w + self.dense_b

    def run(self, windows: np.ndarray, state=None):
        """Feed (batch, time) ids from `state` (zero by default); return the last output and state."""
        state = state if state is not None else self.zero_state(len(windows))
        h = state[-1][0].T
        for t in range(windows.shape[1]):
            h, state = self.step(windows[:, t], state)
        return h, state

    def window_logits(self, windows: np.ndarray) -> np.ndarray:
        return self.logits(self.run(np.asarray(windows))[0])

    def window_stream(self, prompt: np.ndarray, n: int, length: int, draw) -> Iterator[np.ndarray]:
        """The window mode, pipelined: exactly `model(last maxlen ids)` for every character, at the
        cost of one cell update of maxlen windows per character instead of maxlen updates of one.

        The window that predicts position j reads positions max(0, j - maxlen) .. j - 1, from a zero
        state. All but the last of those are known before position j - 1 is drawn, so the maxlen
        windows of the next maxlen positions are carried side by side, each at its own offset: every
        new character is fed to all of them in one batched step, the one window it completes gives
        the next character's logits, and that window's slot restarts from zero as the window of the
        position maxlen further on. Slot j % maxlen, column slot * n + stream, holds window j."""
        w, m = self.maxlen, len(prompt)  # m <= maxlen: the stream passes the prompt's last maxlen ids
        if 4 * length < w:  # a few characters: filling the pipeline (up to maxlen steps) would cost more
            yield from super().window_stream(prompt, n, length, draw)
            return
        text = np.empty((n, m + length), dtype=np.int64)
        text[:, :m] = prompt
        state = self.zero_state(w * n)  # the windows that start reading at position 0
        pos = m  # the next position to draw
        if m == 0 and length:  # the window of position 0 is empty: the zero state's prediction
            nxt = draw(self.logits(np.zeros((n, self.units), np.float32)))
            yield nxt
            text[:, 0], pos = nxt, 1
        for p in range(m + length - 1):  # feed position p to every window that reads it
            if pos == m + length:
                break
            if p > 0:  # window p + maxlen starts reading at p, in the slot of window p, just completed
                cols = slice((p % w) * n, (p % w + 1) * n)
                for layer_state in state:
                    for a in layer_state:
                        a[:, cols] = 0.0
            h, state = self.step(np.tile(text[:, p], w), state)
            if p + 1 == pos:  # window pos has read its last position
                slot = pos % w
                nxt = draw(self.logits(h[slot * n:(slot + 1) * n]))
                yield nxt
                text[:, pos], pos = nxt, pos + 1


class WindowGenerator(Sampler):
    """Any model, the window mode only: one compiled forward pass of the Keras model per character
    for all streams at once (the book's semantics, without `predict`'s per-call overhead). The
    families without a recurrent state (conv1d) use it."""

    modes = ("window",)

    def __init__(self, model, maxlen: int):
        import tensorflow as tf

        self.forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        self.vocab_size = model.output_shape[-1]
        self.maxlen = maxlen
        self.family = model.name

    def window_logits(self, windows: np.ndarray) -> np.ndarray:
        probs = self.forward(np.asarray(windows, dtype=np.int32)).numpy().astype(np.float64)
        if probs.ndim == 3:  # a model that predicts after every position: the last one is next
            probs = probs[:, -1]
        with np.errstate(divide="ignore"):
            return np.log(probs)  # a zero probability is -inf: never drawn


def for_model(model, maxlen: int) -> Sampler:
    """The fastest generator for `model`: numpy for the recurrent families (both modes), one
    compiled call per character otherwise (window mode)."""
    try:
        return Generator(model, maxlen)
    except Unsupported:
        return WindowGenerator(model, maxlen)


class Progress:
    """A one-line progress bar on stderr, for a terminal only, shown after `delay` seconds so that
    quick work prints nothing."""

    def __init__(self, total: int, label: str, delay: float = 2.0, stream=None):
        self.total, self.label, self.delay = total, label, delay
        self.out = stream or sys.stderr
        self.started = self.last = time.perf_counter()
        self.shown = False
        self.enabled = self.out.isatty()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.started < self.delay or (now - self.last < 0.2 and done < self.total):
            return
        self.last, self.shown = now, True
        filled = int(30 * done / self.total)
        rate = done / (now - self.started)
        self.out.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} ({rate:,.0f}/s)")
        self.out.flush()

    def close(self) -> None:
        if self.shown:
            self.out.write("\n")
            self.out.flush()
