"""Region pooling of dense local descriptors (paper section 3).

``fmap`` is an ``(H, W, K)`` feature map, ``masks`` a boolean ``(M, H, W)``
stack of regions R'_m, ``alpha`` the ``(H, W)`` spatial weights of eq. (1) and
``beta`` the ``(K,)`` channel weights of eq. (2).
"""
from __future__ import annotations

import numpy as np

from .weights import channel_weights, spatial_weights


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Scale vectors to unit l2 norm (zero vectors stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def first_order(fmap: np.ndarray, masks: np.ndarray, beta: np.ndarray,
                alpha: np.ndarray | None = None) -> np.ndarray:
    """Sum-pooled region descriptors, l2-normalised: eq. (3), or eq. (9) with ``alpha``.

    eq. (3): ``beta o sum_{p in R'_m} f_p``; eq. (9): ``beta o sum alpha_p f_p``.
    Returns ``(M, K)``.
    """
    fmap = np.asarray(fmap, dtype=np.float64)
    h, w, k = fmap.shape
    weights = np.asarray(masks, dtype=np.float64).reshape(len(masks), h * w)
    if alpha is not None:
        weights = weights * np.asarray(alpha, dtype=np.float64).reshape(1, h * w)
    return l2_normalize((weights @ fmap.reshape(h * w, k)) * beta[None, :])


def reduce_local(fmap: np.ndarray, beta: np.ndarray, components: np.ndarray) -> np.ndarray:
    """eq. (4): ``U1^T (beta o f_p)`` for every position, ``(H, W, K')``.

    ``components`` is ``U1`` as a ``(K, K')`` matrix. As in eq. (4) the PCA mean
    is not subtracted: eq. (5) pools second moments about the origin.
    """
    fmap = np.asarray(fmap, dtype=np.float64)
    return (fmap * beta) @ components


def second_moments(local: np.ndarray, masks: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``G^avg`` of eq. (5) for every region: alpha-weighted mean of ``f f^T``, ``(M, K', K')``.

    A region whose alpha is zero everywhere falls back to the unweighted mean.
    """
    h, w, kp = local.shape
    flat = local.reshape(h * w, kp)
    weights = np.asarray(masks, dtype=np.float64).reshape(len(masks), h * w)
    weighted = weights * np.asarray(alpha, dtype=np.float64).reshape(1, h * w)
    totals = weighted.sum(1)
    dead = totals <= 0
    weighted[dead] = weights[dead]
    totals[dead] = weights[dead].sum(1)
    weighted /= np.maximum(totals, 1e-300)[:, None]
    # (M, K', P) @ (P, K'): one weighted outer-product sum per region.
    return np.matmul(np.swapaxes(weighted[:, :, None] * flat[None], 1, 2), flat)


def regularized_log(matrices: np.ndarray, eps: float) -> np.ndarray:
    """Matrix logarithm of symmetric PSD matrices, regularised: ``log(G + eps * tr(G)/K' * I)``.

    A region with fewer positions than K' has a singular ``G`` (rank <= its
    number of positions), whose log does not exist; the ridge is relative to
    the mean eigenvalue so that it does not depend on the scale of the
    activations. ``eps`` is a parameter (``descriptors.log_eps``).
    """
    if eps <= 0:
        raise ValueError(f"descriptors.log_eps must be > 0 (got {eps})")
    matrices = np.asarray(matrices, dtype=np.float64)
    kp = matrices.shape[-1]
    ridge = eps * np.trace(matrices, axis1=-2, axis2=-1) / kp
    ridge = np.maximum(ridge, np.finfo(np.float64).tiny)  # an all-zero G still gets a finite log
    eigvals, eigvecs = np.linalg.eigh(matrices + ridge[..., None, None] * np.eye(kp))
    eigvals = np.maximum(eigvals, ridge[..., None] * 1e-3)
    return (eigvecs * np.log(eigvals)[..., None, :]) @ np.swapaxes(eigvecs, -1, -2)


def upper_triangle(matrices: np.ndarray) -> np.ndarray:
    """vec(): the upper triangle (diagonal included) of each ``(K', K')`` matrix, ``K'(K'+1)/2`` values."""
    kp = matrices.shape[-1]
    rows, cols = np.triu_indices(kp)
    return matrices[..., rows, cols]


def second_order(local: np.ndarray, masks: np.ndarray, alpha: np.ndarray, log_eps: float) -> np.ndarray:
    """eq. (5): ``vec(log(G^avg_{R_m}))``, l2-normalised, for every region: ``(M, K'(K'+1)/2)``."""
    return l2_normalize(upper_triangle(regularized_log(second_moments(local, masks, alpha), log_eps)))


def region_descriptors_batch(fmaps: list[np.ndarray], masks: list[np.ndarray], components: np.ndarray,
                             beta_eps: float, log_eps: float) -> list[np.ndarray]:
    """:func:`region_descriptors` of many images, with one batched eigendecomposition (eq. 5).

    The regions' ``G^avg`` of every image are stacked so that the matrix logs
    run as one call over the whole chunk; each image's rows come out equal to
    :func:`region_descriptors` of that image alone.
    """
    moments = []
    for fmap, image_masks in zip(fmaps, masks):
        fmap = np.asarray(fmap, dtype=np.float64)
        local = reduce_local(fmap, channel_weights(fmap, beta_eps), components)
        moments.append(second_moments(local, image_masks, spatial_weights(fmap)))
    if not moments:
        return []
    stacked = upper_triangle(regularized_log(np.concatenate(moments), log_eps))
    rows = l2_normalize(stacked).astype(np.float32)
    return np.split(rows, np.cumsum([len(m) for m in moments])[:-1])


def region_descriptors(fmap: np.ndarray, masks: np.ndarray, components: np.ndarray,
                       beta_eps: float, log_eps: float) -> np.ndarray:
    """eqs. (1), (2), (4), (5) for one image: a second-order descriptor per region, ``(M, K'(K'+1)/2)`` float32.

    Local descriptors weighted by beta and reduced to K' by the PCA basis
    ``components``, pooled per region of ``masks`` with alpha; float32 is the
    stored precision. The descriptors stage runs this for every image and
    ``rdfa search`` for a new photo.
    """
    fmap = np.asarray(fmap, dtype=np.float64)
    local = reduce_local(fmap, channel_weights(fmap, beta_eps), components)
    return second_order(local, masks, spatial_weights(fmap), log_eps).astype(np.float32)
