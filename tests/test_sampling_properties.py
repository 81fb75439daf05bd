"""Property-based: the sampler returns a valid index for any probability vector and temperature."""
import numpy as np
from hypothesis import given, settings, strategies as st

from pipeline.text.generator import sample_next

# Entries a model or a user could hand the sampler: exact zeros, denormals, a certain 1.0, ordinary
# probabilities and unnormalised weights up to 1e300.
entries = st.one_of(st.just(0.0), st.sampled_from([5e-324, 1e-310, 2.2e-308]), st.just(1.0),
                    st.floats(0.0, 1.0), st.floats(0.0, 1e300))
vectors = st.lists(entries, min_size=1, max_size=64).map(np.array)
temperatures = st.one_of(st.floats(1e-300, 1e-3), st.floats(1e-3, 10.0), st.floats(10.0, 1e6))


@settings(max_examples=400, deadline=None)
@given(p=vectors, t=temperatures, seed=st.integers(0, 2**32 - 1))
def test_any_vector_and_temperature_give_a_valid_index(p, t, seed):
    with np.errstate(invalid="raise", over="raise"):  # a NaN or overflow anywhere fails the test
        i = sample_next(p, t, np.random.default_rng(seed))
    assert isinstance(i, np.integer) and 0 <= i < len(p)
    if p.sum() > 0:
        assert p[i] > 0  # an impossible character is never drawn
    batch = np.stack([p, p[::-1]])
    idx = sample_next(batch, [t, t], np.random.default_rng(seed))
    assert idx.shape == (2,) and all(0 <= j < len(p) for j in idx)


@settings(max_examples=300, deadline=None)
@given(p=vectors, t=st.floats(1e-300, 1e-12), seed=st.integers(0, 2**32 - 1))
def test_as_temperature_goes_to_zero_it_is_the_argmax(p, t, seed):
    if p.max() == 0:
        return  # all zero: no argmax to speak of (covered above: uniform)
    i = sample_next(p, t, np.random.default_rng(seed))
    top = p.max()
    # exp(-log(top / p_j) / T) underflows to 0 unless log(top / p_j) < 745 T <= 7.5e-10: only the
    # maximum, or entries within rounding of it, can be drawn.
    assert p[i] >= top * (1 - 1e-9)
    if not ((p < top) & (p >= top * (1 - 1e-9))).any():
        assert p[i] == top


@settings(max_examples=300, deadline=None)
@given(logits=st.lists(st.floats(-50, 50), min_size=1, max_size=64).map(lambda v: np.array([v])),
       t=st.floats(1e-3, 100.0), seed=st.integers(0, 2**32 - 1))
def test_sampling_from_logits_is_sampling_from_their_softmax(logits, t, seed):
    from pipeline.text.generator import sample_logits

    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert sample_logits(logits, [t], np.random.default_rng(seed)) == sample_next(softmax, [t], np.random.default_rng(seed))


def test_non_finite_logits_still_give_a_valid_index():
    from pipeline.text.generator import sample_logits

    rng = np.random.default_rng(0)
    assert sample_logits(np.array([[np.nan, 1.0, np.inf, 0.0]]), [0.5], rng)[0] in range(4)
    assert sample_logits(np.array([[np.nan, np.nan]]), [1.0], rng)[0] in (0, 1)
    assert sample_logits(np.array([[-np.inf, 3.0, -np.inf]]), [1.0], rng)[0] == 1
