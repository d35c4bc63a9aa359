"""The methods stage's shared work (stages/methods.py): row selection and the reuse of the whitening stage's fit."""
import h5py
import numpy as np

from rdfa.whitening import PCA_WHITENING, Whitening, fit_pca
from stages.methods import Rows, stored_whitening, whitenings


def test_rows_of_some_images_keep_each_images_rows_in_order():
    rows = Rows(np.arange(10)[:, None], np.array([0, 2, 3, 7, 10]))
    picked = rows.select(np.array([3, 1]))
    assert picked.rows[:, 0].tolist() == [7, 8, 9, 2] and picked.offsets.tolist() == [0, 3, 4]
    none = rows.select(np.array([], dtype=np.int64))
    assert none.rows.shape == (0, 1) and none.offsets.tolist() == [0]


def write_whitened(path, pca, train, learned_on="toy", n_train=None, mode="pca"):
    with h5py.File(path, "w") as f:
        for group in ("db", "query", "full"):
            f[f"{group}/desc"] = np.zeros((len(train), pca.components.shape[1]), np.float32)
            f[f"{group}/offsets"] = np.array([0, len(train)])
        for name in ("mean", "components", "eigenvalues"):
            f[f"transform/{name}"] = getattr(pca, name)
        f.attrs.update({"D": pca.components.shape[1], "learned_on": learned_on,
                        "n_train": len(train) if n_train is None else n_train, "note": "", "mode": mode,
                        "shrink": 1.0, "power": 0.5})


def test_the_whitening_stage_fit_is_reused_only_when_it_is_the_fit_o2_r_would_make(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(60, 10)).astype(np.float32)
    path = tmp_path / "whitened.h5"
    pca = fit_pca(train, 8)
    write_whitened(path, pca, train)
    stored = stored_whitening(path, "toy", train.shape, [4, 8], PCA_WHITENING)
    assert stored is not None and stored.dim == 8 and stored.vectors["db"].rows.shape == (60, 8)
    # The same PCAs as fitting in the stage: its leading axes.
    reused, fitted = whitenings(train, [4, 8, 64], "O2_R", fitted=stored.pca), whitenings(train, [4, 8, 64], "O2_R")
    assert isinstance(reused[64], str) and reused[64] == fitted[64]  # 64 > the 10 axes: the same reason
    for dim in (4, 8):
        np.testing.assert_array_equal(reused[dim].components, fitted[dim].components)
        np.testing.assert_array_equal(reused[dim].eigenvalues, fitted[dim].eigenvalues)
    # Not the fit O2_R would make: learned elsewhere, on other rows, or at too small a D.
    assert stored_whitening(path, "other", train.shape, [4, 8], PCA_WHITENING) is None
    assert stored_whitening(path, "toy", train[:50].shape, [4, 8], PCA_WHITENING) is None
    assert stored_whitening(path, "toy", train.shape, [4, 9], PCA_WHITENING) is None
    assert stored_whitening(tmp_path / "missing.h5", "toy", train.shape, [4], PCA_WHITENING) is None
    # In another mode (or another shrinkage) than the stage's own.
    assert stored_whitening(path, "toy", train.shape, [4, 8], Whitening("shrink")) is None
    write_whitened(path, pca, train, mode="shrink")
    assert stored_whitening(path, "toy", train.shape, [4, 8], Whitening("shrink", shrink=2.0)) is None
    assert stored_whitening(path, "toy", train.shape, [4, 8], Whitening("shrink", shrink=1.0)) is not None
    # A setting of another mode does not matter (whitening.power, when the mode is shrink).
    assert stored_whitening(path, "toy", train.shape, [4, 8], Whitening("shrink", shrink=1.0, power=0.1)) is not None
    write_whitened(path, pca, train, n_train=59)
    assert stored_whitening(path, "toy", train.shape, [4, 8], PCA_WHITENING) is None


def test_r_mac_g_fit_shared_with_r_mac_is_the_fit_of_its_own_rows():
    """R-MAC+G's whitening from R-MAC's scatter plus the whole-map MACs (one pass over R-MAC's rows)
    is the PCA of R-MAC+G's own rows, each image's regions then its MAC, fitted on their own; R-MAC's
    is R-MAC's. A D too large for the rows fits nothing larger than they span."""
    from types import SimpleNamespace

    from stages.methods import shared_fits

    rng = np.random.default_rng(1)
    counts = rng.integers(2, 6, 300)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    scales = np.linspace(3, 0.2, 40)
    regions = (rng.normal(size=(offsets[-1], 40)) * scales + 1).astype(np.float32)
    whole = (rng.normal(size=(300, 40)) * scales[::-1] - 1).astype(np.float32)
    train = {"db": {"R-MAC": Rows(regions, offsets), "MAC": Rows(whole, np.arange(301))}}
    conf = SimpleNamespace(dims=[8, 16, 64], modes=[("", Whitening("pca"))])
    fits = shared_fits(train, conf)
    interleaved = np.concatenate([np.vstack([regions[a:b], whole[i:i + 1]])
                                  for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:]))])
    for method, rows in (("R-MAC", regions), ("R-MAC+G", interleaved)):
        alone = fit_pca(rows.astype(np.float64), 16)
        assert fits[method].components.shape == (40, 16)  # 64 > the 40 axes: the largest learnable D is 16
        np.testing.assert_allclose(fits[method].eigenvalues, alone.eigenvalues, rtol=1e-4)
        np.testing.assert_allclose(fits[method].mean, alone.mean, atol=1e-5)
        cosines = np.abs(np.sum(fits[method].components * alone.components, axis=0))
        assert cosines.min() > 0.9999, (method, cosines.min())


def test_pool_image_equals_each_method_on_the_whole_map_with_dead_channels():
    """pool_image pools the channels that respond somewhere and fills in the others: every method's
    output must be the one of rdfa.baselines / rdfa.pooling on the whole map."""
    from rdfa.baselines import crow, gem, mac, rmac_region_vectors, rmac_regions, spoc
    from rdfa.pooling import first_order, l2_normalize
    from rdfa.weights import channel_weights, spatial_weights
    from stages.methods import Config, pool_image

    rng = np.random.default_rng(7)
    conf = Config(dims=[4], train_on="x", modes=[], full_query=False, n_qe=1, include_query=True, beta_eps=1e-6,
                  log_eps=1e-2, gem_p=3.0, crow_a=2.0, crow_b=2.0, rmac_levels=3, rmac_overlap=0.4, main_dim=4,
                  blas_threads=1, chunk_rows=100, workers=1, figure_queries=0, figure_top_k=0)
    fmap = np.maximum(rng.normal(size=(6, 7, 20)), 0).astype(np.float16)
    fmap[..., [0, 3, 4, 19]] = 0
    fmap[0, 0, 5] = np.float16(-0.0)  # a negative zero: still a dead channel
    fmap[..., 5] = np.where(fmap[..., 5] > 0, 0, fmap[..., 5])
    masks = rng.uniform(size=(3, 6, 7)) < 0.5
    full = fmap.astype(np.float64)
    beta = channel_weights(full, conf.beta_eps)
    expected = {
        "MAC": l2_normalize(mac(full)), "SPoC": l2_normalize(spoc(full)),
        "CroW": l2_normalize(crow(full, 2.0, 2.0, conf.beta_eps)), "GeM": l2_normalize(gem(full, 3.0)),
        "R-MAC": rmac_region_vectors(full, rmac_regions(6, 7, 3, 0.4)),
        "O1": first_order(full, masks, beta, spatial_weights(full)),
    }
    for maps in (fmap, np.maximum(fmap, np.float16(0.5))):  # with dead channels, and without
        got = pool_image(maps, masks, conf)
        if maps is not fmap:
            full = maps.astype(np.float64)
            expected = {"MAC": l2_normalize(mac(full)), "GeM": l2_normalize(gem(full, 3.0))}
        for name, want in expected.items():
            np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-14, err_msg=name)
            assert got[name].shape == np.shape(want)
