"""PCA (eq. 4) and PCA-whitening (eq. 6)."""
import numpy as np
import pytest

from rdfa.whitening import fit_pca, whiten, whitening_note


@pytest.mark.parametrize("shape", [(50, 8), (6, 20)])  # covariance path and Gram path
def test_pca_matches_svd(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) * np.linspace(3, 0.5, shape[1])
    k = min(shape) - 1
    pca = fit_pca(x, k)
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    np.testing.assert_allclose(pca.eigenvalues, s[:k] ** 2 / (shape[0] - 1), rtol=1e-8)
    for j in range(k):  # same axes up to sign
        assert abs(abs(pca.components[:, j] @ vt[j]) - 1) < 1e-8


def test_whitened_training_data_has_identity_covariance_before_l2():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    pca = fit_pca(x, 5)
    projected = (x - pca.mean) @ pca.components / np.sqrt(pca.eigenvalues)
    np.testing.assert_allclose(np.cov(projected.T), np.eye(5), atol=1e-8)
    out = whiten(x, pca)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0)
    np.testing.assert_allclose(out, projected / np.linalg.norm(projected, axis=1, keepdims=True), rtol=1e-10)


def test_dimension_beyond_training_set_is_a_clear_error():
    x = np.random.default_rng(2).normal(size=(10, 50))
    with pytest.raises(ValueError, match=r"whitening.D=20 is larger than the 9 principal axes that 10 training"):
        fit_pca(x, 20, name="whitening.D")


def test_warning_when_D_approaches_training_size():
    assert whitening_note(2048, 512) is None
    assert whitening_note(40000, 512) is None
    note = whitening_note(253, 256)
    assert note and "D=256" in note and "253" in note
    assert whitening_note(1918, 512)  # synth: D=512 on 1918 region descriptors
