"""The book's LSTM layer trained on a CPU through two compiled loops (numba, `pipeline.text.lstm_loops`)
instead of TensorFlow's per-step ops: the same equations as `keras.layers.LSTM` (gates i, f, c,
o; sigmoid and tanh), its own weights, and its gradients to float rounding.

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
which `pipeline.text.generator` calls instead of numpy's few small products and gate ops.

The loops are compiled once per machine, ahead of time, into a small extension module that this
process loads without numba (`load_compiled`: numba and LLVM would hold about 100 MB of it);
numba's JIT is the fallback where that cannot be built."""
from __future__ import annotations

import os
import sys
import sysconfig
import threading
from pathlib import Path

import numpy as np

F32 = np.float32

# Each loop's one signature (pipeline.text.lstm_loops): the dtype and dimensions of each argument, all
# C-contiguous, and the result. Compiled ahead of time, a loop reads its arguments as these types
# whatever they are (a wrong one crashes the process), so every call is checked against them first.
SIGNATURES = {
    "forward": ((np.int32, 2), (F32, 2), (F32, 1), (F32, 2), (F32, 3), (F32, 3), (F32, 3), (F32, 3), (F32, 2)),
    "backward": ((F32, 2), (np.int32, 2), (F32, 3), (F32, 3), (F32, 3), (F32, 3), (F32, 2), (F32, 1),
                 (F32, 2), (F32, 2), (F32, 2), (F32, 2), (F32, 1)),
    "step": ((np.int64, 1), (F32, 2), (F32, 1), (F32, 2), (F32, 2), (F32, 2)),
}
RESULTS = {"forward": "void", "backward": "void", "step": "UniTuple(f4[:, ::1], 2)"}
MODULE = "_lstm_cpu_loops"  # the extension module's name


def numba_signatures() -> dict[str, str]:
    """SIGNATURES in numba's notation: "void(i4[:, ::1], f4[:, ::1], ...)"."""
    codes = {np.int32: "i4", np.int64: "i8", F32: "f4"}

    def array(dtype, ndim: int) -> str:
        return codes[dtype] + "[" + ", ".join([":"] * (ndim - 1) + ["::1"]) + "]"

    return {name: f"{RESULTS[name]}({', '.join(array(*a) for a in args)})" for name, args in SIGNATURES.items()}


def _checked(loop, name: str):
    """`loop` behind a check of its arguments against SIGNATURES[name], which names the first wrong one."""
    expected = [(np.dtype(t), n) for t, n in SIGNATURES[name]]

    def refuse(args) -> None:
        """Raise for the first argument that is not what `loop` reads (nothing if all are)."""
        if len(args) != len(expected):
            raise TypeError(f"lstm_cpu.{name} takes {len(expected)} arrays, not {len(args)}")
        for k, (arg, (dtype, ndim)) in enumerate(zip(args, expected)):
            if not (isinstance(arg, np.ndarray) and arg.dtype == dtype and arg.ndim == ndim and arg.flags.c_contiguous):
                got = (f"a{'' if arg.flags.c_contiguous else ' non-contiguous'} {arg.dtype} array of {arg.ndim}"
                       if isinstance(arg, np.ndarray) else type(arg).__name__)
                raise TypeError(f"lstm_cpu.{name}: argument {k} must be a C-contiguous {dtype} array of {ndim} "
                                f"dimension(s), not {got}")

    def call(*args):
        # The quick test first (generation calls `step` once a character): numpy's own dtype objects
        # are shared, so `is` holds for the right ones; anything it doubts, refuse() decides.
        if len(args) != len(expected):
            refuse(args)
        for arg, (dtype, ndim) in zip(args, expected):
            if type(arg) is not np.ndarray or arg.dtype is not dtype or arg.ndim != ndim or not arg.flags.c_contiguous:
                refuse(args)
                break
        return loop(*args)

    return call


def _machine_key() -> str:
    """What the extension's code depends on: the loops' source, numba, Python, and this CPU (it is
    compiled for this CPU's instructions, so a cache folder shared with another CPU must not load
    it), with numba's settings that choose them (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES)."""
    import hashlib
    import platform
    from importlib.metadata import version

    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = "".join(sorted({line for line in f if line.startswith(("model name", "flags"))}))
    parts = (Path(__file__).with_name("lstm_loops.py").read_bytes(), version("numba").encode(), sys.version.encode(),
             platform.machine().encode(), cpu.encode(), repr(numba_signatures()).encode(),
             *(os.environ.get(k, "").encode() for k in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")))
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def extension_path() -> Path:
    """Where the loops compiled ahead of time live: numba's cache folder (NUMBA_CACHE_DIR, else
    pipeline/__pycache__), named for `_machine_key`."""
    folder = Path(os.environ.get("NUMBA_CACHE_DIR") or Path(__file__).with_name("__pycache__"))
    return folder / f"{MODULE}.{_machine_key()}{sysconfig.get_config_var('EXT_SUFFIX')}"


def _build(path: str) -> None:
    """(In a child process.) The extension built in a folder beside `path`, then moved there whole:
    a build that fails or is killed leaves nothing that could be loaded."""
    import shutil
    import tempfile

    from pipeline.text import lstm_loops

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=".building-", dir=target.parent)
    try:
        lstm_loops.build_extension(folder, MODULE, numba_signatures())
        (built,) = Path(folder).glob(f"{MODULE}*")
        os.replace(built, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_COMPILED: dict = {}  # {"extension": its path, or None where numba's JIT cache holds the loops}
_LOOPS: dict | None = None
_LOCK = threading.Lock()  # batch parts' threads may ask at once


def compile_apart() -> Path | None:
    """The loops compiled by child processes, once per process at most: the extension module
    built (about 20 s, once per machine) into `extension_path()`, which this returns; where it
    cannot be built (no C compiler or no Python headers: the child's error says which), numba's
    JIT into its on-disk cache, with a warning, and None.

    Apart, because compiling holds memory: the build's child peaked at 245 MiB. The train stage
    calls this before it imports TensorFlow, so that the two processes' memory never adds up."""
    with _LOCK:
        if not _COMPILED:
            _COMPILED["extension"] = _compile_apart()
        return _COMPILED["extension"]


def _compile_apart() -> Path | None:
    import subprocess

    path = extension_path()
    child = [sys.executable, "-c"]
    if not path.exists():
        print(f"lstm_cpu: compiling the fused LSTM's loops for this machine, once (about 20 s): {path}", file=sys.stderr, flush=True)
        subprocess.run([*child, f"from pipeline.text import lstm_cpu; lstm_cpu._build({str(path)!r})"], check=False)
    if path.exists():
        return path
    print("warning: the fused LSTM's loops could not be compiled ahead of time (see the error above); numba's JIT "
          "runs them instead, which keeps about 100 MB more memory in this process", file=sys.stderr, flush=True)
    # No check: if the child cannot compile, load_compiled's compiling raises the error where it matters.
    subprocess.run([*child, "from pipeline.text import lstm_cpu, lstm_loops; lstm_loops.compile_jit(lstm_cpu.numba_signatures())"],
                   check=False)
    return None


def load_compiled() -> dict:
    """The loops {"forward", "backward", "step"}, each checked (`_checked`), loaded once per process
    from what `compile_apart` compiled: the extension module, without numba (measured after
    TensorFlow's import: numba and its cached loops took 111 MB of RSS, the extension about 1), or
    numba's cache (compiling in this process would keep about 80 MB more)."""
    global _LOOPS
    if _LOOPS is not None:  # each training step asks: no lock once loaded
        return _LOOPS
    path = compile_apart()
    with _LOCK:
        if _LOOPS is None:
            if path is not None:
                import importlib.util

                spec = importlib.util.spec_from_file_location(MODULE, path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            else:
                from pipeline.text import lstm_loops as module

                module.compile_jit(numba_signatures())
            _LOOPS = {name: _checked(getattr(module, name), name) for name in SIGNATURES}
    return _LOOPS


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
        load_compiled()["forward"](self.ids, kernel, bias, recurrent, self.H, self.C, self.A, self.TC, self.Z)
        return self.H[time if self.keep else time % 2].copy()  # a copy: the next step rewrites the buffer

    def run_backward(self, dh_last, vocab: int):
        batch, _, u = self.shape
        grads = np.empty((vocab, 4 * u), F32), np.empty((u, 4 * u), F32), np.empty(4 * u, F32)
        load_compiled()["backward"](np.ascontiguousarray(dh_last, dtype=F32), self.ids, self.H, self.C, self.A, self.TC,
                                    self.recurrent_t, self._buffer("dz", (4 * u,)), self._buffer("dh", (batch, u)),
                                    self._buffer("dc", (batch, u)), *grads)
        return grads


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
