"""Region pooling (eqs. 3, 4, 5, 9) against direct per-position computations."""
import numpy as np
import pytest
from scipy.linalg import logm

from rdfa.pooling import (
    GRAM_STEP,
    first_order,
    log_second_moments,
    reduce_local,
    region_descriptors,
    region_descriptors_batch,
    regularized_log,
    second_moments,
    second_order,
    upper_triangle,
)


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


def test_reduce_local_leaves_out_dead_channels_exactly():
    rng = np.random.default_rng(4)
    fmap = np.maximum(rng.normal(size=(3, 4, 10)), 0)
    fmap[..., [1, 4, 5]] = 0  # channels zero at every position (ReLU)
    beta = rng.uniform(0.5, 2, size=10)
    u = np.linalg.qr(rng.normal(size=(10, 4)))[0]
    local = reduce_local(fmap.astype(np.float16), beta, u)
    for y in range(3):
        for x in range(4):
            ref = sum(u[c] * beta[c] * float(np.float16(fmap[y, x, c])) for c in range(10))
            np.testing.assert_allclose(local[y, x], ref, rtol=1e-12, atol=1e-14)


def literal_log_second_moment(local, mask, alpha, eps):
    """eq. 5 for one region by loops and scipy's logm: alpha-weighted mean of f f^T (uniform if alpha
    is zero on the region), ridge eps * tr / K'."""
    kp = local.shape[-1]
    g, total = np.zeros((kp, kp)), 0.0
    use_alpha = alpha[mask].sum() > 0
    for y, x in zip(*np.nonzero(mask)):
        weight = alpha[y, x] if use_alpha else 1.0
        g += weight * np.outer(local[y, x], local[y, x])
        total += weight
    g /= total
    return np.real(logm(g + eps * np.trace(g) / kp * np.eye(kp)))


@pytest.mark.slow
def test_log_second_moments_of_regions_with_fewer_positions_than_k_prime():
    """Regions of 1 to 40 positions with K' = 40 (the small Gram matrix route, padded to GRAM_STEP) and
    regions of more positions (the K' x K' route) in one batch, against scipy's logm region by region."""
    rng = np.random.default_rng(5)
    kp, eps = 40, 1e-2
    images, expected = [], []
    for h, w in ((8, 8), (7, 9)):
        local = rng.normal(size=(h, w, kp)) * rng.uniform(size=kp) ** 2
        alpha = rng.uniform(0, 1, size=(h, w))
        alpha[0, :] = 0
        sizes = (1, 3, GRAM_STEP, GRAM_STEP + 1, 30, 40, 50, h * w)
        masks = np.zeros((len(sizes), h, w), bool)
        for m, n in enumerate(sizes):
            masks[m].flat[rng.permutation(h * w)[:n]] = True
        masks[0] = False
        masks[0, 0, 0] = True  # one position where alpha is 0: the uniform fallback
        images.append((local, masks, alpha))
        expected += [literal_log_second_moment(local, m, alpha, eps) for m in masks]
    out = log_second_moments(*[list(x) for x in zip(*images)], eps)
    assert out.shape == (16, kp, kp)
    scale = max(np.abs(e).max() for e in expected)
    for got, want in zip(out, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * scale)
    # the same matrices as the K' x K' route everywhere, to rounding
    for local, masks, alpha in images:
        np.testing.assert_allclose(log_second_moments([local], [masks], [alpha], eps),
                                   regularized_log(second_moments(local, masks, alpha), eps), rtol=0, atol=1e-11)


def test_region_descriptors_batch_equals_one_image_at_a_time():
    rng = np.random.default_rng(6)
    components = np.linalg.qr(rng.normal(size=(24, 20)))[0]
    fmaps, masks = [], []
    for h, w in ((5, 6), (6, 6), (4, 7)):
        fmap = np.maximum(rng.normal(size=(h, w, 24)), 0).astype(np.float16)
        fmap[..., :3] = 0
        fmaps.append(fmap)
        masks.append(rng.uniform(size=(4, h, w)) < rng.uniform(0.1, 0.9, size=(4, 1, 1)))
    batch = region_descriptors_batch(fmaps, masks, components, 1e-6, 1e-2)
    for fmap, image_masks, rows in zip(fmaps, masks, batch):
        np.testing.assert_array_equal(rows, region_descriptors(fmap, image_masks, components, 1e-6, 1e-2))


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
