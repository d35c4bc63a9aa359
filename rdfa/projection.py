"""PCA-whitening (eq. 6) of one set of vectors at several D, from one projection.

Table 1 whitens every method at each D of ``methods.D`` with the leading axes
of one fit (:func:`rdfa.methods.table1.whitenings`). The projection on the axes of
the largest D holds the projections on the axes of every smaller D as its
leading columns, so one matrix product serves them all; the rows go through
it in blocks of ``chunk_rows``, so that the working copies it needs stay the
size of a block, not of the whole set.
"""
from __future__ import annotations

import numpy as np

from .pooling import l2_rows_into
from .whitening import PCA, PCA_WHITENING, Whitening, axis_scales


def whitened_dims(x: np.ndarray, pca: PCA, dims: list[int], chunk_rows: int,
                  whitening: Whitening = PCA_WHITENING) -> dict[int, np.ndarray]:
    """``{D: whitened(x, PCA(mean, components[:, :D], eigenvalues[:D]), whitening)}`` for every D in ``dims``, float32.

    eq. (6) as :func:`rdfa.whitening.whiten` computes it (in float32 for
    float32 rows, else float64: the training mean subtracted, the product
    with the axes, each axis divided by
    its standard deviation, or the factor ``whitening`` gives it), then l2
    and float32 as the whitening stage stores it; the columns beyond D are
    left out before the l2. See :func:`whitened_variants` for several modes.
    """
    if not dims:
        raise ValueError(f"D in {dims} must be between 1 and the {pca.components.shape[1]} axes of the fit")
    return whitened_variants(x, pca, [(whitening, dims)], chunk_rows)[0]


def whitened_variants(x: np.ndarray, pca: PCA, variants: list[tuple[Whitening, list[int]]],
                      chunk_rows: int) -> list[dict[int, np.ndarray]]:
    """:func:`whitened_dims` for several ``(whitening, dims)`` at once: one projection serves them all.

    The modes differ only in the factor each axis is multiplied by, and each
    mode's factor for an axis is the same at every D (shrinkage uses the mean
    over all axes of the fit), so the rows are projected once on the axes of
    the largest D of any variant.
    """
    if chunk_rows < 1:
        raise ValueError(f"runtime.chunk_rows must be >= 1 (got {chunk_rows})")
    wanted = [d for _, dims in variants for d in dims]
    if not wanted:
        return [{} for _ in variants]
    if max(wanted) > pca.components.shape[1] or min(wanted) < 1:
        raise ValueError(f"D in {sorted(set(wanted))} must be between 1 and the {pca.components.shape[1]} "
                         "axes of the fit")
    if any(w.mode == "none" for w, _ in variants):
        raise ValueError("whitening.mode 'none' has no D: the descriptors are used as they are")
    top = max(wanted)
    # float32 rows (the stored descriptors) are projected in float32, as rdfa.whitening.whiten does.
    work = np.float32 if np.asarray(x[:0]).dtype == np.float32 else np.float64
    axes = pca.components[:, :top].astype(work, copy=False)  # (no copy of a fit already in that type)
    mean = pca.mean.astype(work, copy=False)
    scales = [axis_scales(pca, w, top).astype(work) for w, _ in variants]
    out = [{dim: np.empty((len(x), dim), dtype=np.float32) for dim in dims} for _, dims in variants]
    for start in range(0, len(x), chunk_rows):
        block = np.asarray(x[start:start + chunk_rows])
        projected = (block.astype(work, copy=False) - mean) @ axes
        for scale, vectors in zip(scales, out):
            scaled = projected * scale
            for dim, rows in vectors.items():
                l2_rows_into(scaled[:, :dim], rows[start:start + len(block)])
    return out
