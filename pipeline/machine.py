"""How a job uses the machine it runs on: TensorFlow's threads, importing it quietly, and the memory
the process holds. Every generator's train stage sets up through it."""
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


def without_autotuner(ds):
    """The tf.data pipeline `ds` prefetching two batches on one input thread, without tf.data's
    autotuner. A batch here is one small slice or gather, so the autotuner has nothing to tune, and
    on 2 cores it costs twice: its thread pool competes with the training threads for the cores, and
    its thread, which wakes at doubling intervals (10 ms, 20 ms, ... up to seconds), holds up the end
    of every fit() and evaluate() over the pipeline until its next wake-up, which can double a call's
    time (measured in bench/RESULTS.md, the VAE section)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    options.threading.private_threadpool_size = 1
    return ds.prefetch(2).with_options(options)


def gpu_likely() -> bool:
    """Whether TensorFlow will probably see a GPU, known without importing it: an NVIDIA device file
    that CUDA_VISIBLE_DEVICES does not hide. TensorFlow has the last word (`fused_lstm`)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return any(DEVICES.glob("nvidia[0-9]*"))


def set_threads(threads: int | None, parts: int) -> None:
    """TensorFlow's threads for `parts` concurrent copies of a model (the text generator's batch
    parts): one thread per op and one op per part at once, so that each part's loop has a core;
    unsplit, `threads` for both (null: TensorFlow's own choice, all cores)."""
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


def import_keras():
    """Keras, on its configured backend; TensorFlow's start-up lines hidden when it is TensorFlow."""
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        import_tensorflow()
    import keras

    return keras


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
