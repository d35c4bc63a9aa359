"""Region-to-region image search (paper section 4, eqs. 7 and 8), every query at once.

Queries and database are stacked region descriptors: query ``q`` owns rows
``q_offsets[q]:q_offsets[q + 1]`` of ``q_rows``, database image ``i`` rows
``offsets[i]:offsets[i + 1]`` of ``regions``. Descriptors are l2-normalised,
so a dot product is a cosine similarity.

All queries are searched together, as one matrix product per block of
``chunk_rows`` database rows: ``(query rows, chunk_rows)`` similarities at a
time (plus the per-query maxima of that block), never the whole
``(query rows, database rows)`` matrix, and the ``(n_queries, n_images)``
results. The arithmetic is the per-query search's: float32 products of the
stored float32 descriptors for eq. 7, float64 for the search after region
QE (the expanded query is float64, as eq. 8 l2-normalises it in float64).
"""
from __future__ import annotations

import numpy as np

from .pooling import l2_normalize

#: Database rows per block of the chunked products; the stages pass ``runtime.chunk_rows``.
CHUNK_ROWS = 16384


def _check_offsets(offsets: np.ndarray, what: str) -> np.ndarray:
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0:
        raise ValueError(f"{what} offsets must start at 0 (got {offsets[:3]}...)")
    if np.any(np.diff(offsets) <= 0):
        raise ValueError(f"every {what} needs at least one region")
    return offsets


def _products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T``, always as a matrix-matrix product (gemm).

    numpy hands a one-row operand to gemv, whose partial sums round
    differently from gemm's in the last bits: a one-row query (``rdfa
    search`` with one photo) or a last block of one database row is padded
    to two rows, so that it goes through gemm as the pipeline's many
    queries do.
    """
    pad_a, pad_b = len(a) == 1, len(b) == 1
    if pad_a:
        a = np.concatenate([a, a])
    if pad_b:
        b = np.concatenate([b, b])
    return (a @ b.T)[:1 if pad_a else None, :1 if pad_b else None]


def _slot_major(q_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A row order for eq. 7's max over each query's rows: ``(order, sizes, queries)``.

    Queries by decreasing number of rows (``queries``); then row ``j`` of
    every query that has one, for ``j = 0, 1, ...``: the queries with more
    than ``j`` rows are the first ``sizes[j]`` of ``queries``, so that each
    step of the max is one elementwise maximum of two contiguous slices.
    """
    counts = np.diff(q_offsets)
    queries = np.argsort(-counts, kind="stable")
    sizes = (counts[queries][None, :] > np.arange(int(counts.max()))[:, None]).sum(1)
    order = np.concatenate([q_offsets[queries[:n]] + j for j, n in enumerate(sizes)])
    return order, sizes, queries


def query_maxima(q_rows: np.ndarray, q_offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """eq. 7's products with a block of database ``rows``, the max over each query's own rows taken.

    Returns ``(n_queries, len(rows))``; ``q_offsets`` must be checked
    already, and ``rows`` have the queries' type. The query rows are
    multiplied in :func:`_slot_major` order, and the maxima taken in place
    on contiguous slices of the products (faster than gathering row ``j``
    of every query from the products in the queries' order; the same
    values: a max does not round).
    """
    if len(q_rows) == len(q_offsets) - 1:  # every query one region: no max over query regions
        return _products(q_rows, rows)
    order, sizes, queries = _slot_major(q_offsets)
    block = _products(q_rows[order], rows)  # (query rows, len(rows)), slot-major
    head = block[:sizes[0]]
    start = sizes[0]
    for n in sizes[1:]:
        np.maximum(head[:n], block[start:start + n], out=head[:n])
        start += n
    out = np.empty_like(head)
    out[queries] = head
    return out


def fold_image_maxima(sim: np.ndarray, best: np.ndarray, block: np.ndarray, start: int,
                      offsets: np.ndarray) -> None:
    """eq. 7's max over each image's regions, for the database rows ``start:start + block.shape[1]``.

    ``block`` is :func:`query_maxima` of those rows; ``sim`` and ``best``
    (``(n_queries, n_images)``, ``-inf`` and 0 before the first block) are
    updated in place for the images the rows belong to, ``best`` with the
    row index (``start`` + column). An image cut by the block boundary keeps
    its earlier row on ties, so blocks folded in row order give the first
    row reaching the maximum, whatever the block sizes.
    """
    stop = start + block.shape[1]
    # The images this block touches; the first and last may continue in the neighbouring blocks.
    first = int(np.searchsorted(offsets, start, side="right")) - 1
    last = int(np.searchsorted(offsets, stop - 1, side="right")) - 1
    starts = np.concatenate(([start], offsets[first + 1:last + 1])) - start
    lengths = np.diff(np.append(starts, stop - start))
    # eq. 7's max over the image's regions: a segment max along the database rows.
    seg_max = np.maximum.reduceat(block, starts, axis=1)
    # The first row of each segment that reaches its max (np.where's column, else past the end).
    hit = block >= np.repeat(seg_max, lengths, axis=1)
    cols = np.where(hit, np.arange(stop - start, dtype=np.int32), np.int32(stop - start))
    del hit
    seg_best = np.minimum.reduceat(cols, starts, axis=1).astype(np.int64) + start
    del cols
    # Strictly greater: an image cut by the block boundary keeps the earlier (first) row on ties.
    view_sim, view_best = sim[:, first:last + 1], best[:, first:last + 1]
    better = seg_max > view_sim
    view_sim[better] = seg_max[better]
    view_best[better] = seg_best[better]


def similarities(q_rows: np.ndarray, q_offsets: np.ndarray, regions: np.ndarray, offsets: np.ndarray,
                 chunk_rows: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """eq. (7) for every query: similarity to every database image = best region pair.

    Returns ``(similarity, best_region)``, both ``(n_queries, n_images)``;
    ``best_region`` is the row (in ``regions``) of the region that matched
    best, the first such row when several reach the maximum. The similarity
    has the products' type: float32 for float32 inputs, float64 if either
    input is float64 (as numpy's ``@`` promotes).
    """
    if chunk_rows < 1:
        raise ValueError(f"runtime.chunk_rows must be >= 1 (got {chunk_rows})")
    q_rows = np.atleast_2d(q_rows)
    q_offsets = _check_offsets(q_offsets, "query")
    offsets = _check_offsets(offsets, "database image")
    if q_offsets[-1] != len(q_rows) or offsets[-1] != len(regions):
        raise ValueError(f"offsets end at {q_offsets[-1]} / {offsets[-1]}, "
                         f"but there are {len(q_rows)} query rows / {len(regions)} database rows")
    dtype = np.result_type(q_rows.dtype, regions.dtype)
    q_rows = q_rows.astype(dtype, copy=False)
    n_queries, n_images = len(q_offsets) - 1, len(offsets) - 1
    sim = np.full((n_queries, n_images), -np.inf, dtype=dtype)
    best = np.zeros((n_queries, n_images), dtype=np.int64)
    for start in range(0, len(regions), chunk_rows):
        stop = min(start + chunk_rows, len(regions))
        block = query_maxima(q_rows, q_offsets, regions[start:stop].astype(dtype, copy=False))
        fold_image_maxima(sim, best, block, start, offsets)
    return sim, best


def rank_all(similarity: np.ndarray) -> np.ndarray:
    """Database indices by decreasing similarity, one row per query (stable: ties keep index order).

    Sorted with numpy's default (SIMD) sort, five times faster than the stable
    one here; a row with equal values, whose order that sort leaves open, is
    sorted again stably. Rows without ties have one order only, so the
    result is the stable sort's.
    """
    similarity = np.asarray(similarity)
    order = np.argsort(-similarity, axis=1)
    ordered = np.take_along_axis(similarity, order, axis=1)
    tied = ((ordered[:, 1:] == ordered[:, :-1]) | np.isnan(ordered[:, 1:])).any(axis=1)
    if tied.any():
        order[tied] = np.argsort(-similarity[tied], axis=1, kind="stable")
    return order


def rank(similarity: np.ndarray) -> np.ndarray:
    """Database indices by decreasing similarity (stable: ties keep index order)."""
    return np.argsort(-similarity, kind="stable")


def expand_queries(q_rows: np.ndarray, q_offsets: np.ndarray, regions: np.ndarray, ranks: np.ndarray,
                   best_region: np.ndarray, n_qe: int, include_query: bool = True) -> np.ndarray:
    """eq. (8) for every query: the new single query descriptor of region query expansion, ``(n_queries, D)``.

    Averages the best-matched region descriptor of each of the top ``n_qe``
    images (``ranks`` and ``best_region`` are :func:`similarities`'s, per
    query) and, with ``include_query``, the query's own descriptor as in the
    average query expansion of ref. [19], then l2-normalises (float64).
    """
    if n_qe < 0:
        raise ValueError(f"ranking.n_qe must be >= 0 (got {n_qe})")
    q_rows = np.atleast_2d(q_rows)
    q_offsets = np.asarray(q_offsets, dtype=np.int64)
    # The query's whole-image region (last row by convention) stands for the query.
    own = q_rows[q_offsets[1:] - 1]
    picked = np.take_along_axis(np.asarray(best_region), np.asarray(ranks)[:, :n_qe], axis=1)
    parts = [regions[picked[:, j]] for j in range(picked.shape[1])] + ([own] if include_query else [])
    if not parts:  # n_qe = 0 and no query: nothing to expand
        return l2_normalize(own)
    # Summed in the stored precision, in the order (top results by rank, then the query) and with
    # the roundings of the one-query sum it replaces (np.vstack(parts).sum(0) adds row after row).
    total = parts[0].astype(np.result_type(*parts), copy=True)
    for part in parts[1:]:
        total += part
    return l2_normalize(total)


def region_query_expansion(query: np.ndarray, regions: np.ndarray, ranking: np.ndarray,
                           best_region: np.ndarray, n_qe: int, include_query: bool = True) -> np.ndarray:
    """eq. (8) for one query (``ranking``, ``best_region``: ``(n_images,)``); returns ``(1, D)``."""
    query = np.atleast_2d(query)
    return expand_queries(query, np.array([0, len(query)]), regions, np.asarray(ranking)[None],
                          np.asarray(best_region)[None], n_qe, include_query)


def search_all(q_rows: np.ndarray, q_offsets: np.ndarray, regions: np.ndarray, offsets: np.ndarray,
               n_qe: int = 0, include_query: bool = True, chunk_rows: int = CHUNK_ROWS
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every query: eq. (7), then, with ``n_qe > 0``, eq. (8) and eq. (7) again, all batched.

    Returns ``(ranks, best_region, similarity, ranks_qe, best_region_qe,
    similarity_qe)``, each ``(n_queries, n_images)``; without QE the last
    three repeat the first three.
    """
    sim, best = similarities(q_rows, q_offsets, regions, offsets, chunk_rows)
    ranks = rank_all(sim)
    if n_qe <= 0:
        return ranks, best, sim, ranks.copy(), best.copy(), sim.copy()
    expanded = expand_queries(q_rows, q_offsets, regions, ranks, best, n_qe, include_query)
    sim_qe, best_qe = similarities(expanded, np.arange(len(expanded) + 1), regions, offsets, chunk_rows)
    return ranks, best, sim, rank_all(sim_qe), best_qe, sim_qe


def image_similarities(query: np.ndarray, regions: np.ndarray, offsets: np.ndarray,
                       chunk_rows: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """eq. (7) for one query ``(M_q, D)``: ``(similarity, best_region)``, both ``(n_images,)``."""
    query = np.atleast_2d(query)
    sim, best = similarities(query, np.array([0, len(query)]), regions, offsets, chunk_rows)
    return sim[0], best[0]


def search_one(query: np.ndarray, regions: np.ndarray, offsets: np.ndarray, n_qe: int = 0,
               include_query: bool = True, chunk_rows: int = CHUNK_ROWS
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One query: eq. (7), then, with ``n_qe > 0``, eq. (8) and eq. (7) again.

    Returns ``(similarity, best_region, similarity_qe, best_region_qe)``, each
    ``(n_images,)`` (see :func:`similarities`); without QE the last two
    repeat the first two.
    """
    query = np.atleast_2d(query)
    _, best, sim, _, best_qe, sim_qe = search_all(query, np.array([0, len(query)]), regions, offsets,
                                                  n_qe, include_query, chunk_rows)
    return sim[0], best[0], sim_qe[0], best_qe[0]


def search(queries: list[np.ndarray], regions: np.ndarray, offsets: np.ndarray, n_qe: int = 0,
           include_query: bool = True, chunk_rows: int = CHUNK_ROWS
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rank the database for every query (a list of ``(M_q, D)`` arrays), without and with region QE.

    Returns ``(ranks, best_regions, ranks_qe, best_regions_qe)``, each
    ``(n_queries, n_images)``.
    """
    queries = [np.atleast_2d(q) for q in queries]
    if not queries:
        empty = np.empty((0, len(offsets) - 1), dtype=np.int64)
        return empty, empty.copy(), empty.copy(), empty.copy()
    q_offsets = np.cumsum([0] + [len(q) for q in queries])
    ranks, best, _, ranks_qe, best_qe, _ = search_all(np.concatenate(queries), q_offsets, regions, offsets,
                                                      n_qe, include_query, chunk_rows)
    return ranks, best, ranks_qe, best_qe
