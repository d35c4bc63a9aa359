"""eq. (1) and eq. (2) against direct per-position / per-channel loops."""
import numpy as np
import pytest

from rdfa.weights import channel_sums, channel_weights, response_fractions, spatial_weights


def test_alpha_matches_eq1_loop():
    rng = np.random.default_rng(0)
    fmap = np.maximum(rng.normal(size=(5, 7, 11)), 0)
    summed = np.zeros((5, 7))
    for y in range(5):
        for x in range(7):
            summed[y, x] = sum(fmap[y, x, k] for k in range(11))
    expected = summed / np.sqrt(sum(v * v for v in summed.ravel()))
    np.testing.assert_allclose(spatial_weights(fmap), expected, rtol=1e-12)
    assert np.isclose(np.linalg.norm(spatial_weights(fmap)), 1.0)


def test_alpha_of_silent_map_is_uniform_not_nan():
    alpha = spatial_weights(np.zeros((3, 4, 5)))
    assert np.all(np.isfinite(alpha)) and np.allclose(alpha, alpha[0, 0])


def test_beta_matches_eq2_loop_and_favours_sparse_channels():
    rng = np.random.default_rng(1)
    fmap = np.maximum(rng.normal(size=(6, 6, 4)), 0)
    fmap[..., 0] = 0
    fmap[0, 0, 0] = 1.0  # channel 0 fires at one position only: sparse
    fmap[..., 3] = 1.0  # channel 3 fires everywhere: dense
    eps = 1e-3
    k_count = 4
    q = [sum(1 for y in range(6) for x in range(6) if fmap[y, x, k] > 0) / 36 for k in range(k_count)]
    expected = [np.log((k_count * eps + sum(q)) / (eps + qk)) for qk in q]
    beta = channel_weights(fmap, eps)
    np.testing.assert_allclose(beta, expected, rtol=1e-12)
    assert beta[0] == beta.max() and beta[3] == beta.min()


def test_beta_rejects_nonpositive_eps():
    with pytest.raises(ValueError, match="eps"):
        channel_weights(np.ones((2, 2, 2)), 0.0)


def test_response_fractions_of_a_float16_map_count_its_positive_values():
    """The stored float16 maps: the fraction of positions ``> 0``, with -0, negatives, infinity, NaN
    and the smallest subnormal among the values."""
    rng = np.random.default_rng(3)
    fmap = (rng.random((4, 5, 8)) * 4 - 1).astype(np.float16)  # a quarter negative
    fmap[0, 0, :6] = [-0.0, np.inf, -np.inf, np.nan, np.float16(6e-8), 0.0]
    fmap[0, 1, :2] = np.array([0x7C01, 0x7FFF], dtype=np.uint16).view(np.float16)  # the NaNs next to inf
    expected = [sum(1 for y in range(4) for x in range(5) if float(fmap[y, x, k]) > 0) / 20 for k in range(8)]
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(response_fractions(fmap), expected)
        np.testing.assert_array_equal(response_fractions(fmap.astype(np.float32)), expected)
        np.testing.assert_array_equal(channel_weights(fmap, 1e-3), channel_weights(fmap.astype(np.float64), 1e-3))


def test_spatial_weights_from_given_channel_sums_are_the_same():
    fmap = np.maximum(np.random.default_rng(4).normal(size=(5, 4, 6)), 0)
    np.testing.assert_array_equal(spatial_weights(fmap, channel_sums(fmap)), spatial_weights(fmap))
    np.testing.assert_allclose(channel_sums(fmap), [[fmap[y, x].sum() for x in range(4)] for y in range(5)])
