"""How a job uses the machine it runs on: TensorFlow's threads, the batch parts that give each core
a recurrent loop of its own (`train.batch_parts`, `pipeline.model.Parallel`), the compiled CPU
loops of the book's LSTM (`train.fused_lstm`) and their BLAS threads, and the memory the process
holds. The train stage and `bench/compare.py` set up training through it."""
from __future__ import annotations

import ctypes
import os
import re
import sys
from pathlib import Path

DEVICES = Path("/dev")  # where an NVIDIA driver puts its GPUs' device files (nvidia0, nvidia1, ...)


def limit_threads(intra: int, inter: int) -> None:
    """At most `intra` TensorFlow threads per op and `inter` ops at once: parallel jobs sharing a
    machine then do not fight over its cores. TensorFlow fixes this when it first runs an op, so a
    process that already ran one (a joblib worker on its second job) keeps what it had, with a
    warning if it differs."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        had = (tf.config.threading.get_intra_op_parallelism_threads(), tf.config.threading.get_inter_op_parallelism_threads())
        if had != (intra, inter):
            print(f"warning: {intra} thread(s) per op and {inter} op(s) at once not applied: TensorFlow already "
                  f"runs with {had[0]} and {had[1]} in this process", file=sys.stderr)


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


def gpu_likely() -> bool:
    """Whether TensorFlow will probably see a GPU, known without importing it: an NVIDIA device file
    that CUDA_VISIBLE_DEVICES does not hide. TensorFlow has the last word (`fused_lstm`)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return any(DEVICES.glob("nvidia[0-9]*"))


def build_loops_first(setting, model: str, targets: str) -> bool:
    """Whether the train stage should have the fused loops compiled before it imports TensorFlow
    (`pipeline.lstm_cpu.compile_apart`): when it `might_fuse`, except with "auto" where a GPU is
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
    loaded (`pipeline.lstm_cpu.load_compiled`, which compiles them in a child process if no one
    has yet: better before TensorFlow's import, with `lstm_cpu.compile_apart` when `build_loops_first`)."""
    fused = fused_lstm(setting, model, targets)
    if fused:
        limit_blas(1 if parts > 1 else threads)
        from pipeline import lstm_cpu

        lstm_cpu.load_compiled()
    return fused


def set_threads(threads: int | None, parts: int) -> None:
    """TensorFlow's threads for `parts` batch parts (`pipeline.model.Parallel`): one thread per op
    and one op per part at once, so that each part's loop has a core; unsplit, `threads` for both
    (null: TensorFlow's own choice, all cores)."""
    if parts > 1:
        limit_threads(1, parts)
    elif threads:
        limit_threads(threads, threads)


# TensorFlow's start-up lines on a machine without a GPU: informational (oneDNN, the CPU's
# instruction sets, no CUDA driver), but printed as "E0000 ... CUDA error", which reads as a failure.
_STARTUP_NOISE = re.compile(r"absl::InitializeLog|port\.cc:\d+\] oneDNN custom operations|cudart_stub\.cc|"
                            r"cpu_feature_guard\.cc|^To enable the following instructions|cuda_platform\.cc")


def import_tensorflow():
    """TensorFlow, imported without its start-up lines where no GPU is likely; call it before the
    first `import keras`. Setting TF_CPP_MIN_LOG_LEVEL yourself (0: everything) keeps them all, as
    does a GPU machine, where they say which devices TensorFlow found. Any other line it prints while
    loading is passed on, and all of them if the import fails."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") is not None or gpu_likely():
        import tensorflow as tf

        return tf
    import tempfile

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # the cuInit error at the first op, after the import
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)  # the native libraries write to file descriptor 2, not to sys.stderr
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            import tensorflow as tf

            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if failed or not _STARTUP_NOISE.search(line):
                    print(line, file=sys.stderr)
    return tf


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB: what a machine must have for the stage."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux


def release_free_memory() -> None:
    """Hand the allocator's free pages back to the system (glibc's malloc_trim; elsewhere nothing).
    Freed memory otherwise stays with the allocator: in a loop of fit() calls of 100 steps each
    on full-Nietzsche batches, RSS grew about 1.2 MiB a call without it and not at all with it."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
