"""PCA-whitening (eq. 6) of one set of vectors at several D, from one projection.

Table 1 whitens every method at each D of ``methods.D`` with the leading axes
of one fit (:func:`stages.methods.whitenings`). The projection on the axes of
the largest D holds the projections on the axes of every smaller D as its
leading columns, so one matrix product serves them all; the rows go through
it in blocks of ``chunk_rows``, so that the float64 copies it needs stay the
size of a block, not of the whole set.
"""
from __future__ import annotations

import numpy as np

from .pooling import l2_normalize
from .whitening import PCA

#: The variance floor of :func:`rdfa.whitening.whiten` (its default ``eps``).
VARIANCE_FLOOR = 1e-12


def whitened_dims(x: np.ndarray, pca: PCA, dims: list[int], chunk_rows: int) -> dict[int, np.ndarray]:
    """``{D: whitened(x, PCA(mean, components[:, :D], eigenvalues[:D]))}`` for every D in ``dims``, float32.

    eq. (6) as :func:`rdfa.whitening.whiten` computes it (float64: the
    training mean subtracted, the product with the axes, each axis divided by
    its standard deviation), then l2 and float32 as the whitening stage
    stores it; the columns beyond D are left out before the l2.
    """
    if chunk_rows < 1:
        raise ValueError(f"runtime.chunk_rows must be >= 1 (got {chunk_rows})")
    if not dims or max(dims) > pca.components.shape[1] or min(dims) < 1:
        raise ValueError(f"D in {dims} must be between 1 and the {pca.components.shape[1]} axes of the fit")
    top = max(dims)
    axes = pca.components[:, :top]
    scale = 1.0 / np.sqrt(np.maximum(pca.eigenvalues[:top], VARIANCE_FLOOR))
    out = {dim: np.empty((len(x), dim), dtype=np.float32) for dim in dims}
    for start in range(0, len(x), chunk_rows):
        block = np.asarray(x[start:start + chunk_rows], dtype=np.float64)
        projected = ((block - pca.mean) @ axes) * scale
        for dim, rows in out.items():
            rows[start:start + len(block)] = l2_normalize(projected[:, :dim])
    return out
