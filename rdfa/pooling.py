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


def l2_rows_into(rows: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = l2_normalize(rows)``: the same float64 arithmetic, cast to ``out``'s type as it goes.

    The squares are summed in float64 as ``np.linalg.norm`` sums them, and the division is done in
    float64, but without a float64 copy of the rows: half the time of ``l2_normalize`` on float32 rows,
    which made a sixth of the Table 1 stage's scoring time (tests/test_projection.py: equal bit for bit).
    """
    norms = np.sqrt(np.add.reduce(np.square(rows, dtype=np.float64), axis=1))
    np.divide(rows, np.maximum(norms, 1e-12)[:, None], out=out, casting="unsafe")


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


def live_channels(fmap: np.ndarray) -> np.ndarray:
    """The channels of an ``(H, W, K)`` map that are nonzero at some position (indices, ascending)."""
    fmap = np.asarray(fmap)
    return np.flatnonzero(fmap.reshape(-1, fmap.shape[-1]).any(axis=0))


def reduce_local(fmap: np.ndarray, beta: np.ndarray, components: np.ndarray) -> np.ndarray:
    """eq. (4): ``U1^T (beta o f_p)`` for every position, ``(H, W, K')``.

    ``components`` is ``U1`` as a ``(K, K')`` matrix. As in eq. (4) the PCA mean
    is not subtracted: eq. (5) pools second moments about the origin.
    """
    fmap = np.asarray(fmap, dtype=np.float64)
    h, w, k = fmap.shape
    flat = fmap.reshape(h * w, k)
    # A channel that is zero at every position (ReLU: a third of EfficientNet-Lite0's on COIL-100,
    # whose maps are 95 % zeros) adds nothing to the product: leaving it out is exact up to the
    # order of the sums (1e-15 relative) and saves a quarter of eq. 4's time (bench/kernels.py eq5).
    live = live_channels(flat)
    if len(live) == k:
        return (fmap * beta) @ components
    beta = np.asarray(beta, dtype=np.float64)
    return ((flat[:, live] * beta[live]) @ components[live]).reshape(h, w, components.shape[1])


def _normalized_weights(masks: np.ndarray, alpha: np.ndarray, positions: int) -> np.ndarray:
    """eq. 5's averaging weights, ``(M, H*W)``: alpha on each region, summing to 1; a region whose
    alpha is zero everywhere falls back to uniform weights over its positions."""
    weights = np.asarray(masks, dtype=np.float64).reshape(len(masks), positions)
    weighted = weights * np.asarray(alpha, dtype=np.float64).reshape(1, positions)
    totals = weighted.sum(1)
    dead = totals <= 0
    weighted[dead] = weights[dead]
    totals[dead] = weights[dead].sum(1)
    weighted /= np.maximum(totals, 1e-300)[:, None]
    return weighted


def second_moments(local: np.ndarray, masks: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``G^avg`` of eq. (5) for every region: alpha-weighted mean of ``f f^T``, ``(M, K', K')``.

    A region whose alpha is zero everywhere falls back to the unweighted mean.
    """
    h, w, kp = local.shape
    flat = local.reshape(h * w, kp)
    return _weighted_outer_sums(_normalized_weights(masks, alpha, h * w), flat)


def _weighted_outer_sums(weighted: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``sum_p weighted[m, p] f_p f_p^T`` per row of ``weighted``: (M, K', P) @ (P, K'), ``(M, K', K')``."""
    return np.matmul(np.swapaxes(weighted[:, :, None] * flat[None], 1, 2), flat)


#: Regions of few positions get eq. 5's log from their small Gram matrix (:func:`log_second_moments`),
#: grouped by their number of positions rounded up to a multiple of this.
GRAM_STEP = 16


def log_second_moments(locals_: list[np.ndarray], masks: list[np.ndarray], alphas: list[np.ndarray],
                       eps: float) -> np.ndarray:
    """``regularized_log(second_moments(...))`` for every region of every image, ``(sum M, K', K')``.

    The same matrices, computed faster: a region with n weighted positions has
    ``G = A^T A`` with ``A`` its ``(n, K')`` rows ``sqrt(w_p) f_p``; where n
    (rounded up to :data:`GRAM_STEP`) is below K', the log comes from the
    ``n x n`` matrix ``A A^T`` (:func:`factored_log`; COIL-100: 43 % of the
    regions, about 80 of 256 positions), equal to the K' x K' route to
    rounding (2e-13 on COIL-100's descriptors, and 1.2x faster over all its
    regions: ``bench/kernels.py eq5``); the other regions take that route, batched.
    """
    if eps <= 0:
        raise ValueError(f"descriptors.log_eps must be > 0 (got {eps})")
    if not locals_:
        return np.zeros((0, 0, 0))
    kp = locals_[0].shape[-1]
    large_moments, large_at, small = [], [], {}
    row = 0
    for local, image_masks, alpha in zip(locals_, masks, alphas):
        h, w, _ = local.shape
        flat = np.asarray(local, dtype=np.float64).reshape(h * w, kp)
        weighted = _normalized_weights(image_masks, alpha, h * w)
        padded = -(-(weighted > 0).sum(1) // GRAM_STEP) * GRAM_STEP
        for m in np.flatnonzero(padded < kp):
            at = np.flatnonzero(weighted[m] > 0)
            small.setdefault(int(padded[m]), []).append((row + m, np.sqrt(weighted[m, at])[:, None] * flat[at]))
        large = np.flatnonzero(padded >= kp)
        if len(large):
            large_moments.append(_weighted_outer_sums(weighted[large], flat))
            large_at.append(row + large)
        row += len(weighted)
    out = np.empty((row, kp, kp))
    if large_moments:
        out[np.concatenate(large_at)] = regularized_log(np.concatenate(large_moments), eps)
    for size, items in small.items():
        factors = np.zeros((len(items), size, kp))
        for j, (_, rows) in enumerate(items):
            factors[j, :len(rows)] = rows
        out[[at for at, _ in items]] = factored_log(factors, eps)
    return out


def factored_log(factors: np.ndarray, eps: float) -> np.ndarray:
    """:func:`regularized_log` of ``G = A^T A`` for a batch of ``(n, K')`` matrices ``A``, from ``A A^T``.

    With ``A A^T = U diag(s) U^T``, G's eigenvalues are ``s`` (eigenvectors
    ``A^T U s^-1/2``) and K' - n zeros, so ``log(G + rI) = log(r) I + A^T U
    diag(log(1 + s/r) / s) U^T A``; the factor tends to ``1/r`` as ``s -> 0``,
    so no small eigenvalue is divided by. Zero rows of ``A`` (padding) change
    nothing. Same ridge ``r`` and floor as :func:`regularized_log`.
    """
    kp = factors.shape[-1]
    factors_t = np.swapaxes(factors, -1, -2)
    gram = factors @ factors_t
    ridge = np.maximum(eps * np.trace(gram, axis1=-2, axis2=-1) / kp, np.finfo(np.float64).tiny)
    eigvals, eigvecs = np.linalg.eigh(gram)
    # log((s + r) / r), with regularized_log's floor of 1e-3 r on the eigenvalues of G + rI
    logs = np.log1p(np.maximum(eigvals / ridge[:, None], 1e-3 - 1))
    scale = np.divide(logs, eigvals, out=np.broadcast_to(1 / ridge[:, None], logs.shape).copy(),
                      where=eigvals != 0)
    basis = factors_t @ eigvecs  # (B, K', n)
    out = (basis * scale[:, None, :]) @ np.swapaxes(basis, -1, -2)
    diagonal = np.arange(kp)
    out[:, diagonal, diagonal] += np.log(ridge)[:, None]
    return out


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
    return l2_normalize(upper_triangle(log_second_moments([local], [masks], [alpha], log_eps)))


def region_descriptors_batch(fmaps: list[np.ndarray], masks: list[np.ndarray], components: np.ndarray,
                             beta_eps: float, log_eps: float) -> list[np.ndarray]:
    """:func:`region_descriptors` of many images, with one batched eigendecomposition (eq. 5).

    The regions' ``G^avg`` of every image are stacked so that the matrix logs
    run as one call over the whole chunk; each image's rows come out equal to
    :func:`region_descriptors` of that image alone.
    """
    locals_, alphas = [], []
    for fmap in fmaps:
        fmap = np.asarray(fmap, dtype=np.float64)
        locals_.append(reduce_local(fmap, channel_weights(fmap, beta_eps), components))
        alphas.append(spatial_weights(fmap))
    if not locals_:
        return []
    rows = l2_normalize(upper_triangle(log_second_moments(locals_, masks, alphas, log_eps))).astype(np.float32)
    return np.split(rows, np.cumsum([len(m) for m in masks])[:-1])


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
