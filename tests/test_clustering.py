"""Fast global k-means against a direct, slow implementation of the same algorithm.

The fast global k-means is a heuristic (it can miss the optimum); what must
hold is that it is exactly Likas et al.'s procedure: the candidate with the
largest error-reduction bound starts the new centre, then Lloyd runs.
"""
import itertools

import numpy as np
import pytest

from rdfa.clustering import clustering_error, error_reduction_bounds, fast_global_kmeans, lloyd


def slow_lloyd(points, centers, max_iter=100):
    centers = [np.array(c, dtype=float) for c in centers]
    labels = None
    for _ in range(max_iter):
        new = []
        for p in points:
            d = [float(((p - c) ** 2).sum()) for c in centers]
            new.append(d.index(min(d)))
        if new == labels:
            break
        labels = new
        for k in range(len(centers)):
            members = [p for p, lab in zip(points, labels) if lab == k]
            if members:
                centers[k] = np.mean(members, axis=0)
    return np.array(centers), np.array(labels)


def slow_fast_global_kmeans(points, n_clusters):
    centers = [points.mean(0)]
    labels = np.zeros(len(points), int)
    for _ in range(1, n_clusters):
        closest = [min(float(((p - c) ** 2).sum()) for c in centers) for p in points]
        bounds = []
        for cand in points:
            bounds.append(sum(max(closest[j] - float(((cand - points[j]) ** 2).sum()), 0.0)
                              for j in range(len(points))))
        best = bounds.index(max(bounds))
        centers, labels = slow_lloyd(points, list(centers) + [points[best]])
        centers = list(centers)
    return np.array(centers), labels


@pytest.mark.parametrize("seed", range(6))
def test_matches_direct_implementation(seed):
    rng = np.random.default_rng(seed)
    points = np.vstack([rng.normal(loc, 1.0, size=(12, 2)) for loc in ((0, 0), (6, 1), (2, 7))])
    for n_clusters in (1, 2, 3, 4):
        centers, labels = fast_global_kmeans(points, n_clusters)
        ref_centers, ref_labels = slow_fast_global_kmeans(points, n_clusters)
        np.testing.assert_allclose(centers, ref_centers, atol=1e-9)
        np.testing.assert_array_equal(labels, ref_labels)


def test_invariants_on_random_points():
    rng = np.random.default_rng(42)
    points = rng.uniform(0, 100, size=(200, 2))
    errors = []
    for n_clusters in range(1, 6):
        centers, labels = fast_global_kmeans(points, n_clusters)
        assert centers.shape == (n_clusters, 2)
        # every point is assigned to its nearest centre
        d = ((points[:, None] - centers[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(labels, d.argmin(1))
        # every non-empty cluster's centre is its mean (Lloyd converged)
        for k in range(n_clusters):
            if np.any(labels == k):
                np.testing.assert_allclose(centers[k], points[labels == k].mean(0), atol=1e-9)
        errors.append(clustering_error(points, centers))
    # the k-solution starts from the (k-1)-solution plus one centre: error never grows
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:]))


def test_separated_blobs_are_found():
    rng = np.random.default_rng(3)
    blobs = [rng.normal(loc, 0.5, size=(30, 2)) for loc in ((0, 0), (20, 0), (0, 20))]
    _, labels = fast_global_kmeans(np.vstack(blobs), 3)
    groups = [set(labels[i * 30:(i + 1) * 30]) for i in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3


def test_never_worse_than_one_cluster_and_close_to_brute_force_on_tiny_sets():
    # Not an optimality test (the method is a heuristic): the result must be a
    # valid Lloyd fixed point whose error is at least the brute-force optimum.
    rng = np.random.default_rng(7)
    points = rng.normal(size=(8, 2))
    centers, labels = fast_global_kmeans(points, 2)
    best = min(
        clustering_error(points, np.array([points[np.array(a) == 0].mean(0), points[np.array(a) == 1].mean(0)]))
        for a in itertools.product((0, 1), repeat=8) if 0 < sum(a) < 8)
    assert clustering_error(points, centers) >= best - 1e-9
    assert clustering_error(points, centers) <= clustering_error(points, points.mean(0, keepdims=True))


def test_bad_cluster_counts():
    with pytest.raises(ValueError, match="L must be >= 1"):
        fast_global_kmeans(np.zeros((5, 2)), 0)
    with pytest.raises(ValueError, match="3 clusters of 2 points"):
        fast_global_kmeans(np.zeros((2, 2)), 3)


def test_lloyd_keeps_empty_cluster_centre():
    points = np.array([[0.0, 0.0], [1.0, 0.0]])
    centers, labels = lloyd(points, np.array([[0.5, 0.0], [100.0, 100.0]]))
    np.testing.assert_allclose(centers[1], [100.0, 100.0])
    assert set(labels) == {0}


# --- The implementation before the speed work (issue 25), kept literally: the clusters must not change. ---

def original_squared_distances(a, b):
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def original_lloyd(points, centers, max_iter=100):
    centers = np.array(centers, dtype=np.float64, copy=True)
    labels = None
    for _ in range(max_iter):
        new_labels = original_squared_distances(points, centers).argmin(1)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for k in range(len(centers)):
            members = points[labels == k]
            if len(members):
                centers[k] = members.mean(0)
    else:
        labels = original_squared_distances(points, centers).argmin(1)
    return centers, labels


def original_bounds(points, closest_sq, chunk=1024):
    bounds = np.empty(len(points))
    for start in range(0, len(points), chunk):
        d = original_squared_distances(points[start:start + chunk], points)
        bounds[start:start + chunk] = np.maximum(closest_sq[None, :] - d, 0.0).sum(1)
    return bounds


def original_fast_global_kmeans(points, n_clusters, max_iter=100):
    points = np.asarray(points, dtype=np.float64)
    centers = points.mean(0, keepdims=True)
    labels = np.zeros(len(points), dtype=np.int64)
    for _ in range(1, n_clusters):
        closest_sq = original_squared_distances(points, centers).min(1)
        candidate = int(np.argmax(original_bounds(points, closest_sq)))
        centers, labels = original_lloyd(points, np.vstack([centers, points[candidate]]), max_iter)
    return centers, labels


def point_sets():
    """Random, clustered, duplicated, lattice (exact ties) and float32-rounded point sets of many sizes."""
    rng = np.random.default_rng(25)
    for n in (1, 2, 3, 5, 17, 33, 64, 65, 200, 1025, 2100):
        yield f"uniform{n}", rng.uniform(0, 500, size=(n, 2))
    for n in (40, 300, 1500):
        blobs = np.concatenate([rng.normal(c, 25, size=(n // 3, 2)) for c in ((80, 90), (300, 200), (420, 60))])
        yield f"blobs{n}", blobs.astype(np.float32).astype(np.float64)  # stored points are float32
    base = rng.uniform(0, 300, size=(30, 2))
    yield "duplicated", np.concatenate([base, base[::2], base[:5], base[:5]])
    yield "all_equal", np.full((12, 2), 7.25)
    yield "two_positions", np.array([[0.0, 0.0]] * 6 + [[10.0, 10.0]] * 6)
    gx, gy = np.meshgrid(np.arange(8) * 32 + 15.5, np.arange(6) * 32 + 15.5)
    yield "grid_cells", np.stack([gx.ravel(), gy.ravel()], 1)  # the grid fallback's cell centres: many ties
    yield "square", np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]])
    yield "collinear", np.stack([np.arange(50.0), 2 * np.arange(50.0) + 1], 1)
    yield "symmetric_ring", np.round(100 * np.stack([np.cos(np.arange(12) * np.pi / 6),
                                                     np.sin(np.arange(12) * np.pi / 6)], 1))


@pytest.mark.slow
@pytest.mark.parametrize("name,points", list(point_sets()), ids=[name for name, _ in point_sets()])
def test_clusters_equal_the_original_implementation(name, points):
    for n_clusters in range(1, 6):
        if len(points) < n_clusters:
            with pytest.raises(ValueError, match=f"cannot make {n_clusters} clusters of {len(points)} points"):
                fast_global_kmeans(points, n_clusters)
            continue
        centers, labels = fast_global_kmeans(points, n_clusters)
        ref_centers, ref_labels = original_fast_global_kmeans(points, n_clusters)
        np.testing.assert_array_equal(labels, ref_labels)
        np.testing.assert_array_equal(centers, ref_centers)


@pytest.mark.parametrize("chunk", [1, 7, 32, 1024])
def test_error_reduction_bounds_are_the_original_bits(chunk):
    rng = np.random.default_rng(chunk)
    for n in (1, 31, 33, 100, 1057):
        points = rng.normal(250, 90, size=(n, 2)).astype(np.float32).astype(np.float64)
        closest = original_squared_distances(points, points[:2] + 1.5).min(1)
        np.testing.assert_array_equal(error_reduction_bounds(points, closest, chunk), original_bounds(points, closest))
