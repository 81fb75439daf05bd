"""The text generator's CPU machinery: the batch parts that give each core a recurrent loop of its
own (`train.batch_parts`, `pipeline.text.model.Parallel`) and the compiled CPU loops of the book's
LSTM (`train.fused_lstm`, `pipeline.text.lstm_cpu`) with their BLAS threads. The train stage and
`bench/compare.py` set up training through it; threads and memory are `pipeline.machine`'s."""
from __future__ import annotations

import os

from pipeline.machine import gpu_likely

def batch_parts(setting, threads: int | None, batch_size: int) -> int:
    """`train.batch_parts` as a number. "auto": one part per core the job may use (`threads`, else
    the machine's) when TensorFlow sees no GPU, where cuDNN runs a batch whole and fast: 1. Never
    more parts than rows in a batch."""
    if setting == "auto":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return 1
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        setting = threads or cores
    return max(1, min(int(setting), batch_size))

def fused_lstm(setting, model: str, targets: str) -> bool:
    """`train.fused_lstm` as a yes or no. "auto": yes for the book's model (`model` lstm, `targets`
    last) when TensorFlow sees no GPU, where cuDNN runs Keras's LSTM fast, and numba is installed."""
    maybe = might_fuse(setting, model, targets)
    if not maybe or setting != "auto":
        return maybe
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")

def might_fuse(setting, model: str, targets: str) -> bool:
    """`fused_lstm`'s answer as far as it is known without TensorFlow, which alone can say whether
    there is a GPU (where "auto" turns a yes into a no)."""
    if setting != "auto":
        return bool(setting)
    import importlib.util

    return model == "lstm" and targets == "last" and importlib.util.find_spec("numba") is not None

def build_loops_first(setting, model: str, targets: str) -> bool:
    """Whether the train stage should have the fused loops compiled before it imports TensorFlow
    (`pipeline.text.lstm_cpu.compile_apart`): when it `might_fuse`, except with "auto" where a GPU is
    likely, since TensorFlow would then turn the loops off (the first run on a GPU machine would
    build them for nothing, about 20 s). If TensorFlow sees no GPU after all, they are built when
    loaded, after its import."""
    return might_fuse(setting, model, targets) and not (setting == "auto" and gpu_likely())

def limit_blas(threads: int | None) -> None:
    """At most `threads` BLAS threads per product (null: BLAS's own choice) for the fused LSTM's
    loops, whose products go to SciPy's OpenBLAS (numba's np.dot): with batch parts each core
    already runs a loop, and a second thread per product would only fight it for the core."""
    if threads is None:
        return
    import scipy.linalg.cython_blas  # noqa: F401 - loads the library the loops call, so the limit reaches it
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="blas")

def prepare_fused_lstm(setting, model: str, targets: str, parts: int, threads: int | None) -> bool:
    """`fused_lstm(setting, model, targets)`, and if yes, what the fused loops need before training:
    one BLAS thread per product when there are batch parts (`threads` otherwise), and the loops
    loaded (`pipeline.text.lstm_cpu.load_compiled`, which compiles them in a child process if no one
    has yet: better before TensorFlow's import, with `lstm_cpu.compile_apart` when `build_loops_first`)."""
    fused = fused_lstm(setting, model, targets)
    if fused:
        limit_blas(1 if parts > 1 else threads)
        from pipeline.text import lstm_cpu

        lstm_cpu.load_compiled()
    return fused
