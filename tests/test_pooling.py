"""Region pooling (eqs. 3, 4, 5, 9) against direct per-position computations."""
import numpy as np
import pytest
from scipy.linalg import logm

from rdfa.pooling import first_order, reduce_local, regularized_log, second_moments, second_order, upper_triangle


@pytest.fixture
def example():
    rng = np.random.default_rng(0)
    fmap = np.maximum(rng.normal(size=(4, 5, 6)), 0)
    masks = np.zeros((2, 4, 5), bool)
    masks[0, 1:3, 1:4] = True
    masks[1] = True
    beta = rng.uniform(0.5, 2, size=6)
    alpha = rng.uniform(0, 1, size=(4, 5))
    return fmap, masks, beta, alpha


def test_first_order_eq3_and_eq9(example):
    fmap, masks, beta, alpha = example
    for use_alpha in (False, True):
        out = first_order(fmap, masks, beta, alpha if use_alpha else None)
        for m in range(2):
            acc = np.zeros(6)
            for y in range(4):
                for x in range(5):
                    if masks[m, y, x]:
                        acc += (alpha[y, x] if use_alpha else 1.0) * fmap[y, x]
            ref = beta * acc
            np.testing.assert_allclose(out[m], ref / np.linalg.norm(ref), rtol=1e-12)


def test_reduce_local_eq4(example):
    fmap, _, beta, _ = example
    u = np.linalg.qr(np.random.default_rng(1).normal(size=(6, 3)))[0]
    local = reduce_local(fmap, beta, u)
    np.testing.assert_allclose(local[2, 3], u.T @ (beta * fmap[2, 3]), rtol=1e-12)


def test_second_order_eq5_against_scipy_logm(example):
    fmap, masks, _, alpha = example
    local = fmap[..., :3] + 0.1  # K' = 3, full-rank regions
    eps = 1e-3
    out = second_order(local, masks, alpha, eps)
    iu = np.triu_indices(3)
    for m in range(2):
        g = np.zeros((3, 3))
        total = 0.0
        for y in range(4):
            for x in range(5):
                if masks[m, y, x]:
                    g += alpha[y, x] * np.outer(local[y, x], local[y, x])
                    total += alpha[y, x]
        g /= total
        g += eps * np.trace(g) / 3 * np.eye(3)
        ref = np.real(logm(g))[iu]
        np.testing.assert_allclose(out[m], ref / np.linalg.norm(ref), rtol=1e-8, atol=1e-10)
    assert out.shape == (2, 6)  # K'(K'+1)/2


def test_singular_region_gets_a_finite_log():
    local = np.zeros((1, 2, 4))
    local[0, 0] = [1, 2, 0, 0]
    local[0, 1] = [0, 1, 1, 0]  # 2 positions < K' = 4: G is singular
    g = second_moments(local, np.ones((1, 1, 2), bool), np.ones((1, 2)))
    assert np.linalg.matrix_rank(g[0]) == 2
    out = regularized_log(g, 1e-3)
    assert np.all(np.isfinite(out))
    # the regularisation constant changes the result (it is a real parameter)
    assert not np.allclose(out, regularized_log(g, 1e-1))


def test_zero_region_does_not_produce_nan():
    out = second_order(np.zeros((2, 2, 3)), np.ones((1, 2, 2), bool), np.zeros((2, 2)), 1e-3)
    assert np.all(np.isfinite(out))


def test_upper_triangle_order():
    m = np.arange(9.0).reshape(3, 3)
    np.testing.assert_array_equal(upper_triangle(m), [0, 1, 2, 4, 5, 8])


def test_log_eps_must_be_positive():
    with pytest.raises(ValueError, match="log_eps"):
        regularized_log(np.eye(2)[None], 0.0)
