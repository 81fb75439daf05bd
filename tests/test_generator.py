import numpy as np
import pytest

from pipeline.text.generator import Generator, sample_next


def _softmax(logits: np.ndarray) -> np.ndarray:
    """The probabilities a model's softmax layer gives for `logits`, written here, not the generator's."""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_low_temperature_is_argmax():
    rng = np.random.default_rng(0)
    p = np.array([0.1, 0.5, 0.4])
    for t in (1e-2, 1e-6, 1e-300):
        assert {int(sample_next(p, t, rng)) for _ in range(200)} == {1}


def test_temperature_one_reproduces_p():
    rng = np.random.default_rng(1)
    p = np.array([0.05, 0.15, 0.3, 0.5])
    n = 40000
    draws = sample_next(np.tile(p, (n, 1)), 1.0, rng)
    counts = np.bincount(draws, minlength=4)
    chi2 = (((counts - n * p) ** 2) / (n * p)).sum()
    assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001


def test_temperature_reweights_as_the_book_says():
    """exp(log p / T), renormalised: q is p**(1/T) normalised."""
    rng = np.random.default_rng(2)
    p = np.array([0.2, 0.3, 0.5])
    q = p ** 2 / (p ** 2).sum()  # T = 0.5
    n = 40000
    counts = np.bincount(sample_next(np.tile(p, (n, 1)), 0.5, rng), minlength=3)
    assert np.allclose(counts / n, q, atol=0.01)


@pytest.mark.parametrize("t", [0.01, 0.2, 1.0, 5.0, 1e-300])
def test_zero_probabilities_are_never_drawn_and_nothing_is_nan(t):
    rng = np.random.default_rng(3)
    p = np.array([0.0, 0.3, 0.0, 0.7, 0.0])
    draws = sample_next(np.tile(p, (2000, 1)), t, rng)
    assert set(np.unique(draws)) <= {1, 3}


def test_one_temperature_per_stream():
    rng = np.random.default_rng(4)
    p = np.tile([0.2, 0.35, 0.45], (2, 1))
    draws = np.array([sample_next(p, [1e-9, 1.0], rng) for _ in range(3000)])
    assert set(draws[:, 0]) == {2}
    assert set(draws[:, 1]) == {0, 1, 2}


@pytest.fixture(scope="module")
def model():
    import keras

    from pipeline.text.model import MODELS

    keras.utils.set_random_seed(7)
    m = MODELS["lstm"](11, 8)
    # Larger weights than the initialiser's, so the test is not passed by near-uniform outputs.
    m.set_weights([m.get_weights()[0]] + [w * 3 for w in m.get_weights()[1:]])
    return m


@pytest.mark.parametrize("length", [1, 5, 12, 30])
def test_window_probs_match_the_models_forward_pass(model, length):
    windows = np.random.default_rng(length).integers(0, 11, size=(3, length))
    ours = Generator(model, maxlen=12).window_probs(windows)
    theirs = np.asarray(model(windows.astype("int32")))
    assert ours.shape == (3, 11)
    np.testing.assert_allclose(ours, theirs, atol=2e-6)
    np.testing.assert_allclose(ours.sum(axis=-1), 1.0, atol=1e-6)


def _greedy_reference(model, prompt, length, maxlen):
    text = list(prompt)
    for _ in range(length):
        window = np.array([text[-maxlen:]], dtype="int32")
        text.append(int(np.argmax(np.asarray(model(window))[0])))
    return text[len(prompt):]


def test_window_mode_is_model_of_the_last_maxlen_characters_at_every_step(model):
    maxlen, prompt = 6, [3, 1, 4]
    gen = Generator(model, maxlen)
    out = gen.generate(prompt, [1.0], 20, np.random.default_rng(0), mode="window", greedy=True)
    assert out[0].tolist() == _greedy_reference(model, prompt, 20, maxlen)


@pytest.mark.parametrize("prompt_len, length", [(0, 14), (2, 14), (6, 14), (9, 14), (9, 1), (2, 1)])
def test_window_mode_gives_the_models_probabilities_at_every_step(model, prompt_len, length):
    """The pipelined window mode: at every step, for every stream, the logits it draws from are
    model(the last maxlen ids of that stream's text), whether the text is shorter than maxlen, as
    long, or longer. Random draws make the streams' texts differ."""
    maxlen, n = 6, 3  # length 1 < maxlen / 4: the unpipelined path
    rng = np.random.default_rng(prompt_len)
    prompt = rng.integers(0, 11, prompt_len)
    seen = []

    def draw(logits):
        seen.append(np.array(logits))
        return rng.integers(0, 11, len(logits))

    out = np.stack(list(Generator(model, maxlen).window_stream(prompt[-maxlen:], n, length, draw)), axis=1)
    assert out.shape == (n, length) and len(seen) == length
    for k, logits in enumerate(seen):
        windows = np.concatenate([np.tile(prompt, (n, 1)), out[:, :k]], axis=1)[:, -maxlen:]
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        if windows.shape[1] == 0:  # nothing read yet: the softmax of the output bias
            b = model.get_layer("next_char").get_weights()[1]
            expected = np.tile(np.exp(b) / np.exp(b).sum(), (n, 1))
        else:
            expected = np.asarray(model(windows.astype("int32")))
        np.testing.assert_allclose(probs, expected, atol=2e-6, err_msg=f"step {k}")


def test_stateful_mode_matches_the_model_while_shorter_than_maxlen(model):
    maxlen, prompt = 30, [3, 1, 4]
    gen = Generator(model, maxlen)
    stateful = gen.generate(prompt, [1.0], 20, np.random.default_rng(0), mode="stateful", greedy=True)
    window = gen.generate(prompt, [1.0], 20, np.random.default_rng(0), mode="window", greedy=True)
    assert stateful[0].tolist() == window[0].tolist() == _greedy_reference(model, prompt, 20, maxlen)
    # And step by step, the carried state gives model(whole text so far).
    text = np.array(prompt + stateful[0].tolist())
    h, state = gen.run(text[None, :3])
    for k in range(3, 12):
        np.testing.assert_allclose(_softmax(gen.logits(h)), np.asarray(model(text[None, :k].astype("int32"))), atol=2e-6)
        h, state = gen.step(text[k:k + 1], state)


@pytest.mark.parametrize("vocab, units", [(11, 8), (57, 128)])
def test_compiled_step_for_a_few_streams_gives_the_models_probabilities(vocab, units, monkeypatch):
    """Up to FEW_STREAMS streams, an LSTM step is `lstm_loops.step` (streams in fours, then one by
    one): after every position its probabilities are model(the text so far), and its state is
    the numpy step's, for batches that are all fours, all singles and both."""
    import keras

    import pipeline.text.generator as generator
    from pipeline.text.model import MODELS

    keras.utils.set_random_seed(11)
    model = MODELS["lstm"](vocab, units)
    model.set_weights([w * 3 for w in model.get_weights()])  # saturating gates too, not only the linear range
    gen = Generator(model, maxlen=40)
    rng = np.random.default_rng(units)
    for n in (1, 3, 4, 5, 8):
        text = rng.integers(0, vocab, size=(n, 9))
        state = gen.zero_state(n)
        for t in range(text.shape[1]):
            h, state = gen.step(text[:, t], state)
            expected = np.asarray(model(text[:, :t + 1].astype("int32")))
            np.testing.assert_allclose(_softmax(gen.logits(h)), expected, atol=2e-6, err_msg=f"{n} streams, position {t}")
        monkeypatch.setattr(generator, "FEW_STREAMS", 0)  # the numpy step on the same text
        h_numpy, state_numpy = gen.run(text)
        monkeypatch.undo()
        np.testing.assert_allclose(h, h_numpy, atol=1e-6)
        np.testing.assert_allclose(state[0][1], state_numpy[0][1], atol=1e-5)


def test_sampled_streams_are_reproducible_from_the_seed(model):
    gen = Generator(model, 10)
    a = gen.generate([1, 2, 3], [0.2, 0.5, 1.0, 1.2], 50, np.random.default_rng(42))
    b = gen.generate([1, 2, 3], [0.2, 0.5, 1.0, 1.2], 50, np.random.default_rng(42))
    assert a.shape == (4, 50) and np.array_equal(a, b)
    assert a.min() >= 0 and a.max() < 11


def test_empty_prompt_starts_from_the_initial_state(model):
    gen = Generator(model, 10)
    out = gen.generate([], [1.0], 6, np.random.default_rng(0), greedy=True)
    b = model.get_layer("next_char").get_weights()[1]
    assert out[0, 0] == int(np.argmax(b))  # h = 0 before any input: the softmax of the bias alone
    assert out[0, 1:].tolist() == _greedy_reference(model, [int(out[0, 0])], 5, 10)


def test_streams_with_their_own_generators_do_not_depend_on_the_batch(model):
    gen = Generator(model, 10)
    temps = [0.5, 1.0, 1.2]
    batched = gen.generate([4, 2], temps, 40, [np.random.default_rng([9, k]) for k in range(3)])
    for k, t in enumerate(temps):
        alone = gen.generate([4, 2], [t], 40, [np.random.default_rng([9, k])])
        assert alone[0].tolist() == batched[k].tolist()


def test_stream_yields_what_generate_returns(model):
    gen = Generator(model, 10)
    streamed = np.stack(list(gen.stream([1, 2, 3], [0.5, 1.0], 30, np.random.default_rng(5))), axis=1)
    assert np.array_equal(streamed, gen.generate([1, 2, 3], [0.5, 1.0], 30, np.random.default_rng(5)))


def test_stateful_mode_reads_the_whole_prompt_even_past_maxlen(model):
    maxlen, prompt = 5, [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    gen = Generator(model, maxlen)
    first = next(gen.stream(prompt, [1.0], 1, np.random.default_rng(0), mode="stateful", greedy=True))
    expected = np.asarray(model(np.array([prompt], dtype="int32"))).argmax(axis=-1)
    assert first.tolist() == expected.tolist()
    first_window = next(gen.stream(prompt, [1.0], 1, np.random.default_rng(0), mode="window", greedy=True))
    assert first_window.tolist() == np.asarray(model(np.array([prompt[-maxlen:]], dtype="int32"))).argmax(axis=-1).tolist()


def test_progress_line_appears_only_on_a_terminal_after_the_delay():
    import io

    from pipeline.text.generator import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    quiet, shown = io.StringIO(), Tty()
    for out, delay in ((quiet, 0.0), (shown, 0.0)):
        bar = Progress(10, "generating", delay=delay, stream=out)
        for k in range(1, 11):
            bar.update(k)
        bar.close()
    assert quiet.getvalue() == ""
    assert ("\rgenerating [" + "#" * 30 + "] 10/10 (") in shown.getvalue()
    assert shown.getvalue().endswith("/s)\n")
    late = Tty()
    bar = Progress(10, "generating", delay=60.0, stream=late)
    bar.update(10)
    bar.close()
    assert late.getvalue() == ""
