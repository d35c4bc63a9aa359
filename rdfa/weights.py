"""CroW-style spatial and channel weights (paper section 2, eq. 1; section 3, eq. 2).

Feature maps are arrays of shape ``(H, W, K)``: ``H x W`` positions ``p`` on the
feature grid, ``K`` channels, non-negative (the output of a ReLU).
"""
from __future__ import annotations

import numpy as np


def channel_sums(fmap: np.ndarray) -> np.ndarray:
    """The channel-summed map ``S``, ``(H, W)`` float64: eq. (1) before its normalisation, and
    CroW's spatial weights before theirs."""
    return np.asarray(fmap, dtype=np.float64).sum(axis=-1)


def spatial_weights(fmap: np.ndarray, summed: np.ndarray | None = None) -> np.ndarray:
    """alpha of eq. (1): channel-summed responses, l2-normalised over positions.

    Returns an ``(H, W)`` array. A map with no response at all (every value
    zero) gets uniform weights, so that later weighted averages stay defined.
    ``summed``: :func:`channel_sums` of ``fmap``, when it is computed already.
    """
    summed = channel_sums(fmap) if summed is None else summed
    norm = np.sqrt((summed ** 2).sum())
    if norm == 0:
        return np.full(summed.shape, 1.0 / np.sqrt(summed.size))
    return summed / norm


def channel_weights(fmap: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """beta of eq. (2): log inverse channel sparsity (CroW's burstiness weights).

    ``Q_k`` is the fraction of positions where channel ``k`` responds; sparse
    channels get large weights. Returns a ``(K,)`` array.
    """
    return sparsity_weights(response_fractions(fmap), eps)


def response_fractions(fmap: np.ndarray) -> np.ndarray:
    """``Q`` of eq. (2): the fraction of positions where each channel is positive, ``(K,)`` float64."""
    fmap = np.asarray(fmap)
    flat = fmap.reshape(-1, fmap.shape[-1])
    # The count over the number of positions: what mean(dtype=float64) of the booleans gives.
    return np.count_nonzero(flat > 0, axis=0) / np.float64(flat.shape[0])


def sparsity_weights(q: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """eq. (2) from ``Q``, the fraction of positions where each channel responds (all the map's
    channels): :func:`channel_weights` of a map whose responses are counted already."""
    if eps <= 0:
        raise ValueError(f"beta eps must be > 0 (got {eps})")
    q = np.asarray(q, dtype=np.float64)
    return np.log((len(q) * eps + q.sum()) / (eps + q))
