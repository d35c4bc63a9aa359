"""The method registry (rdfa.methods) and Table 1's grid (rdfa.methods.table1, rdfa.io.table1)."""
import math

import h5py
import numpy as np
import pytest

import rdfa.methods as registry
from rdfa.io.table1 import stored_whitening
from rdfa.methods import Image, MethodError, MethodSettings, register
from rdfa.methods.table1 import Rows, describe, whitenings
from rdfa.whitening import PCA_WHITENING, Whitening, fit_pca

TABLE1 = ["MAC", "SPoC", "CroW", "R-MAC", "R-MAC+G", "GeM", "O1_W", "O1_R", "O2_W", "O2_R"]


@pytest.fixture
def clean_registry(monkeypatch):
    """The registry as it is, restored after the test (a test registers what it likes)."""
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))


def test_the_ten_built_in_methods_are_registered_in_table_1s_order():
    assert registry.names()[:10] == TABLE1
    kinds = {m.name: m.kind for m in registry.methods()}
    assert [kinds[n] for n in TABLE1] == ["global", "global", "global", "rmac", "rmac", "global", "global",
                                          "regional", "global", "regional"]
    assert [m.name for m in registry.methods() if m.stored] == ["O2_W", "O2_R"]
    assert [m.name for m in registry.methods() if m.pipeline] == ["O2_R"]


def test_register_returns_the_function_and_refuses_mistakes(clean_registry):
    def f(image):
        return image.fmap.max(axis=(0, 1))

    assert register("X1", kind="global")(f) is f
    assert registry.get("X1").fn is f and registry.names()[-1] == "X1"
    with pytest.raises(MethodError, match="'X1' is registered already"):
        register("X1", kind="global")(f)
    with pytest.raises(MethodError, match="kind must be one of global, regional, rmac"):
        register("X2", kind="local")
    with pytest.raises(MethodError, match="unknown needs"):
        register("X3", kind="global", needs=("pca",))
    with pytest.raises(MethodError, match="stored must be"):
        register("X4", kind="global", stored="features")


def test_plugins_are_imported_sorted_and_a_failing_one_is_named(clean_registry, tmp_path):
    (tmp_path / "b.py").write_text('from rdfa.methods import register\n\n\n'
                                   '@register("PB", kind="global")\ndef pb(image):\n    return image.fmap.sum((0, 1))\n')
    (tmp_path / "a.py").write_text('from rdfa.methods import register\n\n\n'
                                   '@register("PA", kind="regional")\ndef pa(image):\n'
                                   '    return image.fmap.reshape(-1, image.fmap.shape[-1])\n')
    (tmp_path / "README.md").write_text("not code")
    assert registry.load_plugins(tmp_path) == ["PA", "PB"]
    assert registry.get("PA").source == str(tmp_path / "a.py")
    assert registry.load_plugins(tmp_path) == []  # imported already: not again
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "c.py").write_text("import numpy as np\nraise RuntimeError('no luck')\n")
    with pytest.raises(MethodError, match=r"broken/c.py: the plugin failed to import: RuntimeError: no luck"):
        registry.load_plugins(broken)
    again = tmp_path / "again"
    again.mkdir()
    (again / "mac.py").write_text('from rdfa.methods import register\n\n\n'
                                  '@register("MAC", kind="global")\ndef mac(image):\n    return image.fmap.max((0, 1))\n')
    with pytest.raises(MethodError, match=r"again/mac.py: method 'MAC' is registered already"):
        registry.load_plugins(again)
    assert registry.load_plugins(tmp_path / "missing") == []


def small_map(rng, h=6, w=7, k=20):
    fmap = np.maximum(rng.normal(size=(h, w, k)), 0).astype(np.float16)
    fmap[..., [0, 3]] = 0  # dead channels
    return fmap


def test_built_in_methods_against_their_definitions():
    """Each built-in's rows (l2, float32) against a direct computation from the method's definition."""
    rng = np.random.default_rng(7)
    fmap = small_map(rng)
    masks = rng.uniform(size=(3, 6, 7)) < 0.5
    masks[-1] = True
    settings = MethodSettings(gem_p=3.0, rmac_levels=2)
    stored = rng.normal(size=(3, 10)).astype(np.float32)
    image = Image("db/x", fmap, masks, settings, descriptors=stored)
    x = fmap.astype(np.float64)
    h, w, k = x.shape

    def l2(v):
        v = np.atleast_2d(v)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    sigma = min(h, w) / 6
    prior = np.array([[math.exp(-((y + 0.5 - h / 2) ** 2 + (xx + 0.5 - w / 2) ** 2) / (2 * sigma ** 2))
                       for xx in range(w)] for y in range(h)])
    q = (x > 0).mean((0, 1))
    beta = np.log((k * 1e-6 + q.sum()) / (1e-6 + q))
    summed = x.sum(-1)
    crow_s = np.sqrt(summed / np.sqrt((summed ** 2).sum()))
    alpha = summed / np.sqrt((summed ** 2).sum())
    # rmac_levels=2 on a 6x7 map: squares of side 2*6/2 = 6 at x 0, 1; then of side 2*6/3 = 4 at x 0, 1, 3
    # and y 0, 2 (tests/test_baselines.py checks the grid against the published rule)
    rmac = [x[0:6, c:c + 6].max((0, 1)) for c in (0, 1)] + [x[y:y + 4, c:c + 4].max((0, 1))
                                                            for y in (0, 2) for c in (0, 1, 3)]
    expected = {
        "MAC": x.max((0, 1)),
        "SPoC": (prior[..., None] * x).sum((0, 1)),
        "CroW": beta * (crow_s[..., None] * x).sum((0, 1)),
        "GeM": (np.maximum(x, 1e-6) ** 3).mean((0, 1)) ** (1 / 3),
        "O1_R": np.stack([beta * (m[..., None] * alpha[..., None] * x).sum((0, 1)) for m in masks]),
        "O2_R": stored,
    }
    expected["O1_W"] = l2(expected["O1_R"])[-1]
    expected["O2_W"] = stored[-1]
    for name, want in expected.items():
        got = describe(registry.get(name), image)
        np.testing.assert_allclose(got, l2(want), rtol=1e-6, atol=1e-7, err_msg=name)
        assert got.dtype == np.float32
    r_mac = describe(registry.get("R-MAC"), image)  # by scale, then row, then column
    np.testing.assert_allclose(r_mac, l2(np.array(rmac)), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(describe(registry.get("R-MAC+G"), image), np.vstack([r_mac, l2(x.max((0, 1))).astype(np.float32)]))


def test_a_method_output_of_the_wrong_shape_is_named(clean_registry):
    register("Flat", kind="regional")(lambda image: image.fmap.max(axis=(0, 1)))
    image = Image("query/3", small_map(np.random.default_rng(0)), None)
    with pytest.raises(MethodError, match=r"'Flat'.*query/3 gave an array of shape \(20,\).*\(n_regions, dim\)"):
        describe(registry.get("Flat"), image)


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
    stored = stored_whitening(path, "toy", train.shape, (4, 8), PCA_WHITENING)
    assert stored is not None and stored.dim == 8 and stored.vectors["db"].rows.shape == (60, 8)
    # The same PCAs as fitting in the stage: its leading axes.
    reused, fitted = whitenings(train, (4, 8, 64), "O2_R", fitted=stored.pca), whitenings(train, (4, 8, 64), "O2_R")
    assert isinstance(reused[64], str) and reused[64] == fitted[64]  # 64 > the 10 axes: the same reason
    for dim in (4, 8):
        np.testing.assert_array_equal(reused[dim].components, fitted[dim].components)
        np.testing.assert_array_equal(reused[dim].eigenvalues, fitted[dim].eigenvalues)
    # Not the fit O2_R would make: learned elsewhere, on other rows, or at too small a D.
    assert stored_whitening(path, "other", train.shape, (4, 8), PCA_WHITENING) is None
    assert stored_whitening(path, "toy", train[:50].shape, (4, 8), PCA_WHITENING) is None
    assert stored_whitening(path, "toy", train.shape, (4, 9), PCA_WHITENING) is None
    assert stored_whitening(tmp_path / "missing.h5", "toy", train.shape, (4,), PCA_WHITENING) is None
    # In another mode (or another shrinkage) than the stage's own.
    assert stored_whitening(path, "toy", train.shape, (4, 8), Whitening("shrink")) is None
    write_whitened(path, pca, train, mode="shrink")
    assert stored_whitening(path, "toy", train.shape, (4, 8), Whitening("shrink", shrink=2.0)) is None
    assert stored_whitening(path, "toy", train.shape, (4, 8), Whitening("shrink", shrink=1.0)) is not None
    # A setting of another mode does not matter (whitening.power, when the mode is shrink).
    assert stored_whitening(path, "toy", train.shape, (4, 8), Whitening("shrink", shrink=1.0, power=0.1)) is not None
    write_whitened(path, pca, train, n_train=59)
    assert stored_whitening(path, "toy", train.shape, (4, 8), PCA_WHITENING) is None
