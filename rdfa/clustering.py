"""Fast global k-means (Likas, Vlassis and Verbeek 2003; paper section 2, ref. [17]).

Global k-means grows the solution one centre at a time: the k-th centre is
started at the data point that most reduces the error, then k-means runs from
the k - 1 previous centres plus that point. The *fast* variant picks that
point by an upper bound on the error reduction instead of running k-means
from every candidate:

    b_n = sum_j max(d_{k-1}(x_j) - ||x_n - x_j||^2, 0)

where ``d_{k-1}(x_j)`` is the squared distance of ``x_j`` to its closest
centre in the (k - 1)-solution.
"""
from __future__ import annotations

import numpy as np


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``||a_i - b_j||^2`` for every pair, as an ``(len(a), len(b))`` array."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def lloyd(points: np.ndarray, centers: np.ndarray, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """k-means (Lloyd) from the given centres until the assignment stops changing.

    A centre that loses all its points stays where it is. Returns
    ``(centers, labels)``; ties in the assignment go to the lower centre index.
    """
    centers = np.array(centers, dtype=np.float64, copy=True)
    labels = None
    for _ in range(max_iter):
        new_labels = squared_distances(points, centers).argmin(1)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        for k in range(len(centers)):
            members = points[labels == k]
            if len(members):
                centers[k] = members.mean(0)
    else:
        labels = squared_distances(points, centers).argmin(1)
    return centers, labels


def clustering_error(points: np.ndarray, centers: np.ndarray) -> float:
    """Sum of squared distances of the points to their closest centre."""
    return float(squared_distances(points, centers).min(1).sum())


def error_reduction_bounds(points: np.ndarray, closest_sq: np.ndarray, chunk: int = 32) -> np.ndarray:
    """``b_n`` above for every candidate ``x_n``, ``chunk`` candidates at a time.

    The arithmetic of ``np.maximum(closest_sq - squared_distances(rows, points), 0).sum(1)``, operation for
    operation (so the same bits, and the same candidate wins a tie): ``2 a @ b.T`` is ``(2 a) @ b.T``
    exactly, and the sum runs along a contiguous row as before. What changed is memory: one
    ``(chunk, N)`` buffer, small enough for the CPU's cache, reused in place for every step, instead of
    a fresh 1024-row temporary per step (the page faults and memory traffic were most of the time).
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    sq = (points * points).sum(1)
    twice = 2.0 * points
    bounds = np.empty(n)
    buffer, products = np.empty((min(chunk, n), n)), np.empty((min(chunk, n), n))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        d, ab = buffer[:stop - start], products[:stop - start]
        np.add(sq[start:stop, None], sq[None, :], out=d)  # ||a||^2 + ||b||^2
        np.matmul(twice[start:stop], points.T, out=ab)
        d -= ab  # - 2 a.b: squared_distances' formula
        # max(c - max(d, 0), 0) with c = closest_sq >= 0 is min(max(c - d, 0), c), bit for bit: one pass fewer.
        np.subtract(closest_sq[None, :], d, out=d)
        np.clip(d, 0.0, closest_sq[None, :], out=d)
        bounds[start:stop] = d.sum(1)
    return bounds


def fast_global_kmeans(points: np.ndarray, n_clusters: int, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ``(N, d)`` points into ``n_clusters`` with fast global k-means.

    Deterministic: no random initialisation; ties between candidates go to the
    first point. Returns ``(centers, labels)``.
    """
    points = np.asarray(points, dtype=np.float64)
    if n_clusters < 1:
        raise ValueError(f"number of clusters L must be >= 1 (got {n_clusters})")
    if len(points) < n_clusters:
        raise ValueError(f"cannot make {n_clusters} clusters of {len(points)} points")
    centers = points.mean(0, keepdims=True)
    labels = np.zeros(len(points), dtype=np.int64)
    for _ in range(1, n_clusters):
        closest_sq = squared_distances(points, centers).min(1)
        candidate = int(np.argmax(error_reduction_bounds(points, closest_sq)))
        centers, labels = lloyd(points, np.vstack([centers, points[candidate]]), max_iter)
    return centers, labels
