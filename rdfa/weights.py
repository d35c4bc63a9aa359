"""CroW-style spatial and channel weights (paper section 2, eq. 1; section 3, eq. 2).

Feature maps are arrays of shape ``(H, W, K)``: ``H x W`` positions ``p`` on the
feature grid, ``K`` channels, non-negative (the output of a ReLU).
"""
from __future__ import annotations

import numpy as np


def spatial_weights(fmap: np.ndarray) -> np.ndarray:
    """alpha of eq. (1): channel-summed responses, l2-normalised over positions.

    Returns an ``(H, W)`` array. A map with no response at all (every value
    zero) gets uniform weights, so that later weighted averages stay defined.
    """
    summed = np.asarray(fmap, dtype=np.float64).sum(axis=-1)
    norm = np.sqrt((summed ** 2).sum())
    if norm == 0:
        return np.full(summed.shape, 1.0 / np.sqrt(summed.size))
    return summed / norm


def channel_weights(fmap: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """beta of eq. (2): log inverse channel sparsity (CroW's burstiness weights).

    ``Q_k`` is the fraction of positions where channel ``k`` responds; sparse
    channels get large weights. Returns a ``(K,)`` array.
    """
    fmap = np.asarray(fmap)
    n_channels = fmap.shape[-1]
    return sparsity_weights((fmap > 0).reshape(-1, n_channels).mean(axis=0, dtype=np.float64), eps)


def sparsity_weights(q: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """eq. (2) from ``Q``, the fraction of positions where each channel responds (all the map's
    channels): :func:`channel_weights` of a map whose responses are counted already."""
    if eps <= 0:
        raise ValueError(f"beta eps must be > 0 (got {eps})")
    q = np.asarray(q, dtype=np.float64)
    return np.log((len(q) * eps + q.sum()) / (eps + q))
