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
    from rdfa.whitening import Whitening, whitening_rule

    assert "shrink" in whitening_note(1918, 512)  # points to the recommended mode
    assert "damped" in whitening_note(1918, 512, Whitening("shrink", shrink=30))
    assert whitening_note(10, 512, Whitening("none")) is None  # no PCA, no D
    rule = whitening_rule(1918, 512)
    assert rule["within_rule"] is False and rule["D_over_n"] == round(512 / 1918, 4) and "n/4" in rule["rule"]
    assert whitening_rule(50381, 512)["within_rule"] is True


def test_pca_fed_in_blocks_matches_the_svd_of_all_rows_at_once():
    """The streamed fit (Gram rows kept until there are d of them, then the covariance accumulated block by
    block, top axes only) gives the SVD's axes whatever the block sizes."""
    from rdfa.whitening import StreamingPCA, top_eigenvectors

    rng = np.random.default_rng(3)
    d = 40
    x = rng.normal(size=(300, d)) * np.linspace(4, 0.2, d) + 5.0  # far from the origin: centring matters
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    for blocks in ([300], [10, 25, 5, 260], [39, 1, 100, 160]):
        fitter = StreamingPCA(d, chunk_rows=17)
        for rows in np.split(x, np.cumsum(blocks)[:-1]):
            fitter.add(rows)
        pca = fitter.fit(12)
        np.testing.assert_allclose(pca.eigenvalues, s[:12] ** 2 / 299, rtol=1e-9)
        np.testing.assert_allclose(np.abs(np.sum(pca.components * vt[:12].T, axis=0)), 1.0, atol=1e-9)
        np.testing.assert_allclose(pca.mean, x.mean(0), atol=1e-12)
        np.testing.assert_allclose(pca.total_variance, (s ** 2).sum() / 299, rtol=1e-12)
    # top k only (LAPACK's MRRR) against the full decomposition
    cov = np.cov(x.T)
    vals, vecs = top_eigenvectors(cov, 5)
    full_vals, full_vecs = np.linalg.eigh(cov)
    np.testing.assert_allclose(vals, full_vals[::-1][:5], rtol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(vecs * full_vecs[:, ::-1][:, :5], axis=0)), 1.0, atol=1e-9)


def test_float32_rows_multiply_in_float32_within_a_stated_tolerance():
    """Stored descriptors are float32 and their covariance blocks are multiplied in float32 (twice as fast):
    eigenvalues within 1e-5 of the largest, whitened vectors within 1e-4 of the float64 fit's."""
    rng = np.random.default_rng(4)
    d = 64
    x = (rng.normal(size=(5000, d)) * np.geomspace(3, 0.03, d) + 0.5).astype(np.float32)
    exact = fit_pca(x.astype(np.float64), 32)
    fast = fit_pca(x, 32, chunk_rows=4096)
    assert np.abs(fast.eigenvalues - exact.eigenvalues).max() < 1e-5 * exact.eigenvalues[0]
    np.testing.assert_allclose(whiten(x[:200], fast), whiten(x[:200], exact), atol=1e-4)


def _plain_whitening(x, train, dim, scale_of):
    """Whitening to ``dim`` from NumPy's own covariance and eigendecomposition: an independent reference."""
    mean = train.mean(0)
    cov = np.cov(train.T)
    values, vectors = np.linalg.eigh(cov)
    values, vectors = values[::-1][:dim], vectors[:, ::-1][:, :dim]
    projected = (x - mean) @ vectors * scale_of(values, np.trace(cov) / len(cov))
    return projected / np.linalg.norm(projected, axis=1, keepdims=True)


def _same_up_to_axis_signs(a, b):
    # The reference's axes may point the other way: compare the whitened rows' absolute coordinates.
    np.testing.assert_allclose(np.abs(a), np.abs(b), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("mode,setting,scale_of", [
    ("pca", {}, lambda lam, mean: lam ** -0.5),
    ("shrink", {"shrink": 0.7}, lambda lam, mean: (lam + 0.7 * mean) ** -0.5),
    ("shrink", {"shrink": 0.0}, lambda lam, mean: lam ** -0.5),  # no shrinkage: eq. 6
    ("power", {"power": 0.2}, lambda lam, mean: lam ** -0.2),
    ("power", {"power": 0.0}, lambda lam, mean: np.ones_like(lam)),  # the PCA rotation alone
])
def test_every_whitening_mode_scales_the_principal_axes_as_documented(mode, setting, scale_of):
    from rdfa.whitening import Whitening

    rng = np.random.default_rng(3)
    train = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    x = rng.normal(size=(20, 12)) @ rng.normal(size=(12, 12))
    pca = fit_pca(train, 7)
    out = whiten(x, pca, Whitening(mode, **setting))
    _same_up_to_axis_signs(out, _plain_whitening(x, train, 7, scale_of))


def test_shrinkage_uses_the_mean_over_all_axes_so_each_d_is_the_leading_columns():
    from rdfa.projection import whitened_variants
    from rdfa.whitening import PCA, Whitening

    rng = np.random.default_rng(4)
    train = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16))
    pca = fit_pca(train, 10)
    modes = [Whitening("shrink", shrink=2.0), Whitening("power", power=0.3), Whitening("pca")]
    together = whitened_variants(train[:30], pca, [(w, [4, 10]) for w in modes], chunk_rows=7)
    for w, by_dim in zip(modes, together):
        for dim, rows in by_dim.items():
            alone = whiten(train[:30], PCA(pca.mean, pca.components[:, :dim], pca.eigenvalues[:dim],
                                           pca.total_variance), w)
            np.testing.assert_allclose(rows, alone, rtol=1e-6, atol=1e-7)


def test_mode_none_is_the_descriptors_l2_normalised_and_bad_settings_are_refused():
    from rdfa.whitening import Whitening

    x = np.random.default_rng(5).normal(size=(6, 9))
    np.testing.assert_allclose(whiten(x, None, Whitening("none")), x / np.linalg.norm(x, axis=1, keepdims=True))
    for bad, match in (({"mode": "zca"}, "whitening.mode"), ({"mode": "power", "power": 0.7}, "whitening.power"),
                       ({"mode": "shrink", "shrink": -1.0}, "whitening.shrink")):
        with pytest.raises(ValueError, match=match):
            Whitening(**bad)


def test_whitening_params_are_checked_with_the_key_named():
    from rdfa.settings import ParamError, parse_settings

    def whitening_setting(params):
        return parse_settings(params).whitening.setting()

    def training_dataset(params, dataset):
        return parse_settings(params).training_dataset(dataset)

    assert whitening_setting({}).mode == "pca"
    assert whitening_setting({"whitening": {"mode": "shrink", "shrink": 2}}).shrink == 2.0
    with pytest.raises(ParamError, match="'whitening.mode'"):
        whitening_setting({"whitening": {"mode": "zca"}})
    with pytest.raises(ParamError, match="'whitening.power'"):
        whitening_setting({"whitening": {"mode": "power", "power": 1}})
    params = {"datasets": ["oxford5k", "paris6k"], "whitening": {"train_on": {"oxford5k": "paris6k"}}}
    assert training_dataset(params, "oxford5k") == "paris6k"
    assert training_dataset(params, "paris6k") == "paris6k"
    with pytest.raises(ParamError, match="'whitening.train_on.oxford5k' is 'holidays', which is not in 'datasets'"):
        training_dataset({"datasets": ["oxford5k"], "whitening": {"train_on": {"oxford5k": "holidays"}}}, "oxford5k")
    chain = {"datasets": ["a", "b", "c"], "whitening": {"train_on": {"a": "b", "b": "c"}}}
    with pytest.raises(ParamError, match="a training set must learn on itself"):
        training_dataset(chain, "a")


def test_whitened_is_whiten_in_float32_bit_for_bit():
    from rdfa.whitening import Whitening, whiten, whitened

    rng = np.random.default_rng(9)
    train = rng.normal(size=(120, 12)) @ rng.normal(size=(12, 12))
    pca = fit_pca(train, 6)
    for rows in (train[:40], train[:40].astype(np.float32)):
        for mode in (Whitening("pca"), Whitening("shrink", shrink=1.0), Whitening("none")):
            np.testing.assert_array_equal(whitened(rows, pca, mode), whiten(rows, pca, mode).astype(np.float32))
