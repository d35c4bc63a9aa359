"""Baselines of Table 1 (rdfa.baselines) against direct computations from each method's definition."""
import math

import numpy as np
import pytest

from rdfa.baselines import (
    average_query_expansion,
    crow,
    crow_spatial_weights,
    gem,
    global_search,
    mac,
    rmac_maxima,
    rmac_regions,
    spoc,
    spoc_prior,
    sum_aggregate,
)
from rdfa.whitening import fit_pca


@pytest.fixture
def fmap():
    rng = np.random.default_rng(0)
    x = rng.random((5, 7, 6))
    x[x < 0.4] = 0.0  # ReLU-like sparsity, different per channel
    x[..., 2] = 0.0  # a dead channel
    return x


def test_mac_is_the_channel_maximum(fmap):
    h, w, k = fmap.shape
    expected = [max(fmap[y, x, c] for y in range(h) for x in range(w)) for c in range(k)]
    np.testing.assert_allclose(mac(fmap), expected)


def test_spoc_centre_prior_sum(fmap):
    h, w, k = fmap.shape
    # Babenko & Lempitsky: sigma = 1/3 of the distance from the centre to the closest border.
    sigma = (min(h, w) / 2) / 3
    expected = np.zeros(k)
    for y in range(h):
        for x in range(w):
            d2 = (y + 0.5 - h / 2) ** 2 + (x + 0.5 - w / 2) ** 2
            expected += math.exp(-d2 / (2 * sigma ** 2)) * fmap[y, x]
    np.testing.assert_allclose(spoc(fmap), expected)
    np.testing.assert_allclose(spoc(fmap, center_prior=False), fmap.sum((0, 1)))
    prior = spoc_prior(h, w)
    assert prior.argmax() == (h // 2) * w + w // 2  # peak at the centre cell
    np.testing.assert_allclose(prior, prior[::-1, ::-1])  # symmetric


def test_crow_weights_and_pooling(fmap):
    h, w, k = fmap.shape
    eps = 1e-6
    summed = [[sum(fmap[y, x, c] for c in range(k)) for x in range(w)] for y in range(h)]
    norm = math.sqrt(sum(v ** 2 for row in summed for v in row))  # a = 2
    spatial = [[(summed[y][x] / norm) ** 0.5 for x in range(w)] for y in range(h)]  # b = 2
    q = [sum(fmap[y, x, c] > 0 for y in range(h) for x in range(w)) / (h * w) for c in range(k)]
    beta = [math.log((k * eps + sum(q)) / (eps + q[c])) for c in range(k)]
    expected = [beta[c] * sum(spatial[y][x] * fmap[y, x, c] for y in range(h) for x in range(w))
                for c in range(k)]
    np.testing.assert_allclose(crow_spatial_weights(fmap), spatial)
    np.testing.assert_allclose(crow(fmap, 2, 2, eps), expected)
    assert crow(fmap)[2] == 0  # a dead channel stays zero despite its large weight


def test_crow_of_an_empty_map_is_zero():
    assert not crow(np.zeros((3, 4, 5))).any()


def test_gem_is_the_power_mean(fmap):
    h, w, k = fmap.shape
    p, eps = 3.0, 1e-6
    expected = [(sum(max(fmap[y, x, c], eps) ** p for y in range(h) for x in range(w)) / (h * w)) ** (1 / p)
                for c in range(k)]
    np.testing.assert_allclose(gem(fmap, p), expected)
    np.testing.assert_allclose(gem(fmap, 1.0, eps=0.0), fmap.mean((0, 1)))
    np.testing.assert_allclose(gem(fmap, 200.0), mac(fmap), rtol=0.02)
    with pytest.raises(ValueError):
        gem(fmap, 0)


def published_rmac_grid(W, H, L=3, ovr=0.4):
    """Tolias et al.'s rule, written out: returns {level: (side, xs, ys)}."""
    w = min(W, H)
    extra = 0
    if W != H:
        best = None
        for m in range(2, 8):  # regions along the long side at l = 1
            b = (max(W, H) - w) / (m - 1)
            err = abs((w * w - w * b) / (w * w) - ovr)
            if best is None or err < best[0]:
                best = (err, m - 1)
        extra = best[1]
    wd, hd = (extra, 0) if W > H else (0, extra)
    grid = {}
    for l in range(1, L + 1):
        side = math.floor(2 * w / (l + 1))
        half = math.floor(side / 2 - 1)
        bw = (W - side) / (l + wd - 1) if l + wd > 1 else 0
        bh = (H - side) / (l + hd - 1) if l + hd > 1 else 0
        xs = [math.floor(half + i * bw) - half for i in range(l + wd)]
        ys = [math.floor(half + i * bh) - half for i in range(l + hd)]
        grid[l] = (side, xs, ys)
    return grid


@pytest.mark.parametrize("W, H, count, sides", [
    (32, 24, 20, {24: 2, 16: 6, 12: 12}),   # 4:3 (a 1024x768 photo through VGG): m = 2, 2 + 6 + 12
    (24, 32, 20, {24: 2, 16: 6, 12: 12}),   # portrait: the same, transposed
    (24, 24, 14, {24: 1, 16: 4, 12: 9}),    # square: 1 + 4 + 9
    (40, 20, 26, {20: 3, 13: 8, 10: 15}),   # 2:1: m = 3 (50 % overlap beats 0 %), 3 + 8 + 15
    (30, 16, 26, {16: 3, 10: 8, 8: 15}),    # m = 3: 56 % overlap is closer to 40 % than 12 %
])
def test_rmac_region_counts_and_sizes(W, H, count, sides):
    boxes = rmac_regions(H, W, 3)
    assert len(boxes) == count
    got = {}
    for x0, y0, x1, y1 in boxes:
        assert x1 - x0 == y1 - y0  # square
        assert 0 <= x0 and x1 <= W and 0 <= y0 and y1 <= H
        got[x1 - x0] = got.get(x1 - x0, 0) + 1
    assert got == sides


def test_rmac_first_scale_positions_for_4_3():
    boxes = rmac_regions(24, 32, 3)
    np.testing.assert_array_equal(boxes[:2], [[0, 0, 24, 24], [8, 0, 32, 24]])


@pytest.mark.parametrize("W, H", [(32, 24), (24, 32), (21, 21), (40, 20), (64, 48), (45, 30), (7, 3), (17, 11)])
def test_rmac_grid_follows_the_published_rule(W, H):
    boxes = rmac_regions(H, W, 3).tolist()
    expected = []
    for level, (side, xs, ys) in published_rmac_grid(W, H).items():
        if side == 0:
            continue
        # each scale spans the map from border to border
        assert xs[0] == 0 and xs[-1] + side == W and ys[0] == 0 and ys[-1] + side == H
        expected += [[x, y, x + side, y + side] for y in ys for x in xs]
    assert boxes == expected


def test_rmac_maxima_are_the_region_maxima(fmap):
    boxes = np.array([[0, 0, 3, 3], [2, 1, 6, 5]])
    out = rmac_maxima(fmap, boxes)
    for r, (x0, y0, x1, y1) in enumerate(boxes):
        v = np.array([max(fmap[y, x, c] for y in range(y0, y1) for x in range(x0, x1))
                      for c in range(fmap.shape[2])])
        np.testing.assert_array_equal(out[r], v)


def test_sum_aggregate_sums_each_image_and_normalises():
    x = np.arange(12, dtype=float).reshape(4, 3)
    out = sum_aggregate(x, np.array([0, 1, 4]))
    np.testing.assert_allclose(out[0], x[0] / np.linalg.norm(x[0]))
    s = x[1] + x[2] + x[3]
    np.testing.assert_allclose(out[1], s / np.linalg.norm(s))
    with pytest.raises(ValueError):
        sum_aggregate(x, np.array([0, 0, 4]))


def test_average_query_expansion_and_search():
    rng = np.random.default_rng(1)
    db = rng.normal(size=(9, 4))
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = rng.normal(size=(2, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ranks, ranks_qe = global_search(q, db, n_qe=3)
    for i in range(2):
        sims = [float(q[i] @ db[j]) for j in range(9)]
        assert list(ranks[i]) == sorted(range(9), key=lambda j: -sims[j])
        new = q[i] + db[ranks[i][0]] + db[ranks[i][1]] + db[ranks[i][2]]
        new /= np.linalg.norm(new)
        np.testing.assert_allclose(average_query_expansion(q[i], db, ranks[i], 3), new)
        sims = [float(new @ db[j]) for j in range(9)]
        assert list(ranks_qe[i]) == sorted(range(9), key=lambda j: -sims[j])
    same, same_qe = global_search(q, db, n_qe=0)
    np.testing.assert_array_equal(same, same_qe)


def test_table1_whitening_per_dim_matches_separate_fits():
    from rdfa.methods.table1 import whitenings

    x = np.random.default_rng(2).normal(size=(40, 12))
    pcas = whitenings(x, (4, 8, 64), "MAC")
    assert "64 is larger than the 12 principal axes" in pcas[64]
    for dim in (4, 8):
        direct = fit_pca(x, dim)
        np.testing.assert_allclose(pcas[dim].components, direct.components, atol=1e-10)
        np.testing.assert_allclose(pcas[dim].eigenvalues, direct.eigenvalues)
