"""Power-set regions and convex-hull masks on the feature grid (section 2)."""
import numpy as np
import pytest
from matplotlib.path import Path as MplPath

from rdfa.regions import (
    candidate_regions,
    cluster_subsets,
    convex_hull,
    grid_cell_centers,
    points_in_hull,
    whole_image_hull,
)


@pytest.mark.parametrize("n_clusters", [1, 2, 3, 4, 5])
def test_power_set_gives_2_to_the_L_regions(n_clusters):
    subsets = cluster_subsets(n_clusters)
    assert len(subsets) == 2 ** n_clusters - 1  # without the empty set
    assert len(set(subsets)) == len(subsets) and () not in subsets
    rng = np.random.default_rng(n_clusters)
    # well-separated, large clusters in convex position: no region vanishes on the grid, and
    # no union's hull equals another's (no cluster lies inside the hull of others)
    angles = 2 * np.pi * np.arange(n_clusters) / max(n_clusters, 3)
    centres = [(260 + 180 * np.cos(a), 450 + 330 * np.sin(a)) for a in angles]
    points = np.vstack([rng.uniform(-40, 40, size=(40, 2)) + c for c in centres])
    labels = np.repeat(np.arange(n_clusters), 40)
    masks, hulls, codes = candidate_regions(points, labels, n_clusters, (900, 520), (64, 64))
    assert len(masks) == 2 ** n_clusters  # M = 2^L with the whole image
    assert masks[-1].all() and codes[-1] == 0
    assert sorted(codes[:-1]) == list(range(1, 2 ** n_clusters))


def test_convex_hull_against_brute_force_extreme_points():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 10, size=(60, 2))
    hull = convex_hull(pts)
    # a point is a hull vertex iff it is not inside the hull of the others
    for i, p in enumerate(pts):
        others = np.delete(pts, i, axis=0)
        is_vertex = not points_in_hull(convex_hull(others), p[None], tol=-1e-12)[0]
        assert is_vertex == any(np.allclose(p, v) for v in hull)
    # counter-clockwise: positive signed area
    x, y = hull[:, 0], hull[:, 1]
    assert 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0


def test_hull_mask_matches_matplotlib_point_in_polygon():
    rng = np.random.default_rng(5)
    pts = rng.uniform([50, 40], [300, 220], size=(25, 2))
    hull = convex_hull(pts)
    centres = grid_cell_centers((256, 384), (16, 24))
    ours = points_in_hull(hull, centres)
    reference = MplPath(hull).contains_points(centres)
    # they may only differ on points lying exactly on the boundary
    assert np.sum(ours != reference) <= 2 and ours.sum() > 10


def test_cell_centres_follow_the_resize_ratio():
    centres = grid_cell_centers((64, 128), (2, 4))  # 32-pixel cells
    np.testing.assert_allclose(centres[0], [15.5, 15.5])
    np.testing.assert_allclose(centres[-1], [111.5, 47.5])


def test_degenerate_and_tiny_regions_are_dropped():
    # cluster 0: a single point, cluster 1: collinear points -> no interior;
    # cluster 2: a big triangle
    points = np.array([[10.0, 10.0], [10.0, 10.0], [50, 200], [60, 200], [70, 200],
                       [300, 20], [500, 300], [320, 310]])
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2])
    masks, hulls, codes = candidate_regions(points, labels, 3, (320, 512), (10, 16))
    assert 1 not in codes and 2 not in codes  # {C0} and {C1} vanish
    assert 4 in codes and 3 in codes  # {C2}; {C0, C1} spans a real triangle
    assert all(m.sum() >= 1 for m in masks)
    assert len(masks) == len(hulls) == len(codes) < 8


def test_region_mask_is_hull_interior_resized():
    # a square covering the left half of a 100x200 image -> left half of a 4x8 grid
    square = np.array([[0.0, 0.0], [99.0, 0.0], [99.0, 99.0], [0.0, 99.0]])
    masks, _, codes = candidate_regions(square, np.zeros(4, int), 1, (100, 200), (4, 8))
    expected = np.zeros((4, 8), bool)
    expected[:, :4] = True
    np.testing.assert_array_equal(masks[0], expected)
    assert codes.tolist() == [1, 0]


def test_duplicate_masks_are_dropped_and_the_whole_image_kept_last():
    # Three clusters packed inside one grid cell (the pixel-fallback blob): every cluster
    # region maps to the same single cell. One copy of it is kept, plus R_M.
    rng = np.random.default_rng(3)
    points = rng.uniform([40, 40], [56, 56], size=(30, 2))  # all inside cell (1, 1) of 32-px cells
    labels = np.arange(30) % 3
    masks, hulls, codes = candidate_regions(points, labels, 3, (512, 512), (16, 16))
    assert len(masks) == 2 and codes[-1] == 0 and masks[-1].all()
    assert masks[0].sum() == 1 and masks[0][1, 1]
    # no two masks equal, in general either
    flat = {m.tobytes() for m in masks}
    assert len(flat) == len(masks)


def test_a_cluster_region_covering_the_whole_grid_is_not_repeated():
    corners = np.array([[0.0, 0.0], [511.0, 0.0], [511.0, 511.0], [0.0, 511.0]] * 3)
    labels = np.repeat([0, 1, 2], 4)
    masks, _, codes = candidate_regions(corners, labels, 3, (512, 512), (4, 4))
    assert codes.tolist() == [0] and masks.shape == (1, 4, 4)


def test_hull_coordinates_map_between_image_sizes_with_pixel_centres_aligned():
    from rdfa.regions import bounding_box, rescale_points

    hull = np.array([[0.0, 0.0], [511.0, 0.0], [511.0, 383.0]])
    # half size: pixel 0 covers [-0.5, 0.5] -> [-0.5, 0.0]; its centre maps to -0.25
    np.testing.assert_allclose(rescale_points(hull, (0.5, 0.5)), [[-0.25, -0.25], [255.25, -0.25], [255.25, 191.25]])
    # there and back is the identity
    np.testing.assert_allclose(rescale_points(rescale_points(hull, (0.3, 2.0)), (1 / 0.3, 0.5)), hull, atol=1e-9)
    # the box is clipped to the image's pixels
    assert bounding_box(rescale_points(hull, (0.5, 0.5)), (192, 256)) == [0.0, 0.0, 255.0, 191.0]
    assert bounding_box(np.array([[10.5, 20.0], [30.0, 5.0]]), (100, 100)) == [10.5, 5.0, 30.0, 20.0]


def test_image_regions_are_the_candidate_regions_of_the_clustered_points():
    from rdfa.clustering import fast_global_kmeans
    from rdfa.regions import box_region, image_regions

    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(c, 6, (40, 2)) for c in ((40, 40), (200, 60), (120, 160))])
    found = image_regions(points.astype(np.float32), 3, (240, 320), (8, 10))
    _, labels = fast_global_kmeans(points.astype(np.float32).astype(np.float64), 3)
    masks, hulls, subsets = candidate_regions(points.astype(np.float32).astype(np.float64), labels, 3, (240, 320),
                                              (8, 10))
    np.testing.assert_array_equal(found.masks, masks)
    np.testing.assert_array_equal(found.subsets, subsets)
    assert len(found.hulls) == len(hulls) and found.masks[-1].all()
    whole = box_region((100, 60), (4, 2))
    assert whole.masks.shape == (1, 4, 2) and whole.masks.all()
    np.testing.assert_array_equal(whole.hulls[0], whole_image_hull((100, 60)))


# --- The hulls and masks before the speed work (issue 25), kept literally: the regions must not change. ---

def original_convex_hull(points):
    pts = np.unique(np.asarray(points, dtype=np.float64).reshape(-1, 2), axis=0)
    if len(pts) <= 2:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper = []
    for p in pts[::-1]:
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def original_points_in_hull(hull, query, tol=1e-9):
    query = np.asarray(query, dtype=np.float64).reshape(-1, 2)
    if len(hull) < 3:
        return np.zeros(len(query), dtype=bool)
    inside = np.ones(len(query), dtype=bool)
    for a, b in zip(hull, np.roll(hull, -1, axis=0)):
        edge = b - a
        rel = query - a
        inside &= edge[0] * rel[:, 1] - edge[1] * rel[:, 0] >= -tol * np.hypot(*edge)
    return inside


def original_candidate_regions(points, labels, n_clusters, image_hw, grid_hw, min_cells=1):
    h, w = grid_hw
    centers = grid_cell_centers(image_hw, grid_hw)
    masks, hulls, subsets = [], [], []
    seen = {np.ones((h, w), dtype=bool).tobytes()}
    for subset in cluster_subsets(n_clusters):
        member = np.isin(labels, subset)
        hull = original_convex_hull(points[member])
        mask = original_points_in_hull(hull, centers).reshape(h, w)
        if mask.sum() >= min_cells and mask.tobytes() not in seen:
            seen.add(mask.tobytes())
            masks.append(mask)
            hulls.append(hull)
            subsets.append(sum(1 << k for k in subset))
    masks.append(np.ones((h, w), dtype=bool))
    hulls.append(whole_image_hull(image_hw))
    subsets.append(0)
    return np.stack(masks), hulls, np.array(subsets, dtype=np.int64)


def labelled_point_sets():
    """``(name, points, labels, L)``: random labels, clustered points, duplicates, lattices (collinear and
    cocircular points), empty clusters and clusters of one or two points, on a 384x512 image."""
    rng = np.random.default_rng(25)
    for n in (3, 10, 60, 400, 2000):
        for n_clusters in (1, 2, 3, 4):
            points = rng.uniform(0, [511, 383], size=(n, 2)).astype(np.float32).astype(np.float64)
            yield f"random{n}_L{n_clusters}", points, rng.integers(0, n_clusters, n), n_clusters
    blobs = np.concatenate([rng.normal(c, 30, size=(300, 2)) for c in ((90, 80), (300, 220), (440, 70))])
    blobs = blobs.astype(np.float32).astype(np.float64)
    yield "blobs", blobs, np.repeat(np.arange(3), 300), 3
    yield "blobs_duplicated", np.concatenate([blobs, blobs[::3]]), np.repeat(np.arange(3), 300)[
        np.r_[np.arange(900), np.arange(0, 900, 3)]], 3
    gx, gy = np.meshgrid(np.arange(16) * 32 + 15.5, np.arange(12) * 32 + 15.5)
    cells = np.stack([gx.ravel(), gy.ravel()], 1)
    yield "grid_cells", cells, (np.arange(len(cells)) * 7) % 3, 3  # interleaved lattice clusters: collinear edges
    yield "grid_blocks", cells, (gx.ravel() > 200).astype(int) + (gy.ravel() > 190).astype(int), 3
    yield "empty_cluster", blobs[:600], np.repeat([0, 2], 300), 3
    yield "tiny_clusters", np.array([[5.0, 5.0], [400.0, 300.0], [401.0, 300.0], [100, 200], [120, 260], [300, 20]]), \
        np.array([0, 1, 1, 2, 2, 2]), 3
    yield "collinear_clusters", np.stack([np.arange(90.0) * 5, np.arange(90.0) * 4], 1), np.arange(90) // 30, 3


@pytest.mark.parametrize("name,points,labels,n_clusters", list(labelled_point_sets()),
                         ids=[case[0] for case in labelled_point_sets()])
def test_candidate_regions_equal_the_original_implementation(name, points, labels, n_clusters):
    for grid_hw in ((12, 16), (3, 4)):
        masks, hulls, subsets = candidate_regions(points, labels, n_clusters, (384, 512), grid_hw)
        ref_masks, ref_hulls, ref_subsets = original_candidate_regions(points, labels, n_clusters, (384, 512),
                                                                       grid_hw)
        np.testing.assert_array_equal(masks, ref_masks)
        np.testing.assert_array_equal(subsets, ref_subsets)
        assert len(hulls) == len(ref_hulls)
        for hull, ref in zip(hulls, ref_hulls):
            np.testing.assert_array_equal(hull, ref)


def test_hull_and_mask_equal_the_original_on_random_sets():
    rng = np.random.default_rng(5)
    centres = grid_cell_centers((384, 512), (24, 32))
    for n in (1, 2, 3, 4, 8, 30, 300):
        for _ in range(20):
            points = rng.uniform(0, 512, size=(n, 2))
            if rng.random() < 0.5:
                points = np.round(points / 16) * 16  # on a lattice: collinear points and repeats
            hull = convex_hull(points)
            np.testing.assert_array_equal(hull, original_convex_hull(points).reshape(hull.shape))
            np.testing.assert_array_equal(points_in_hull(hull, centres), original_points_in_hull(hull, centres))


def test_points_skipped_before_the_chain_are_never_hull_vertices():
    from rdfa.regions import deep_inside_octagon

    rng = np.random.default_rng(11)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 400))
    circle = np.stack([250 + 200 * np.cos(angles), 190 + 150 * np.sin(angles)], 1)  # every point a vertex
    square_edges = np.concatenate([np.stack([np.linspace(0, 100, 50), np.zeros(50)], 1),
                                   np.stack([np.full(50, 100.0), np.linspace(0, 100, 50)], 1),
                                   rng.uniform(1, 99, size=(200, 2))])  # collinear points on the boundary
    sets = [circle, square_edges, np.full((40, 2), 3.0), np.stack([np.arange(40.0), np.arange(40.0)], 1)]
    sets += [rng.normal(300, s, size=(n, 2)).astype(np.float32).astype(np.float64)
             for n in (33, 100, 1000, 3000) for s in (1e-3, 5.0, 80.0)]
    for points in sets:
        hull = convex_hull(points)
        np.testing.assert_array_equal(hull, original_convex_hull(points).reshape(hull.shape))
        pts = np.unique(points, axis=0)
        dropped = pts[deep_inside_octagon(pts)] if len(pts) >= 3 else pts[:0]
        assert not any((hull == p).all(1).any() for p in dropped)
        # and they lie strictly inside the hull by matplotlib's independent test
        if len(hull) >= 3 and len(dropped):
            assert MplPath(hull).contains_points(dropped).all()
    assert not deep_inside_octagon(np.unique(circle, axis=0)).any()
