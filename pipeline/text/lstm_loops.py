"""The compiled loops of the fused LSTM (`pipeline.text.lstm_cpu`, which says why they exist and how
training and generation call them): `forward` and `backward` over a batch of windows, `step` for
a few generation streams, all in numba, with the gates in TensorFlow's own arithmetic.

They are compiled either ahead of time into a small extension module (`build_extension`, numba's
pycc: the process that runs them then loads neither numba nor LLVM, about 100 MB less resident
memory) or, where that cannot be built, by numba's JIT into its on-disk cache (`compile_jit`).
Both compile each loop for the one signature `lstm_cpu.SIGNATURES` gives it, with the options of
its decorator below."""
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


def compile_jit(signatures: dict[str, str]) -> None:
    """Each loop compiled by numba's JIT for its signature, or loaded from numba's cache."""
    for name, signature in signatures.items():
        globals()[name].compile(signature)


def build_extension(folder: str, module: str, signatures: dict[str, str]) -> None:
    """The loops compiled ahead of time into the extension module `module` in `folder` (numba's
    pycc, which needs a C compiler and Python's headers), for this machine's CPU, each with its
    decorator's options: pycc's own defaults would check every division for zero (4x slower gate
    loops), keep Python's lock while a loop runs (the batch parts' loops would take turns), and
    reassociate no sum. The CPU's instruction sets are the ones numba's JIT uses (this machine's,
    as LLVM reads them, or NUMBA_CPU_FEATURES): pycc takes them from the CPU's model name alone,
    which is wrong on a virtual machine that turns some off (LLVM named an AMD EPYC with AVX-512
    disabled `znver4`, and the loops died of an illegal instruction)."""
    import warnings

    from numba.core import codegen
    from numba.core.cpu import FastMathOptions

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pycc's pending deprecation: it is still numba's only ahead-of-time compiler
        from numba.pycc import CC, compiler

    loops = {name: globals()[name] for name in signatures}
    options = {loop.py_func: loop.targetoptions for loop in loops.values()}
    plain = compiler.compile_extra

    def compile_extra(typingctx, targetctx, func, args, return_type, flags, locals, library):
        o = options[func]
        flags.error_model, flags.fastmath, flags.release_gil = o["error_model"], FastMathOptions(o["fastmath"]), o["nogil"]
        return plain(typingctx, targetctx, func, args, return_type, flags, locals=locals, library=library)

    compiler.compile_extra = compile_extra  # this child process's only compilation
    codegen.AOTCPUCodegen._customize_tm_features = codegen.CPUCodegen._get_host_cpu_features
    cc = CC(module)
    cc.output_dir, cc.target_cpu, cc.verbose = folder, "host", False
    for name, signature in signatures.items():
        cc.export(name, signature)(loops[name].py_func)
    cc.compile()
