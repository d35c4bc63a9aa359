"""Salient points of an image, ranked by the spatial weights (paper section 2).

Hessian-affine points are detected in the image, ranked by alpha resized to
the image, and the ``N_max`` strongest kept. When the detector finds fewer
than ``N_min`` points, the ``N_min`` largest values of alpha are taken
instead. Two readings of that fallback:

- ``grid`` (default): the ``N_min`` largest cells of alpha on its own feature
  grid, as cell centres in image coordinates. When the grid has fewer cells
  than ``N_min`` every cell is selected, so the regions no longer depend on
  alpha: the stage logs how often that happens.
- ``pixels``: the ``N_min`` largest pixels of alpha bilinearly resized to the
  image. Around a single strongest cell that is a blob of about
  ``sqrt(N_min)`` pixels, so all the cluster regions collapse onto that cell
  (degenerate, duplicated regions); kept for comparison only.

The detector (``saliency.detector``, :data:`DETECTORS`): ``hesaff`` runs Perdoch's
Hessian-affine detector on the network input, as the paper. ``hesaff_half`` runs it on the
input shrunk 2x (area averaging) and maps the points back: the method keeps only point
positions, and those need feature-grid precision (cells of 16-32 pixels), not pixel precision.
It detects about 4-5x fewer points, so ``N_min`` counts points at that scale: it is divided by
4 (the shrunk image's share of the pixels), for the threshold and for the fallback alike. It also
uses a 9-pixel instead of a 41-pixel patch for the SIFT descriptors pyhesaff computes and this
method drops (the patch also decides how close to the border a point may lie). About 7x faster
on synth (docs/speed.md); a change of method, measured there, not the default.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .regions import rescale_points
from .settings import DETECTOR_NAMES, FALLBACKS
from .weights import spatial_weights


def resize_to_image(alpha: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize the ``(H, W)`` grid map to the image size ``(H_I, W_I)``.

    Cell ``(y, x)`` covers image pixels ``[x * W_I / W, (x + 1) * W_I / W)``;
    its value is placed at that cell's centre (half-pixel-centre convention).
    """
    import cv2  # local import: keeps ``import rdfa`` light

    h_img, w_img = int(image_hw[0]), int(image_hw[1])
    return cv2.resize(np.asarray(alpha, dtype=np.float32), (w_img, h_img),
                      interpolation=cv2.INTER_LINEAR)


def rank_points(points_xy: np.ndarray, alpha_image: np.ndarray, n_max: int) -> np.ndarray:
    """Sort points by alpha at their (rounded) pixel positions, strongest first; keep ``n_max``.

    Ties keep the detector's order (stable sort), so the result is deterministic.
    """
    points_xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    h_img, w_img = alpha_image.shape
    cols = np.clip(np.rint(points_xy[:, 0]).astype(int), 0, w_img - 1)
    rows = np.clip(np.rint(points_xy[:, 1]).astype(int), 0, h_img - 1)
    values = alpha_image[rows, cols]
    order = np.argsort(-values, kind="stable")
    return points_xy[order[:n_max]]


def top_alpha_positions(alpha_image: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` pixel positions ``(x, y)`` with the largest alpha (row-major order breaks ties)."""
    flat = alpha_image.ravel()
    n = min(int(n), flat.size)
    order = np.argsort(-flat, kind="stable")[:n]
    rows, cols = np.divmod(order, alpha_image.shape[1])
    return np.stack([cols, rows], axis=1).astype(np.float64)


def top_alpha_cells(alpha: np.ndarray, image_hw: tuple[int, int], n: int) -> np.ndarray:
    """Centres ``(x, y)``, in image pixels, of the ``n`` grid cells with the largest alpha.

    Cell ``(r, c)`` of an ``(H, W)`` grid over an ``(H_I, W_I)`` image has its
    centre at ``((c + 0.5) W_I / W - 0.5, (r + 0.5) H_I / H - 0.5)``, the
    convention the regions use to map hulls back onto the grid. Row-major
    order breaks ties. All cells when the grid has fewer than ``n``.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    h, w = alpha.shape
    h_img, w_img = int(image_hw[0]), int(image_hw[1])
    order = np.argsort(-alpha.ravel(), kind="stable")[:min(int(n), alpha.size)]
    rows, cols = np.divmod(order, w)
    return np.stack([(cols + 0.5) * (w_img / w) - 0.5, (rows + 0.5) * (h_img / h) - 0.5], axis=1)




def salient_points(keypoints_xy: np.ndarray, alpha: np.ndarray, image_hw: tuple[int, int],
                   n_max: int, n_min: int, fallback: str = "grid") -> tuple[np.ndarray, bool]:
    """The salient point set P of section 2.

    Returns ``(points, used_fallback)``: ``points`` is ``(N, 2)`` in image
    pixel coordinates ``(x, y)``; ``used_fallback`` says that the detector found
    fewer than ``n_min`` points and the largest values of alpha were used,
    read as ``fallback`` (module docstring).
    """
    if n_min < 1 or n_max < n_min:
        raise ValueError(f"need 1 <= N_min <= N_max (got N_min={n_min}, N_max={n_max})")
    if fallback not in FALLBACKS:
        raise ValueError(f"saliency.fallback must be one of {', '.join(FALLBACKS)} (got {fallback!r})")
    alpha_image = resize_to_image(alpha, image_hw)
    keypoints_xy = np.asarray(keypoints_xy, dtype=np.float64).reshape(-1, 2)
    h_img, w_img = alpha_image.shape
    inside = ((keypoints_xy[:, 0] >= 0) & (keypoints_xy[:, 0] <= w_img - 1)
              & (keypoints_xy[:, 1] >= 0) & (keypoints_xy[:, 1] <= h_img - 1))
    keypoints_xy = keypoints_xy[inside]
    if len(keypoints_xy) >= n_min:
        return rank_points(keypoints_xy, alpha_image, n_max), False
    if fallback == "grid":
        return top_alpha_cells(alpha, image_hw, n_min), True
    return top_alpha_positions(alpha_image, n_min), True


@dataclass(frozen=True)
class Detector:
    """How salient points are detected: on the image shrunk ``shrink`` times, with pyhesaff's
    ``options``, N_min divided by ``n_min_divisor`` (the points expected at that scale)."""

    shrink: int
    options: dict
    n_min_divisor: int


#: ``saliency.detector`` (module text).
DETECTORS = {"hesaff": Detector(1, {}, 1), "hesaff_half": Detector(2, {"patchSize": 9}, 4)}
assert tuple(DETECTORS) == DETECTOR_NAMES


def detect_points(gray: np.ndarray, detector: str = "hesaff") -> np.ndarray:
    """Salient point centres ``(x, y)`` of a grayscale ``uint8`` image, in its pixels, by ``detector``."""
    import cv2  # local import: keeps ``import rdfa`` light

    d = DETECTORS[detector]
    if d.shrink == 1:
        return detect_hessian_affine(gray, **d.options)
    h, w = gray.shape[:2]
    small = cv2.resize(np.ascontiguousarray(gray), (round(w / d.shrink), round(h / d.shrink)),
                       interpolation=cv2.INTER_AREA)
    found = detect_hessian_affine(small, **d.options)
    return rescale_points(found, (w / small.shape[1], h / small.shape[0]))


def detect_hessian_affine(gray: np.ndarray, **hesaff_params) -> np.ndarray:
    """Hessian-affine keypoint centres ``(x, y)`` of a grayscale ``uint8`` image (ref. [16]).

    Uses pyhesaff (Perdoch's implementation of Mikolajczyk's detector).
    """
    import pyhesaff

    gray = np.ascontiguousarray(gray)
    if gray.ndim != 2:
        raise ValueError(f"expected a grayscale image, got shape {gray.shape}")
    # pyhesaff wants a 3-channel image; a gray one replicated gives the same response.
    rgb = np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    keypoints, _ = pyhesaff.detect_feats_in_image(rgb, **hesaff_params)
    return np.asarray(keypoints[:, :2], dtype=np.float64)


@dataclass(frozen=True)
class ImagePoints:
    """The salient points of one image, as the points stage stores them."""

    points: np.ndarray  # (N, 2) float32 pixel (x, y) of the network input
    fallback: bool  # fewer than N_min detected: the largest values of alpha were taken
    all_cells: bool  # the grid fallback took every cell (the grid has no more than N_min cells)
    n_detected: int  # Hessian-affine points found


def image_points(image: np.ndarray, fmap: np.ndarray, n_max: int, n_min: int, fallback: str = "grid",
                 detector: str = "hesaff") -> ImagePoints:
    """Section 2 for one image: Hessian-affine points of the network input ``image`` ranked by alpha.

    ``image`` is the ``(H, W, 3) uint8`` input the network saw, ``fmap`` its
    stored feature map (alpha, eq. 1, is computed from it). The points stage
    runs this for every image and ``rdfa search`` for a new photo. Points are
    rounded to float32, the precision they are stored in, so that the regions
    made from them do not depend on whether they went through a file. ``detector``: see
    :data:`DETECTORS` (``hesaff_half`` divides ``n_min`` by 4).
    """
    import cv2  # local import: keeps ``import rdfa`` light

    keypoints = detect_points(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY), detector)
    alpha = spatial_weights(fmap)
    n_min = max(1, n_min // DETECTORS[detector].n_min_divisor)
    points, used = salient_points(keypoints, alpha, image.shape[:2], n_max, n_min, fallback)
    return ImagePoints(points.astype(np.float32), bool(used), bool(used and fallback == "grid" and alpha.size <= n_min),
                       len(keypoints))
