"""Property tests (Hypothesis) of the blend and the stability maths: what must hold for any input."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from PETStabilityDenoiseLib.engine.blend import blend
from PETStabilityDenoiseLib.engine.stability import WelfordAccumulator

SHAPE = st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5))
finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
positive = st.floats(0, 1e3, allow_nan=False, width=32)
alphas = st.floats(0, 100, allow_nan=False)


@st.composite
def volumes(draw):
    """(x0, network output, S) of one random shape; S >= 0 with a positive mean."""
    shape = draw(SHAPE)
    x0 = draw(arrays(np.float32, shape, elements=finite))
    net = draw(arrays(np.float32, shape, elements=finite))
    stability = draw(arrays(np.float32, shape, elements=positive))
    stability.flat[0] = max(float(stability.flat[0]), 1e-3)
    return x0, net, stability


@settings(max_examples=200, deadline=None)
@given(volumes(), alphas)
def test_normalised_stability_stays_in_0_1(data, alpha):
    _, s_norm = blend(*data, alpha)
    assert ((s_norm >= 0) & (s_norm <= 1)).all()


@settings(max_examples=200, deadline=None)
@given(volumes())
def test_alpha_zero_gives_the_network_output(data):
    blended, s_norm = blend(*data, 0.0)
    np.testing.assert_array_equal(blended, data[1])
    assert (s_norm == 0).all()


@settings(max_examples=200, deadline=None)
@given(volumes(), alphas)
def test_the_blend_lies_between_the_pet_and_the_network_output(data, alpha):
    x0, net, _ = data
    blended, _ = blend(*data, alpha)
    low, high = np.minimum(x0, net), np.maximum(x0, net)
    slack = 1e-5 * np.maximum(np.abs(low), np.abs(high)) + 1e-6  # float32 rounding of a convex combination
    assert ((blended >= low - slack) & (blended <= high + slack)).all()


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 12).flatmap(lambda n: arrays(np.float64, (n, 3, 4), elements=st.floats(-1e4, 1e4))))
def test_welford_equals_numpy_std_for_any_sequence(samples):
    accumulator = WelfordAccumulator()
    for sample in samples:
        accumulator.update(torch.from_numpy(sample))
    np.testing.assert_allclose(accumulator.std().numpy(), samples.std(axis=0, ddof=1), rtol=1e-7, atol=1e-6)
    np.testing.assert_allclose(accumulator.mean.numpy(), samples.mean(axis=0), rtol=1e-9, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(volumes(), alphas, st.tuples(*[st.tuples(st.integers(0, 3), st.integers(0, 3))] * 3))
def test_padding_with_air_does_not_change_the_head(data, alpha, pad):
    # The engine normalises S by its mean over the head, so air around it must not change the blend there.
    x0, net, stability = data
    head_mean = float(stability.mean(dtype=np.float64))
    inside, s_inside = blend(x0, net, stability, alpha, stability_mean=head_mean)
    padded = [np.pad(a, pad) for a in (x0, net, stability)]
    blended, s_norm = blend(*padded, alpha, stability_mean=head_mean)
    region = tuple(slice(before, before + n) for (before, _), n in zip(pad, x0.shape))
    np.testing.assert_array_equal(blended[region], inside)
    np.testing.assert_array_equal(s_norm[region], s_inside)
