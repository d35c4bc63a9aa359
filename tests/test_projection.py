"""PCA-whitening at several D from one projection (rdfa.projection), as Table 1's stage uses it."""
import numpy as np
import pytest

from rdfa.pooling import l2_normalize, l2_rows_into
from rdfa.projection import whitened_dims
from rdfa.whitening import PCA, fit_pca, whitened


def test_every_d_is_the_whitening_with_that_many_leading_axes():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 40)) @ rng.normal(size=(40, 40))).astype(np.float32)
    pca = fit_pca(x[:200], 24)
    for chunk in (1, 7, 64, 1000):
        out = whitened_dims(x, pca, [6, 24, 13], chunk)
        assert sorted(out) == [6, 13, 24]
        for dim, rows in out.items():
            assert rows.dtype == np.float32 and rows.shape == (300, dim)
            ref = whitened(x, PCA(pca.mean, pca.components[:, :dim], pca.eigenvalues[:dim]))
            # The same float64 arithmetic; only the matrix product's blocking may differ (last bits).
            np.testing.assert_allclose(rows, ref, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, rtol=1e-6)


def test_bad_dims_and_chunks_are_refused():
    pca = fit_pca(np.random.default_rng(1).normal(size=(50, 8)), 4)
    x = np.zeros((3, 8))
    for dims in ([5], [0, 2], []):
        with pytest.raises(ValueError, match="must be between 1 and the 4 axes"):
            whitened_dims(x, pca, dims, 10)
    with pytest.raises(ValueError, match="chunk_rows"):
        whitened_dims(x, pca, [2], 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_l2_rows_into_equals_l2_normalize_bit_for_bit(dtype):
    rng = np.random.default_rng(2)
    rows = (rng.normal(size=(257, 96)) * np.linspace(5, 0.01, 96)).astype(dtype)
    rows[3] = 0  # a zero row stays zero
    for width in (96, 40, 1):
        out = np.full((257, width), np.nan, dtype=np.float32)
        l2_rows_into(rows[:, :width], out)
        np.testing.assert_array_equal(out, l2_normalize(rows[:, :width]).astype(np.float32))
