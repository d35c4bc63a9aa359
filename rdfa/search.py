"""Region-to-region image search (paper section 4, eqs. 7 and 8)."""
from __future__ import annotations

import numpy as np

from .pooling import l2_normalize


def image_similarities(query: np.ndarray, regions: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """eq. (7): similarity of one query to every database image = best region pair.

    ``query`` is ``(M_q, D)``, ``regions`` the ``(R, D)`` stacked region
    descriptors of the database, image ``i`` owning rows
    ``offsets[i]:offsets[i + 1]``. Descriptors are l2-normalised, so the dot
    product is the cosine similarity. Returns ``(similarity, best_region)``,
    both ``(n_images,)``; ``best_region`` is the row (in ``regions``) of the
    region that matched best.
    """
    sims = np.atleast_2d(query) @ regions.T  # (M_q, R)
    best_query = sims.max(0)
    counts = np.diff(offsets)
    if np.any(counts <= 0):
        raise ValueError("every database image needs at least one region")
    image_sim = np.maximum.reduceat(best_query, offsets[:-1])
    # Row of the best region per image: the first row where the image's max is reached.
    owner = np.repeat(np.arange(len(counts)), counts)
    rows = np.where(best_query >= image_sim[owner], np.arange(len(best_query)), len(best_query))
    best_region = np.minimum.reduceat(rows, offsets[:-1])
    return image_sim, best_region


def rank(similarity: np.ndarray) -> np.ndarray:
    """Database indices by decreasing similarity (stable: ties keep index order)."""
    return np.argsort(-similarity, kind="stable")


def region_query_expansion(query: np.ndarray, regions: np.ndarray, ranking: np.ndarray,
                           best_region: np.ndarray, n_qe: int, include_query: bool = True) -> np.ndarray:
    """eq. (8): the new single query descriptor of region query expansion.

    Averages the best-matched region descriptor of each of the top ``n_qe``
    images (and, with ``include_query``, the query's own descriptor as in the
    average query expansion of ref. [19]), then l2-normalises. Returns ``(1, D)``.
    """
    if n_qe < 0:
        raise ValueError(f"ranking.n_qe must be >= 0 (got {n_qe})")
    picked = regions[best_region[ranking[:n_qe]]]
    parts = [picked]
    if include_query:
        # The query's whole-image region (last row by convention) stands for the query.
        parts.append(np.atleast_2d(query)[-1:])
    stacked = np.vstack(parts)
    if len(stacked) == 0:  # n_qe = 0 and no query: nothing to expand
        return l2_normalize(np.atleast_2d(query)[-1:])
    return l2_normalize(stacked.sum(0, keepdims=True))


def search_one(query: np.ndarray, regions: np.ndarray, offsets: np.ndarray, n_qe: int = 0,
               include_query: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One query: eq. (7), then, with ``n_qe > 0``, eq. (8) and eq. (7) again.

    Returns ``(similarity, best_region, similarity_qe, best_region_qe)``, each
    ``(n_images,)`` (see :func:`image_similarities`); without QE the last two
    repeat the first two.
    """
    sim, best = image_similarities(query, regions, offsets)
    if n_qe <= 0:
        return sim, best, sim, best
    expanded = region_query_expansion(query, regions, rank(sim), best, n_qe, include_query)
    return (sim, best) + image_similarities(expanded, regions, offsets)


def search(queries: list[np.ndarray], regions: np.ndarray, offsets: np.ndarray,
           n_qe: int = 0, include_query: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rank the database for every query, without and with region QE.

    Returns ``(ranks, best_regions, ranks_qe, best_regions_qe)``, each
    ``(n_queries, n_images)``.
    """
    n_images = len(offsets) - 1
    out = [np.empty((len(queries), n_images), dtype=np.int64) for _ in range(4)]
    for q, query in enumerate(queries):
        sim, best, sim_qe, best_qe = search_one(query, regions, offsets, n_qe, include_query)
        out[0][q], out[1][q], out[2][q], out[3][q] = rank(sim), best, rank(sim_qe), best_qe
    return tuple(out)
