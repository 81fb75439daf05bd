"""The book's LSTM layer trained on a CPU through two compiled loops (numba) instead of
TensorFlow's per-step ops: the same equations as `keras.layers.LSTM` (gates i, f, c, o; sigmoid
and tanh), its own weights, and its gradients to float rounding.

Why: on a CPU, TensorFlow runs each of the 60 steps of a window as dozens of small ops (a
(64, 128) x (128, 512) product, then the gates), and its per-op costs (repacking the weights for
every product, scheduling, the gradient loop's stacks) take about half of a training step
(measured with perf on the book's model). Here the forward loop is one compiled function that
keeps each step's gate values, and the backward loop another that reuses them: a batch part of 64
windows went from 57-62 ms (Keras's LSTM, fit()'s step) to about 32 ms for the two loops.

Each position's input projection is a row lookup in a (vocab, 4 units) table: the embedding's
table times the LSTM's kernel, which for the book's one-hot (identity) table is the kernel itself
(one-hot x @ W is a row of W, exactly). The products go to BLAS (numba's np.dot), the gates run in
compiled loops with TensorFlow's own rational tanh (Eigen's), so outputs and gradients match
`keras.layers.LSTM` on a CPU to float rounding (the tests: outputs to 1e-5, gradients to 1e-4 of
the largest).

The forward loop's values for the backward loop stay in per-slot buffers here, not in
TensorFlow tensors: only the last output (batch, units) goes back to TensorFlow. A training step
runs each slot's forward, then its backward (the gradient needs the forward's output), and the
next step's forward reads the weights the optimizer wrote after that backward; a slot is one
batch part of one traced call, so concurrent parts never share buffers.

`step` is the same cell for generation: one character of a few streams (one per temperature),
which `pipeline.generator` calls instead of numpy's few small products and gate ops."""
from __future__ import annotations

import numpy as np
from numba import njit

F32 = np.float32
CLAMP = F32(7.90531110763549805)  # Eigen's: tanh is exactly +-1 in float32 beyond it

# numba's "numpy" error model: a division is not checked for zero, which is what lets the gate
# loops vectorise (Python's model adds a branch per element: 4x slower here).
FAST = {"nogil": True, "error_model": "numpy", "cache": True, "fastmath": {"contract", "arcp", "afn"}}


@njit(inline="always", error_model="numpy", fastmath={"contract", "arcp", "afn"})
def _tanh(x):
    """Eigen's float tanh (TensorFlow's on a CPU): a 13/6 rational function on [-7.9, 7.9]. NaN
    passes through (both comparisons are false for it), so a diverging run still shows NaN."""
    x = CLAMP if x > CLAMP else x
    x = -CLAMP if x < -CLAMP else x
    x2 = x * x
    p = x2 * F32(-2.76076847742355e-16) + F32(2.00018790482477e-13)
    p = x2 * p + F32(-8.60467152213735e-11)
    p = x2 * p + F32(5.12229709037114e-08)
    p = x2 * p + F32(1.48572235717979e-05)
    p = x2 * p + F32(6.37261928875436e-04)
    p = x2 * p + F32(4.89352455891786e-03)
    q = x2 * F32(1.19825839466702e-06) + F32(1.18534705686654e-04)
    q = x2 * q + F32(2.26843463243900e-03)
    q = x2 * q + F32(4.89352518554385e-03)
    return x * p / q


@njit(inline="always", error_model="numpy", fastmath={"contract", "arcp", "afn"})
def _sigmoid(x):
    return F32(0.5) * _tanh(F32(0.5) * x) + F32(0.5)


@njit(inline="always", error_model="numpy", fastmath={"contract", "arcp", "afn"})
def _cell(z, x, bias, a, c_prev, c, h, tc):
    """One row's LSTM update (training's forward loop and generation's step): from the recurrent
    product z and the input projection x plus bias, the gates a (i, f, c, o after their
    activations), the cell c, tc = tanh(c) and the output h. a may be z, and c may be c_prev: each
    element is read before it is written."""
    u = c.shape[0]
    # Simple loops over one gate each: each one vectorises.
    for k in range(2 * u):
        a[k] = _sigmoid(z[k] + x[k] + bias[k])
    for k in range(2 * u, 3 * u):
        a[k] = _tanh(z[k] + x[k] + bias[k])
    for k in range(3 * u, 4 * u):
        a[k] = _sigmoid(z[k] + x[k] + bias[k])
    for k in range(u):
        c[k] = a[u + k] * c_prev[k] + a[k] * a[2 * u + k]
    for k in range(u):
        tc[k] = _tanh(c[k])
    for k in range(u):
        h[k] = a[3 * u + k] * tc[k]


@njit(**FAST)
def forward(ids, kernel, bias, recurrent, H, C, A, TC, Z):
    """From the zero state over ids (batch, time): H[t + 1], C[t + 1] (time + 1, batch, units) the
    output and cell after position t, A (time, batch, 4 units) the gates i, f, c, o after their
    activations, TC = tanh(C[1:]). H[0] and C[0] must be zero. Z: (batch, 4 units) scratch.
    Arrays with 2 positions for H and C and 1 for A and TC keep nothing for a backward loop
    (inference): positions then alternate between them."""
    batch, time = ids.shape
    u = recurrent.shape[0]
    keep = A.shape[0] == time
    for t in range(time):
        now, nxt, at = (t, t + 1, t) if keep else (t % 2, (t + 1) % 2, 0)
        np.dot(H[now], recurrent, Z)
        for b in range(batch):
            _cell(Z[b], kernel[ids[b, t]], bias, A[at, b], C[now, b], C[nxt, b], H[nxt, b], TC[at, b])


@njit(**FAST)
def backward(dh_last, ids, H, C, A, TC, recurrent_t, dz, dh, dc, d_kernel, d_recurrent, d_bias):
    """The gradients of the kernel, recurrent kernel and bias given d loss / d h after the last
    position, from the forward loop's H, C, A, TC. recurrent_t: the recurrent kernel transposed
    (4 units, units), contiguous. dz (4 units,), dh and dc (batch, units): scratch. Each position's
    gate values in A are replaced by their gradients once read (the products need all of them at
    the end): a forward loop's values serve one backward loop."""
    time, batch, g = A.shape
    u = g // 4
    dh[:] = dh_last
    dc[:] = 0
    d_kernel[:] = 0
    for t in range(time - 1, -1, -1):
        for b in range(batch):
            a, c_prev, tc, dhb, dcb = A[t, b], C[t, b], TC[t, b], dh[b], dc[b]
            for k in range(u):
                dcb[k] += dhb[k] * a[3 * u + k] * (F32(1) - tc[k] * tc[k])
            for k in range(u):
                dz[k] = dcb[k] * a[2 * u + k] * a[k] * (F32(1) - a[k])
            for k in range(u):
                dz[u + k] = dcb[k] * c_prev[k] * a[u + k] * (F32(1) - a[u + k])
            for k in range(u):
                dz[2 * u + k] = dcb[k] * a[k] * (F32(1) - a[2 * u + k] * a[2 * u + k])
            for k in range(u):
                dz[3 * u + k] = dhb[k] * tc[k] * a[3 * u + k] * (F32(1) - a[3 * u + k])
            for k in range(u):
                dcb[k] *= a[u + k]
            row = d_kernel[ids[b, t]]  # the one-hot input: its gradient is a row update
            for k in range(g):
                row[k] += dz[k]
                a[k] = dz[k]
        if t > 0:
            np.dot(A[t], recurrent_t, dh)
    flat = A.reshape(time * batch, g)
    np.dot(H[:time].reshape(time * batch, u).T, flat, d_recurrent)
    d_bias[:] = flat.sum(axis=0)


# The few-streams step below sums each gate's product over the units in any order (reassoc), so
# that the sums vectorise; the training loops leave their sums to BLAS.
FEW = {"nogil": True, "error_model": "numpy", "cache": True, "fastmath": {"contract", "arcp", "afn", "reassoc", "nsz"}}


@njit(**FEW)
def step(ids, rows, bias, recurrent_t, h, c):
    """One position of the LSTM for a few streams at once (generation, one character each): ids
    (batch,), rows (vocab, 4 units) each id's input projection and bias (4 units,) as in
    `forward`, recurrent_t (4 units, units) the recurrent kernel transposed, h and c (units,
    batch) the state. Returns the new h and c, (units, batch).

    For a few columns BLAS reads the whole recurrent kernel once per column (4 columns took about
    4x one); here each of its rows is read once for every four streams and kept in cache for
    their four sums, so a stream adds less than its own product to the step."""
    g, u = recurrent_t.shape
    batch = ids.shape[0]
    ht = np.empty((batch, u), F32)
    ct = np.empty((batch, u), F32)
    z = np.empty((batch, g), F32)
    for k in range(u):
        for b in range(batch):
            ht[b, k] = h[k, b]
            ct[b, k] = c[k, b]
    b = 0
    while b + 4 <= batch:
        for j in range(g):
            r = recurrent_t[j]
            s0 = s1 = s2 = s3 = F32(0)
            for k in range(u):
                s0 += r[k] * ht[b, k]
                s1 += r[k] * ht[b + 1, k]
                s2 += r[k] * ht[b + 2, k]
                s3 += r[k] * ht[b + 3, k]
            z[b, j], z[b + 1, j], z[b + 2, j], z[b + 3, j] = s0, s1, s2, s3
        b += 4
    for b in range(b, batch):
        for j in range(g):
            r = recurrent_t[j]
            s0 = F32(0)
            for k in range(u):
                s0 += r[k] * ht[b, k]
            z[b, j] = s0
    tc = np.empty(u, F32)
    for b in range(batch):  # in place: the gates over z, the new cell over the old, h over the old h
        _cell(z[b], rows[ids[b]], bias, z[b], ct[b], ct[b], ht[b], tc)
    return np.ascontiguousarray(ht.T), np.ascontiguousarray(ct.T)


class Slot:
    """One batch part's buffers: the forward loop's values, kept for its backward loop (`keep`),
    or, for inference, only the current position's."""

    def __init__(self, keep: bool):
        self.keep, self.shape, self.room = keep, None, {}

    def _buffer(self, name: str, shape: tuple) -> np.ndarray:
        """A contiguous (shape) view of this slot's buffer `name`, grown, never shrunk: an epoch's
        smaller last batch reuses the memory instead of freeing and reallocating it twice an
        epoch, which fragmented the heap (RSS grew over the epochs)."""
        size = int(np.prod(shape))
        if self.room.get(name, np.empty(0, F32)).size < size:
            self.room[name] = np.empty(size, F32)
        return self.room[name][:size].reshape(shape)

    def run_forward(self, ids, kernel, bias, recurrent):
        batch, time = ids.shape
        u = recurrent.shape[0]
        steps = time if self.keep else 1
        self.shape = (batch, time, u)
        self.H = self._buffer("H", (steps + 1, batch, u))
        self.C = self._buffer("C", (steps + 1, batch, u))
        self.A = self._buffer("A", (steps, batch, 4 * u))
        self.TC = self._buffer("TC", (steps, batch, u))
        self.Z = self._buffer("Z", (batch, 4 * u))
        self.H[0] = self.C[0] = 0  # the zero state (H[0] and C[0] are never written by the loop in training)
        self.ids = np.ascontiguousarray(ids, dtype=np.int32)
        self.recurrent_t = np.ascontiguousarray(recurrent.T)
        forward(self.ids, kernel, bias, recurrent, self.H, self.C, self.A, self.TC, self.Z)
        return self.H[time if self.keep else time % 2].copy()  # a copy: the next step rewrites the buffer

    def run_backward(self, dh_last, vocab: int):
        batch, _, u = self.shape
        grads = np.empty((vocab, 4 * u), F32), np.empty((u, 4 * u), F32), np.empty(4 * u, F32)
        backward(np.ascontiguousarray(dh_last, dtype=F32), self.ids, self.H, self.C, self.A, self.TC, self.recurrent_t,
                 self._buffer("dz", (4 * u,)), self._buffer("dh", (batch, u)), self._buffer("dc", (batch, u)), *grads)
        return grads


def compile_loops() -> None:
    """Compile the loops, or load them from numba's cache, on tiny arrays of the types training and
    generation pass them."""
    vocab, u = 3, 2
    ids = np.zeros((1, 2), np.int32)
    weights = np.zeros((vocab, 4 * u), F32), np.zeros(4 * u, F32), np.zeros((u, 4 * u), F32)
    training = Slot(keep=True)
    training.run_forward(ids, *weights)
    training.run_backward(np.zeros((1, u), F32), vocab)
    Slot(keep=False).run_forward(ids, *weights)
    state = np.zeros((u, 1), F32), np.zeros((u, 1), F32)
    step(np.zeros(1, np.int64), weights[0], weights[1], np.zeros((4 * u, u), F32), *state)


def load_compiled() -> None:
    """The loops, compiled in a child process if numba's cache does not hold them yet, then loaded
    here from that cache. Compiling keeps memory in the process that compiles: after TensorFlow's
    import, compiling took RSS from 702 to 842 MiB, loading the cache to 759; the first train stage
    on a machine, which compiled them in its first step, peaked at 992.5 MiB on full Nietzsche
    against 912.8 with the cache warm (measured). This module imports no Keras, so the whole call
    took 2.0 s with the cache warm (16.6 s with it empty)."""
    import subprocess
    import sys

    # No check: if the child cannot compile, compiling here raises the error where it matters.
    subprocess.run([sys.executable, "-c", "from pipeline import lstm_cpu; lstm_cpu.compile_loops()"], check=False)
    compile_loops()


def lstm_last(ids, kernel, recurrent, bias, keep: bool = True):
    """keras.layers.LSTM(units)'s output after the last position of `ids` (batch, time) from the
    zero state, as a TensorFlow op with its gradient: kernel (vocab, 4 units), each id's input
    projection (the layer's kernel for one-hot input), recurrent (units, 4 units) and bias (4
    units,), the layer's variables or tensors computed from them. `keep`: False for inference,
    which keeps no values for a gradient (and has none)."""
    import tensorflow as tf

    slot = Slot(keep)  # this part's, in this traced call
    if not keep:
        h = tf.numpy_function(slot.run_forward, [ids, kernel, bias, recurrent], tf.float32, stateful=False)
        h.set_shape((None, recurrent.shape[0]))
        return tf.stop_gradient(h)
    vocab, units = kernel.shape[0], recurrent.shape[0]

    @tf.custom_gradient
    def op(kernel, recurrent, bias):
        h = tf.numpy_function(slot.run_forward, [ids, kernel, bias, recurrent], tf.float32, stateful=False)
        h.set_shape((None, units))

        def grad(dh):
            dk, dr, db = tf.numpy_function(lambda d: slot.run_backward(d, vocab), [dh], [tf.float32] * 3, stateful=False)
            dk.set_shape(kernel.shape)
            dr.set_shape(recurrent.shape)
            db.set_shape(bias.shape)
            return dk, dr, db

        return h, grad

    # Tensors, not the variables: reading them here is what the gradient tape records.
    return op(*(tf.convert_to_tensor(v) for v in (kernel, recurrent, bias)))
