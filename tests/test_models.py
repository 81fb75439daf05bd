"""The model families (conf/model/*.yaml): each builds, trains on the tiny config through the real
stages, and generates with probabilities equal to the model's own forward pass."""
import json

import numpy as np
import pytest

from pipeline import config
from pipeline.text.generator import Generator, WindowGenerator, for_model
from tests.conftest import REPO, tiny


def _softmax(logits: np.ndarray) -> np.ndarray:
    """The probabilities a model's softmax layer gives for `logits`, written here, not the generator's."""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)

FAMILIES = sorted(p.stem for p in (REPO / "conf/text/model").glob("*.yaml"))
# Small versions of each family, so that the whole pipeline runs in seconds.
SMALL = {"lstm": [], "stacked_lstm": ["text.model.units=16", "text.model.embedding=8"], "gru": ["text.model.units=16", "text.model.embedding=null"],
         "conv1d": ["text.model.dilations=[1,2,4,8]"]}


def test_every_family_in_conf_has_a_builder_and_a_small_version():
    from pipeline.text.model import MODELS

    assert FAMILIES == sorted(MODELS) == sorted(SMALL)
    for name in FAMILIES:
        assert config.compose([f"text/model={name}"]).text.model.name == name


def _random_model(name: str, vocab: int = 11, **keys):
    import keras

    from pipeline.text.model import build

    keras.utils.set_random_seed(3)
    m = build(vocab, name, **keys)
    # Larger weights than the initialisers', and nonzero biases: near-uniform outputs would pass anything.
    rng = np.random.default_rng(0)
    m.set_weights([w * 1.5 + rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in m.get_weights()])
    return m


MODELS = {
    "lstm": {"units": 8},
    "stacked_lstm": {"units": 8, "layers": 3, "dropout": 0.3, "embedding": 5},
    "gru": {"units": 8, "layers": 2, "dropout": 0.3, "embedding": None},
    "gru_1_layer": {"units": 8, "layers": 1, "dropout": 0.0, "embedding": 4},
    "conv1d": {"units": 8, "kernel_size": 2, "dilations": [1, 2, 4], "dropout": 0.3, "embedding": 4},
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def family(request):
    key = request.param
    return key.split("_1")[0], _random_model(key.split("_1")[0], **MODELS[key])


def _greedy_reference(model, prompt, length, maxlen):
    text = list(prompt)
    for _ in range(length):
        text.append(int(np.argmax(np.asarray(model(np.array([text[-maxlen:]], dtype="int32")))[0])))
    return text[len(prompt):]


@pytest.mark.parametrize("length", [1, 4, 9])
def test_generator_probabilities_are_the_models_forward_pass(family, length):
    name, model = family
    gen = for_model(model, maxlen=9)
    assert isinstance(gen, WindowGenerator if name == "conv1d" else Generator)
    windows = np.random.default_rng(length).integers(0, 11, size=(4, length))
    ours = gen.window_probs(windows)
    np.testing.assert_allclose(ours, np.asarray(model(windows.astype("int32"), training=False)), atol=2e-6)
    np.testing.assert_allclose(ours.sum(axis=-1), 1.0, atol=1e-6)
    assert ours.std() > 0.01  # the test would be void on a near-uniform model


def test_window_mode_is_the_model_of_the_last_maxlen_characters_at_every_step(family):
    _, model = family
    out = for_model(model, 6).generate([3, 1, 4], [1.0], 15, np.random.default_rng(0), mode="window", greedy=True)
    assert out[0].tolist() == _greedy_reference(model, [3, 1, 4], 15, 6)


def test_stateful_mode_matches_the_model_while_shorter_than_maxlen(family):
    name, model = family
    gen = for_model(model, 30)
    if name == "conv1d":
        assert gen.modes == ("window",)
        with pytest.raises(ValueError, match="mode must be one of .'window',. for this model"):
            next(gen.stream([1, 2], [1.0], 5, np.random.default_rng(0), mode="stateful"))
        return
    stateful = gen.generate([3, 1, 4], [1.0], 15, np.random.default_rng(0), mode="stateful", greedy=True)
    assert stateful[0].tolist() == _greedy_reference(model, [3, 1, 4], 15, 30)
    text = np.array([3, 1, 4] + stateful[0].tolist())
    h, state = gen.run(text[None, :3])
    for k in range(3, 12):  # the carried state of every layer gives model(whole text so far)
        np.testing.assert_allclose(_softmax(gen.logits(h)), np.asarray(model(text[None, :k].astype("int32"))), atol=2e-6)
        h, state = gen.step(text[k:k + 1], state)


def test_the_convnet_is_causal_with_the_receptive_field_it_documents():
    """1 + (kernel_size - 1) * sum(dilations): characters further back change nothing, the ones inside do."""
    model = _random_model("conv1d", **MODELS["conv1d"])  # receptive field 1 + 1 * 7 = 8
    base = np.random.default_rng(1).integers(0, 11, size=(1, 12))
    outside, inside = base.copy(), base.copy()
    outside[0, :4] = (outside[0, :4] + 1) % 11   # positions 0-3: more than 8 back from the last
    inside[0, 4] = (inside[0, 4] + 1) % 11       # position 4: exactly 8 back
    ref = np.asarray(model(base))
    np.testing.assert_allclose(np.asarray(model(outside)), ref, atol=1e-7)
    assert np.abs(np.asarray(model(inside)) - ref).max() > 1e-4


def test_dropout_trains_but_never_generates():
    model = _random_model("stacked_lstm", **MODELS["stacked_lstm"])
    x = np.random.default_rng(2).integers(0, 11, size=(8, 9)).astype("int32")
    assert np.abs(np.asarray(model(x, training=True)) - np.asarray(model(x, training=False))).max() > 1e-3
    np.testing.assert_allclose(np.asarray(model(x, training=False)), np.asarray(model(x, training=False)))


@pytest.mark.parametrize("overrides, key", [
    (["text/model=conv1d", "text.sample.mode=stateful"], "sample.mode"),
    (["text/model=conv1d", "text.train.epoch_samples.mode=stateful"], "train.epoch_samples.mode"),
    (["text/model=gru", "text.model.dropout=1.0"], "model.dropout"),
    (["text/model=gru", "text.model.layers=0"], "model.layers"),
    (["text/model=stacked_lstm", "text.model.embedding=0"], "model.embedding"),
    (["text/model=conv1d", "text.model.kernel_size=1"], "model.kernel_size"),
    (["text/model=conv1d", "text.model.dilations=[]"], "model.dilations"),
    (["text.model.name=transformer"], "model.name"),
    (["text/model=lstm", "+text.model.layers=2"], "model.layers"),  # a key of another family
])
def test_bad_model_configs_name_the_key(overrides, key):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        config.compose(overrides)


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_runs_the_pipeline_and_the_sample_stage_agrees_on_the_held_out_loss(workdir, name):
    from pipeline.text import fetch, sample, train, vectorize
    from pipeline.text.model import load

    cfg = tiny(workdir, f"text/model={name}", *SMALL[name], "text.sample.temperature=[0.5]")
    for stage in (fetch, vectorize):
        stage.run(cfg)
    trained = train.run(cfg)
    sampled = sample.run(cfg)
    history = (workdir / "metrics/history.csv").read_text().splitlines()
    assert history[0].split(",")[:6] == ["epoch", "loss", "val_loss", "bpc", "val_bpc", "seconds"]
    assert len(history) == 1 + cfg.train.epochs
    best = trained["best_val_loss"]
    assert 0 < best < np.log(len(json.loads((workdir / "data/prepared/vocab.json").read_text())))  # it learned something
    assert sampled["val_loss"] == pytest.approx(best, rel=1e-4)
    assert sampled["val_bpc"] == pytest.approx(trained["val_bpc"], rel=1e-4)
    assert json.loads((workdir / "metrics/sample.json").read_text())["val_loss"] == sampled["val_loss"]
    assert len((workdir / "samples/text/temperature_0.5.txt").read_text()) > cfg.sample.length

    model, meta = load(workdir / "models")
    assert meta["model"] == name
    windows = np.load(workdir / "data/prepared/val.npy")[:40].astype("int64").reshape(2, 20)
    np.testing.assert_allclose(for_model(model, meta["maxlen"]).window_probs(windows), np.asarray(model(windows)), atol=2e-6)


def test_all_targets_are_the_window_shifted_by_one_and_end_with_the_books_target():
    from pipeline.text.vectorize import make_dataset

    ids = np.arange(100, dtype=np.uint8) % 37
    (x_all, y_all), = make_dataset(ids, 10, 7, 64, None, 0, targets="all").take(1).as_numpy_iterator()
    (x_last, y_last), = make_dataset(ids, 10, 7, 64, None, 0).take(1).as_numpy_iterator()
    assert x_all.shape == y_all.shape == (13, 10) and np.array_equal(x_all, x_last)
    starts = np.arange(13) * 7
    np.testing.assert_array_equal(y_all, ids[starts[:, None] + np.arange(1, 11)])
    np.testing.assert_array_equal(y_all[:, -1], y_last)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_sequence_twin_has_the_same_weights_and_its_last_position_is_the_model(name):
    from pipeline.text.model import build

    family = name.split("_1")[0]
    model = _random_model(family, **MODELS[name])
    twin = build(11, family, sequence=True, **MODELS[name])
    assert [w.shape for w in twin.get_weights()] == [w.shape for w in model.get_weights()]
    twin.set_weights(model.get_weights())
    x = np.random.default_rng(4).integers(0, 11, size=(3, 9)).astype("int32")
    out = np.asarray(twin(x, training=False))
    assert out.shape == (3, 9, 11)
    for k in (1, 5, 9):  # position k-1 of the twin is the model on the first k characters (causal)
        np.testing.assert_allclose(out[:, k - 1], np.asarray(model(x[:, :k], training=False)), atol=2e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batch_parts_are_the_model_on_the_whole_batch(name):
    """pipeline.text.model.Parallel: the model's own weights (the same variables) and its outputs, for
    batches smaller than, equal to and larger than the number of parts, and for the sequence twin."""
    from pipeline.text.model import Parallel, build, unwrap

    family = name.split("_1")[0]
    model = _random_model(family, **MODELS[name])
    parallel = Parallel(model, 3)
    x = np.random.default_rng(5).integers(0, 11, size=(7, 9)).astype("int32")
    for n in (1, 2, 3, 4, 7):
        np.testing.assert_allclose(np.asarray(parallel(x[:n], training=False)), np.asarray(model(x[:n], training=False)),
                                   atol=2e-6)
    assert len(parallel.weights) == len(model.weights) and all(a is b for a, b in zip(parallel.weights, model.weights))
    assert unwrap(parallel) is model and unwrap(model) is model
    twin = build(11, family, sequence=True, **MODELS[name])
    twin.set_weights(parallel.get_weights())
    out = np.asarray(Parallel(twin, 2)(x[:5], training=False))
    assert out.shape == (5, 9, 11)
    np.testing.assert_allclose(out, np.asarray(twin(x[:5], training=False)), atol=2e-6)


@pytest.mark.parametrize("name", ["lstm", "gru_1_layer"])
def test_a_training_step_on_batch_parts_is_the_step_on_the_whole_batch(name):
    """The mean loss over the parts is the batch's, so its gradients and the optimizer's step are too
    (to float rounding), including a last batch smaller than the number of parts."""
    import keras

    from pipeline.text.model import Parallel

    family = name.split("_1")[0]
    x = np.random.default_rng(6).integers(0, 11, size=(9, 12)).astype("int32")
    y = np.random.default_rng(7).integers(0, 11, size=9)
    weights = {}
    for parts in (1, 2, 4):
        model = _random_model(family, **MODELS[name])
        trained = Parallel(model, parts) if parts > 1 else model
        trained.compile(optimizer=keras.optimizers.RMSprop(0.01), loss="sparse_categorical_crossentropy")
        losses = [float(trained.train_on_batch(x[a:b], y[a:b])) for a, b in ((0, 8), (8, 9))]
        weights[parts] = (losses, model.get_weights())
    for parts in (2, 4):
        assert weights[parts][0] == pytest.approx(weights[1][0], rel=1e-5)
        for a, b in zip(weights[parts][1], weights[1][1], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(weights[1][1][-1], _random_model(family, **MODELS[name]).get_weights()[-1])  # it did train


@pytest.mark.parametrize("vocab,units", [(11, 8), (57, 128)])
def test_the_fused_lstm_gives_keras_lstm_outputs_and_gradients(vocab, units):
    """pipeline.text.lstm_cpu through Parallel(fused=True): the book's model's outputs and the
    gradients of its loss for every weight, against Keras's LSTM, for batches smaller than, equal
    to and larger than the parts (the book's size too: the loops' vectorised paths)."""
    import keras
    import tensorflow as tf

    from pipeline.text.model import Parallel

    model = _random_model("lstm", vocab=vocab, units=units)
    x = np.random.default_rng(8).integers(0, vocab, size=(7, 13)).astype("int32")
    y = np.random.default_rng(9).integers(0, vocab, size=7)
    loss = keras.losses.SparseCategoricalCrossentropy()
    for parts in (1, 3):
        fused = Parallel(model, parts, fused=True)
        for n in (1, 3, 7):
            with tf.GradientTape(persistent=True) as tape:
                ours, theirs = fused(x[:n], training=True), model(x[:n], training=True)
                ours_loss, their_loss = loss(y[:n], ours), loss(y[:n], theirs)
            np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-6)
            for time in (1, 12, 13):  # inference keeps two positions, alternating: odd and even lengths
                np.testing.assert_allclose(np.asarray(fused(x[:n, :time], training=False)),
                                           np.asarray(model(x[:n, :time], training=False)), rtol=1e-5, atol=1e-6)
            grads = tape.gradient(ours_loss, model.trainable_weights), tape.gradient(their_loss, model.trainable_weights)
            assert len(grads[0]) == 5  # the LSTM's kernel, recurrent kernel, bias; the softmax's kernel, bias
            for a, b in zip(*grads, strict=True):
                scale = float(tf.reduce_max(tf.abs(b)))
                assert scale > 0
                # float32 sums over batch x time terms: rounding relative to the largest entry
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4 * scale)


def test_a_training_step_of_the_fused_lstm_is_keras_step():
    """RMSprop with clipping on the fused loops, in 1 and 2 parts, a last batch of one row included:
    Keras's LSTM's losses and weights after the steps (to float rounding)."""
    import keras

    from pipeline.text.model import Parallel

    x = np.random.default_rng(6).integers(0, 11, size=(9, 12)).astype("int32")
    y = np.random.default_rng(7).integers(0, 11, size=9)
    results = {}
    for fused, parts in ((False, 1), (True, 1), (True, 2)):
        model = _random_model("lstm", units=8)
        trained = Parallel(model, parts, fused=True) if fused else model
        trained.compile(optimizer=keras.optimizers.RMSprop(0.01, clipnorm=1.0), loss="sparse_categorical_crossentropy")
        losses = [float(trained.train_on_batch(x[a:b], y[a:b])) for a, b in ((0, 8), (8, 9), (0, 8))]
        results[fused, parts] = (losses, model.get_weights())
    for key in ((True, 1), (True, 2)):
        assert results[key][0] == pytest.approx(results[False, 1][0], rel=1e-5)
        for a, b in zip(results[key][1], results[False, 1][1], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(results[True, 2][1][1], _random_model("lstm", units=8).get_weights()[1])  # it did train


def test_the_fused_lstm_passes_nan_on_and_runs_the_book_model_only():
    """A NaN weight gives NaN outputs, as Keras's LSTM does (the divergence check reads the loss);
    other families are refused with a message that says why."""
    from pipeline.text.model import Parallel

    model = _random_model("lstm", units=8)
    weights = model.get_weights()
    weights[2][0] = np.nan  # one bias entry
    model.set_weights(weights)
    x = np.random.default_rng(1).integers(0, 11, size=(2, 5)).astype("int32")
    assert np.isnan(np.asarray(Parallel(model, 1, fused=True)(x))).all()
    with pytest.raises(ValueError, match="the fused LSTM runs the book's model"):
        Parallel(_random_model("gru", **MODELS["gru"]), 2, fused=True)
    restored = Parallel.from_config(Parallel(_random_model("lstm", units=8), 2, fused=True).get_config())
    assert restored.fused and restored.parts == 2


def _no_gpu(monkeypatch):
    """What TensorFlow says on a machine without a GPU, whatever machine the test runs on."""
    import tensorflow as tf

    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [] if kind == "GPU" else real(kind))


def test_fused_lstm_auto_is_the_book_model_without_a_gpu(monkeypatch):
    from pipeline.text.cpu import fused_lstm

    _no_gpu(monkeypatch)
    assert fused_lstm("auto", "lstm", "last")  # numba is a dependency
    assert not fused_lstm("auto", "gru", "last") and not fused_lstm("auto", "lstm", "all")
    assert fused_lstm(True, "lstm", "last") and not fused_lstm(False, "lstm", "last")


def test_with_a_gpu_auto_leaves_the_model_whole_for_cudnn(monkeypatch):
    """Where TensorFlow sees a GPU, `auto` neither cuts batches into parts nor fuses the LSTM: the
    train stage then builds the family's plain Keras model, whose layers cuDNN can run."""
    import tensorflow as tf

    from pipeline.text.cpu import batch_parts, fused_lstm

    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")] if kind == "GPU" else [])
    assert batch_parts("auto", None, 128) == 1 and batch_parts("auto", 4, 128) == 1
    assert not fused_lstm("auto", "lstm", "last")
    assert batch_parts(2, None, 128) == 2 and fused_lstm(True, "lstm", "last")  # what a user asks for stands


def test_a_gpu_machine_does_not_build_the_loops_before_tensorflow_decides(monkeypatch, tmp_path):
    """An NVIDIA device file that CUDA_VISIBLE_DEVICES does not hide makes a GPU likely: `auto`
    then skips the build before TensorFlow's import (TensorFlow would turn the loops off); a
    setting of true still builds first, and without a GPU `auto` does."""
    from pipeline import machine
    from pipeline.text import cpu

    monkeypatch.setattr(machine, "DEVICES", tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (tmp_path / "nvidiactl").touch()  # the driver's control file alone is no GPU
    assert not machine.gpu_likely() and cpu.build_loops_first("auto", "lstm", "last")
    (tmp_path / "nvidia0").touch()
    assert machine.gpu_likely() and not cpu.build_loops_first("auto", "lstm", "last")
    assert cpu.build_loops_first(True, "lstm", "last") and not cpu.build_loops_first(False, "lstm", "last")
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert not machine.gpu_likely() and cpu.build_loops_first("auto", "lstm", "last")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert machine.gpu_likely()
    assert not cpu.build_loops_first("auto", "gru", "last")  # no fused loops for other families anyway


@pytest.mark.parametrize("overrides", [["text/model=lstm"], ["text/model=stacked_lstm"], ["text/model=gru"], ["experiment=quality"],
                                       ["experiment=quality_tinyshakespeare"], ["text/model=gru", "text.model.embedding=null"]])
def test_every_recurrent_layer_conf_builds_qualifies_for_cudnn(overrides):
    """On a GPU, TensorFlow runs an LSTM or GRU layer on cuDNN only when Keras's own test of its
    arguments passes (tanh, sigmoid, no unroll, a bias; for a GRU, reset_after), its use_cudnn
    allows it, it has no recurrent dropout and no mask reaches it. Checked for every recurrent
    layer of each family as conf/ builds it, for both training objectives."""
    import importlib

    import keras
    from omegaconf import OmegaConf

    from pipeline.text.model import build

    tf_rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")  # where TensorFlow's backend decides
    keys = OmegaConf.to_container(config.compose(overrides).text.model)
    for sequence in (False, True):
        model = build(57, sequence=sequence, **keys)
        recurrent = [layer for layer in model.layers if isinstance(layer, (keras.layers.LSTM, keras.layers.GRU))]
        assert recurrent, overrides
        for layer in recurrent:
            args = (layer.activation, layer.recurrent_activation, layer.unroll, layer.use_bias)
            if isinstance(layer, keras.layers.LSTM):
                assert tf_rnn._do_lstm_arguments_support_cudnn(*args), layer.name
            else:
                assert tf_rnn._do_gru_arguments_support_cudnn(*args, reset_after=layer.cell.reset_after), layer.name
            assert layer.use_cudnn in ("auto", True) and layer.recurrent_dropout == 0, layer.name
        assert not any(getattr(layer, "mask_zero", False) for layer in model.layers), overrides


# In a child process with an empty cache (NUMBA_CACHE_DIR): load the loops, say whether numba is
# loaded, then run each loaded loop and numba's JIT of the same code on the same arrays.
_LOAD_AND_COMPARE = """
import sys
import numpy as np
from pipeline.text import lstm_cpu
loops = lstm_cpu.load_compiled()
print("numba", "numba" in sys.modules, "keras", "keras" in sys.modules)
from pipeline.text import lstm_loops
rng = np.random.default_rng(5)
B, T, U, V = 5, 7, 8, 11
def arrays(shape, dtype=np.float32):
    return (rng.standard_normal(shape) * 2).astype(dtype) if dtype == np.float32 else rng.integers(0, V, shape).astype(dtype)
ids, kernel, bias, rec = arrays((B, T), np.int32), arrays((V, 4 * U)), arrays(4 * U), arrays((U, 4 * U))
def run(forward, backward, step):
    H, C, A, TC = np.zeros((T + 1, B, U), np.float32), np.zeros((T + 1, B, U), np.float32), np.zeros((T, B, 4 * U), np.float32), np.zeros((T, B, U), np.float32)
    forward(ids, kernel, bias, rec, H, C, A, TC, np.zeros((B, 4 * U), np.float32))
    h_last = H[T].copy()
    grads = np.empty((V, 4 * U), np.float32), np.empty((U, 4 * U), np.float32), np.empty(4 * U, np.float32)
    backward(np.ones((B, U), np.float32), ids, H, C, A, TC, np.ascontiguousarray(rec.T), np.empty(4 * U, np.float32),
             np.empty((B, U), np.float32), np.empty((B, U), np.float32), *grads)
    h, c = step(np.arange(B, dtype=np.int64), kernel, bias, np.ascontiguousarray(rec.T), np.ascontiguousarray(H[T].T), np.ascontiguousarray(C[T].T))
    return [h_last, *grads, h, c]
theirs = run(lstm_loops.forward, lstm_loops.backward, lstm_loops.step)
ours = run(loops["forward"], loops["backward"], loops["step"])
print("differ", max(float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max()))) for a, b in zip(ours, theirs)))
print("moved", min(float(np.abs(a).max()) for a in ours))
print("jit", *(len(getattr(lstm_loops, n).stats.cache_hits) for n in lstm_cpu.SIGNATURES), *(len(getattr(lstm_loops, n).stats.cache_misses) for n in lstm_cpu.SIGNATURES))
"""


def _load_in_a_child(tmp_path, **env):
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _LOAD_AND_COMPARE], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), **env})
    assert out.returncode == 0, out.stderr
    return {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()}, out.stderr


def test_the_loops_are_compiled_ahead_of_time_and_run_without_numba(tmp_path):
    """lstm_cpu.load_compiled with an empty cache: a child process builds the extension, and the
    calling process runs the loops from it without loading numba (or Keras), with numba's JIT's
    results; the cache then holds the extension alone, nothing half-built.

    The CPU is named `znver4`, as LLVM named a virtual AMD EPYC with AVX-512 turned off: the
    extension must use the instruction sets the CPU has, not those of its model (pycc's own way
    built AVX-512 code there, which died of an illegal instruction)."""
    import platform

    cpu = {"NUMBA_CPU_NAME": "znver4"} if platform.machine() in ("x86_64", "AMD64") else {}
    seen, err = _load_in_a_child(tmp_path, **cpu)
    assert seen["numba"] == ["False", "keras", "False"]
    assert float(seen["differ"][0]) <= 1e-6 and float(seen["moved"][0]) > 0.01  # the same values, and not zeros
    assert [p.name.split(".")[0] for p in tmp_path.iterdir() if not p.name.startswith("text_")]  # numba's index of the package folder == ["_lstm_cpu_loops"]
    assert "compiling the fused LSTM's loops" in err and "warning" not in err
    seen, err = _load_in_a_child(tmp_path, **cpu)  # built once: the next process loads it
    assert "compiling" not in err and float(seen["differ"][0]) <= 1e-6


def test_without_a_compiler_the_loops_run_on_numbas_jit_compiled_apart(tmp_path):
    """No C compiler (CC=false): a warning, then numba's JIT, compiled into its cache by a child
    process and loaded from it here (3 cache hits, nothing compiled in this process)."""
    seen, err = _load_in_a_child(tmp_path, CC="false")
    assert "warning: the fused LSTM's loops could not be compiled ahead of time" in err
    assert seen["numba"][:1] == ["True"] and seen["jit"][:3] == ["1", "1", "1"] and seen["jit"][3:] == ["0", "0", "0"]
    # The loops ran and computed something (their values against the extension's and Keras's are
    # checked elsewhere: here `ours` and `theirs` are the same JIT functions, so "differ" says nothing).
    assert float(seen["moved"][0]) > 0.01
    assert not list(tmp_path.glob("_lstm_cpu_loops*")) and not list(tmp_path.glob(".building-*"))


def test_a_loop_refuses_arrays_of_another_type_with_a_message():
    """Compiled ahead of time, a loop would read a wrong array as its own type; the check names it."""
    from pipeline.text import lstm_cpu

    step = lstm_cpu.load_compiled()["step"]
    f = np.zeros((2, 3), np.float32)
    good = (np.zeros(3, np.int64), np.zeros((5, 8), np.float32), np.zeros(8, np.float32), np.zeros((8, 2), np.float32), f[:2, :3].copy(), f.copy())
    h, c = step(*good)
    assert h.shape == c.shape == (2, 3)
    with pytest.raises(TypeError, match="argument 0 must be a C-contiguous int64 array of 1 dimension"):
        step(np.zeros(3, np.int32), *good[1:])
    with pytest.raises(TypeError, match="argument 4 must be a C-contiguous float32 array of 2 dimension.*non-contiguous"):
        step(*good[:4], np.zeros((2, 6), np.float32)[:, ::2], good[5])
    with pytest.raises(TypeError, match="takes 6 arrays, not 5"):
        step(*good[:5])


def test_batch_parts_follow_the_cores_and_never_exceed_the_batch(monkeypatch):
    import os

    from pipeline.text.cpu import batch_parts

    _no_gpu(monkeypatch)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert batch_parts("auto", None, 128) == 3
    assert batch_parts("auto", 2, 128) == 2  # `threads`: the cores this job may use
    assert batch_parts("auto", None, 2) == 2
    assert batch_parts(5, None, 128) == 5
    assert batch_parts(5, None, 4) == 4
    assert batch_parts(1, 8, 128) == 1


def test_training_in_batch_parts_exports_the_plain_model(workdir):
    """text.train.batch_parts=2: the exported model is the family's own (no Parallel in the file), and
    the sample stage, which runs it whole, agrees with training on the held-out loss."""
    from pipeline.text import fetch, sample, train, vectorize
    from pipeline.text.model import Parallel, load

    cfg = tiny(workdir, "text.train.batch_parts=2", "text.train.epochs=1", "text.sample.temperature=[0.5]")
    for stage in (fetch, vectorize):
        stage.run(cfg)
    trained = train.run(cfg)
    model, _ = load(workdir / "models")
    assert not isinstance(model, Parallel) and model.name == "lstm"
    assert sample.run(cfg)["val_loss"] == pytest.approx(trained["best_val_loss"], rel=1e-5)


def test_a_checkpoint_trained_in_parts_resumed_in_one_exports_the_plain_model(workdir, monkeypatch, capsys):
    """`auto` can mean 2 parts where a run starts and 1 where it resumes (a GPU machine): the
    resumed model is the checkpoint's Parallel one, and the export must still be the plain model."""
    from pipeline import checkpoint
    from pipeline.text import fetch, train, vectorize
    from pipeline.text.model import Parallel, load

    cfg = tiny(workdir, "text.train.epochs=1")
    for stage in (fetch, vectorize):
        stage.run(cfg)
    monkeypatch.setattr(checkpoint, "clear", lambda folder: None)  # keep the last checkpoint
    monkeypatch.setattr(train, "batch_parts", lambda setting, threads, batch: 2)
    first = train.run(cfg)
    monkeypatch.setattr(train, "batch_parts", lambda setting, threads, batch: 1)
    again = train.run(cfg)  # resumes after the last epoch: nothing left to train, only the export
    assert "train: resuming after epoch 1" in capsys.readouterr().out
    assert again["best_val_loss"] == first["best_val_loss"]
    model, _ = load(workdir / "models")
    assert not isinstance(model, Parallel) and model.name == "lstm"


@pytest.mark.parametrize("name", ["stacked_lstm", "conv1d"])
def test_training_on_all_targets_exports_the_last_position_model_with_the_books_val_loss(workdir, name):
    from pipeline.text import fetch, sample, train, vectorize
    from pipeline.text.model import load

    cfg = tiny(workdir, f"text/model={name}", *SMALL[name], "text.train.targets=all", "text.vectorize.step=20",
               "text.sample.temperature=[0.5]")
    for stage in (fetch, vectorize):
        stage.run(cfg)
    trained = train.run(cfg)
    sampled = sample.run(cfg)
    assert sampled["val_loss"] == pytest.approx(trained["best_val_loss"], rel=1e-4)
    model, meta = load(workdir / "models")
    assert model.output_shape == (None, len(meta["vocab"]))
    windows = np.load(workdir / "data/prepared/val.npy")[:40].astype("int64").reshape(2, 20)
    np.testing.assert_allclose(for_model(model, meta["maxlen"]).window_probs(windows), np.asarray(model(windows)), atol=2e-6)


def test_a_time_limit_starts_no_epoch_that_would_overrun_and_still_exports_the_best(workdir):
    from pipeline.text import fetch, train, vectorize
    from pipeline.text.model import load

    cfg = tiny(workdir, "text.train.epochs=5", "text.train.time_limit=0.001")
    for stage in (fetch, vectorize):
        stage.run(cfg)
    trained = train.run(cfg)
    assert trained["epochs"] == 1 and trained["stopped"].startswith("time limit: ")
    assert len((workdir / "metrics/history.csv").read_text().splitlines()) == 2
    assert load(workdir / "models")[1]["maxlen"] == cfg.vectorize.maxlen


def test_val_step_fixes_the_held_out_windows_whatever_the_training_step(workdir):
    """The same model measured on windows every val_step characters, whatever vectorize.step."""
    from pipeline.text import fetch, sample, train, vectorize

    cfg = tiny(workdir, "text.train.epochs=1", "text.vectorize.val_step=1", "text.sample.temperature=[0.5]")
    for stage in (fetch, vectorize):
        stage.run(cfg)
    train.run(cfg)
    a = sample.run(cfg)["val_loss"]
    b = sample.run(tiny(workdir, "text.train.epochs=1", "text.vectorize.step=7", "text.vectorize.val_step=1", "text.sample.temperature=[0.5]"))["val_loss"]
    c = sample.run(tiny(workdir, "text.train.epochs=1", "text.vectorize.step=7", "text.sample.temperature=[0.5]"))["val_loss"]
    assert a == pytest.approx(b, abs=1e-6) and abs(a - c) > 1e-5
