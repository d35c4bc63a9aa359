"""Candidate regions from clustered salient points (paper section 2).

The power set of the L clusters without the empty set, plus the whole image,
gives M = 2^L regions; each region is the interior of the convex hull of its
points, resized onto the feature grid (R'_m). Regions that vanish on the grid
are discarded, and so are regions identical to another one on the grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .clustering import fast_global_kmeans


def cluster_subsets(n_clusters: int) -> list[tuple[int, ...]]:
    """The non-empty subsets of ``range(n_clusters)``, by bitmask order (2^L - 1 of them)."""
    if n_clusters < 1:
        raise ValueError(f"number of clusters L must be >= 1 (got {n_clusters})")
    return [tuple(k for k in range(n_clusters) if mask >> k & 1)
            for mask in range(1, 2 ** n_clusters)]


#: Directions of the octagon whose extreme points :func:`deep_inside_octagon` joins (counter-clockwise).
_OCTAGON = np.array([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]], dtype=np.float64)


def deep_inside_octagon(pts: np.ndarray, margin: float = 1e-6) -> np.ndarray:
    """Which points lie well inside the polygon of the set's extreme points in 8 directions (Akl-Toussaint).

    Such a point is no convex-hull vertex, so the monotone chain may skip it. "Well inside": on the
    inner side of every edge by more than ``margin`` times the edge length times the coordinates'
    scale, far beyond rounding, so that only points the chain would pop anyway are dropped; a point
    near an edge, and every point of a degenerate (flat) set, is kept.
    """
    corners = pts[np.unique(np.argmax(pts @ _OCTAGON.T, axis=0))]
    # The support points in direction order are the polygon's corners in counter-clockwise order.
    order = np.argsort(np.arctan2(corners[:, 1] - corners[:, 1].mean(), corners[:, 0] - corners[:, 0].mean()))
    corners = corners[order]
    if len(corners) < 3:
        return np.zeros(len(pts), dtype=bool)
    edge = np.roll(corners, -1, axis=0) - corners
    side = (edge[:, 0, None] * (pts[None, :, 1] - corners[:, None, 1])
            - edge[:, 1, None] * (pts[None, :, 0] - corners[:, None, 0]))
    scale = 1.0 + np.abs(pts).max()
    return (side > margin * scale * np.hypot(edge[:, 0], edge[:, 1])[:, None]).all(axis=0)


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull vertices in counter-clockwise order (Andrew's monotone chain).

    Degenerate inputs give fewer than 3 vertices (a point or a segment);
    collinear boundary points are dropped.
    """
    pts = np.unique(np.asarray(points, dtype=np.float64).reshape(-1, 2), axis=0)
    if len(pts) <= 2:
        return pts
    if len(pts) > 32:
        pts = pts[~deep_inside_octagon(pts)]  # cannot be vertices; the order (sorted) is kept
    # Python floats: the same IEEE double arithmetic as NumPy's float64 scalars, several times faster to index.
    xy = pts.tolist()

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for p in xy:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in reversed(xy):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1], dtype=np.float64)


def points_in_hull(hull: np.ndarray, query: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Which ``(x, y)`` query points lie inside or on a CCW hull (a boolean array).

    A hull of fewer than 3 vertices has no interior: nothing lies in it.
    Every edge against every query point at once (an ``(edges, points)``
    array), the same arithmetic per edge and point as one edge at a time.
    """
    query = np.asarray(query, dtype=np.float64).reshape(-1, 2)
    hull = np.asarray(hull, dtype=np.float64)
    if len(hull) < 3:
        return np.zeros(len(query), dtype=bool)
    edge = np.roll(hull, -1, axis=0) - hull  # (E, 2)
    rel_x = query[None, :, 0] - hull[:, None, 0]  # (E, Q)
    rel_y = query[None, :, 1] - hull[:, None, 1]
    side = edge[:, 0, None] * rel_y - edge[:, 1, None] * rel_x
    return (side >= -tol * np.hypot(edge[:, 0], edge[:, 1])[:, None]).all(axis=0)


def grid_cell_centers(image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> np.ndarray:
    """Image-pixel coordinates ``(x, y)`` of each feature-grid cell centre, row-major ``(H*W, 2)``.

    Resizing a region by ``[W / W_I, H / H_I]`` and testing cell centres is the
    same as testing these centres against the region in image coordinates.
    """
    h_img, w_img = image_hw
    h, w = grid_hw
    xs = (np.arange(w) + 0.5) * (w_img / w) - 0.5
    ys = (np.arange(h) + 0.5) * (h_img / h) - 0.5
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def whole_image_mask(grid_hw: tuple[int, int]) -> np.ndarray:
    """R_M, the whole-image region, as a ``(1, H, W)`` mask stack."""
    return np.ones((1,) + tuple(grid_hw), dtype=bool)


def whole_image_hull(image_hw: tuple[int, int]) -> np.ndarray:
    """R_M's polygon: the corners of an ``(H, W)`` image, in pixels ``(x, y)``."""
    h, w = image_hw
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)


def candidate_regions(points: np.ndarray, labels: np.ndarray, n_clusters: int,
                      image_hw: tuple[int, int], grid_hw: tuple[int, int],
                      min_cells: int = 1) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """The candidate regions R'_m on the feature grid.

    ``points`` are ``(N, 2)`` image coordinates ``(x, y)`` with cluster
    ``labels``. Returns ``(masks, hulls, subsets)``: boolean ``(M', H, W)``
    masks, the hull polygon (image coordinates) of each, and each region's
    cluster bitmask; the whole image comes last with bitmask 0. Regions with
    fewer than ``min_cells`` grid cells are dropped, and so is a region whose
    mask repeats an earlier one or the whole image (it would add an identical
    descriptor: nothing to eq. 7 but weight in the whitening fit), so
    ``M' <= 2^L``.
    """
    h, w = grid_hw
    centers = grid_cell_centers(image_hw, grid_hw)
    masks, hulls, subsets = [], [], []
    seen = {np.ones((h, w), dtype=bool).tobytes()}
    # The hull of a union of clusters is the hull of their hulls' vertices (every vertex of the
    # union's hull is a vertex of its own cluster's hull): each point goes through the monotone
    # chain once, in its own cluster, instead of once for each of the 2^(L-1) subsets holding it.
    cluster_hulls = [convex_hull(points[labels == k]) for k in range(n_clusters)]
    for subset in cluster_subsets(n_clusters):
        hull = (cluster_hulls[subset[0]] if len(subset) == 1
                else convex_hull(np.concatenate([cluster_hulls[k] for k in subset])))
        mask = points_in_hull(hull, centers).reshape(h, w)
        if mask.sum() >= min_cells and mask.tobytes() not in seen:
            seen.add(mask.tobytes())
            masks.append(mask)
            hulls.append(hull)
            subsets.append(sum(1 << k for k in subset))
    masks.append(whole_image_mask((h, w))[0])
    hulls.append(whole_image_hull(image_hw))
    subsets.append(0)
    return np.stack(masks), hulls, np.array(subsets, dtype=np.int64)


@dataclass(frozen=True)
class ImageRegions:
    """The candidate regions of one image (see :func:`candidate_regions`)."""

    masks: np.ndarray  # (M', h, w) bool on the feature grid, the whole image last
    hulls: list  # hull polygon (x, y) of each region, in network-input pixels
    subsets: np.ndarray  # cluster bitmask of each region (0 = whole image)
    labels: np.ndarray  # cluster of each salient point


def image_regions(points: np.ndarray, n_clusters: int, image_hw: tuple[int, int], grid_hw: tuple[int, int],
                  min_cells: int = 1, max_iter: int = 100) -> ImageRegions:
    """Section 2 for one image: fast global k-means of its salient points, then the power-set hull regions.

    The regions stage runs this for every image and ``rdfa search`` for a new photo.
    """
    points = np.asarray(points, dtype=np.float64)
    _, labels = fast_global_kmeans(points, n_clusters, max_iter)
    masks, hulls, subsets = candidate_regions(points, labels, n_clusters, image_hw, grid_hw, min_cells)
    return ImageRegions(masks, hulls, subsets, labels)


def box_region(image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> ImageRegions:
    """R_M of a query cut to its box: the whole crop, its only region (section 5)."""
    return ImageRegions(whole_image_mask(grid_hw), [whole_image_hull(image_hw)], np.zeros(1, dtype=np.int64),
                        np.zeros(0, dtype=np.int64))


def rescale_points(points: np.ndarray, factor_xy: tuple[float, float]) -> np.ndarray:
    """Pixel coordinates ``(x, y)`` in an image resized by ``factor_xy``, pixel centres kept aligned.

    The convention of :func:`grid_cell_centers`: pixel ``x`` covers
    ``[x - 0.5, x + 0.5]``, so ``x' = (x + 0.5) f - 0.5``.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (points + 0.5) * np.asarray(factor_xy, dtype=np.float64) - 0.5


def bounding_box(points: np.ndarray, image_hw: tuple[int, int]) -> list[float]:
    """``[x1, y1, x2, y2]`` around the ``(x, y)`` points, clipped to an ``(H, W)`` image's pixel extent."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    h, w = image_hw
    lo = np.maximum(points.min(0), 0.0)
    hi = np.minimum(points.max(0), [w - 1, h - 1])
    return [float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])]
