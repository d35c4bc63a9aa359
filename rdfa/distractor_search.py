"""Search of a database extended by a distractor set (eqs. 7, 8), read block by block; rankings cut for storage.

The collection is the dataset's whitened database regions followed by the
distractor shards (``rdfa.io.collection.Collection``): image ``i < N`` is
database image ``i``, ``N + j`` is distractor ``j`` in shard order. A collection
gives the rows of one block (``rows(block)``, float32), its image offsets
(``blocks[block][2]``), the first global row of each block (``row_starts``) and
the rows of any global row indices (``gather``), so that memory stays bounded by
a block whatever the set's size.

:func:`search_with_qe` searches exactly, one block at a time, without and with
region QE (eq. 8, its top images taken from the whole collection);
:func:`faiss_search_with_qe` re-ranks a FAISS shortlist by exact eq. 7
(``rdfa.index.RegionIndex``). :func:`truncated` keeps of each ranking what every
AP and mP@k needs.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from .pooling import l2_normalize
from .search import expand_queries, rank_all, similarities

#: Results kept per query beyond what the ground truth needs (a report shows the top ones).
KEEP_TOP = 100


def leading_columns(rows, dim: int) -> np.ndarray:
    """The first ``dim`` columns of ``rows``, l2-normalised again, float32 (Table 1's smaller D: the
    methods stage cuts O2_R's rows so)."""
    return l2_normalize(np.asarray(rows[:, :dim], dtype=np.float32)).astype(np.float32)


def at_dim(rows, dim: int) -> np.ndarray:
    """Whitened rows at D = ``dim``: as they are (float32) when they have ``dim`` columns, else
    :func:`leading_columns`."""
    if rows.shape[1] == dim:
        return np.asarray(rows, dtype=np.float32)
    return leading_columns(rows, dim)


def search(q_rows: np.ndarray, q_offsets: np.ndarray, collection, chunk_rows: int, desc: str):
    """eq. 7 against every image of the collection: ``(similarity, best_region)``, ``(n_queries, n_images)``,
    best_region as a row index of the whole collection."""
    sims, bests = [], []
    for block in tqdm(range(len(collection.blocks)), desc=desc, unit="block", disable=len(collection.blocks) < 3):
        sim, best = similarities(q_rows, q_offsets, collection.rows(block), collection.blocks[block][2], chunk_rows)
        sims.append(sim)
        bests.append(best + collection.row_starts[block])
    return np.hstack(sims), np.hstack(bests)


def expanded_queries(q_rows, q_offsets, collection, picked: np.ndarray, n_qe: int, include_query: bool) -> np.ndarray:
    """eq. 8 for every query from ``picked``, the collection rows of its top images' best regions
    ``(n_queries, n_qe)``: only those rows are read."""
    rows = collection.gather(picked).reshape(-1, collection.dim)
    # expand_queries reads best_region at ranks[:, :n_qe]: hand it the gathered rows' positions.
    local = np.arange(picked.size).reshape(picked.shape)
    top = np.tile(np.arange(picked.shape[1]), (len(picked), 1))
    return expand_queries(q_rows, q_offsets, rows, top, local, n_qe, include_query)


def search_with_qe(q_rows, q_offsets, collection, n_qe: int, include_query: bool, chunk_rows: int):
    """Ranks without and with region QE (eq. 8: the best regions of the top ``n_qe`` images of the collection)."""
    sim, best = search(q_rows, q_offsets, collection, chunk_rows, "search")
    ranks = rank_all(sim)
    if n_qe <= 0:
        return ranks, ranks.copy()
    expanded = expanded_queries(q_rows, q_offsets, collection, np.take_along_axis(best, ranks[:, :n_qe], axis=1),
                                n_qe, include_query)
    # In eq. 8's own precision, as rdfa.search.search_all searches the expanded queries.
    sim_qe, _ = search(expanded, np.arange(len(expanded) + 1), collection, chunk_rows, "search (QE)")
    return ranks, rank_all(sim_qe)


def global_search_with_qe(queries: np.ndarray, collection, n_qe: int):
    """:func:`rdfa.baselines.global_search` (dot product, average QE over the top ``n_qe`` images) of a
    collection of one vector per image, read block by block: the same numbers, in float64."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float64))

    def scores(q: np.ndarray) -> np.ndarray:
        return np.hstack([q @ collection.rows(b).astype(np.float64).T for b in range(len(collection.blocks))])

    ranks = rank_all(scores(queries))
    if n_qe <= 0:
        return ranks, ranks.copy()
    top = ranks[:, :n_qe]
    rows = collection.gather(collection.image_offsets[:-1][top]).astype(np.float64)  # (n_queries, n_qe, D)
    summed = rows[:, 0].copy()
    for j in range(1, top.shape[1]):  # one rank after the other, as global_search rounds
        summed += rows[:, j]
    return ranks, rank_all(scores(l2_normalize(queries + summed)))


def faiss_search_with_qe(q_rows, q_offsets, collection, index, n_qe: int, include_query: bool):
    """Ranks without and with region QE from a FAISS shortlist re-ranked by exact eq. 7
    (``index``: a :class:`rdfa.index.RegionIndex` of the collection); the images outside a query's
    shortlist follow its re-ranked candidates, in collection order."""
    per_query = int(np.diff(q_offsets).max())
    top = min(collection.n_images, index.settings.shortlist * per_query)
    images, _, best = index.search(q_rows, q_offsets, collection.gather, top)
    ranks = complete_rankings(images, collection.n_images)
    if n_qe <= 0:
        return ranks, ranks.copy()
    picked = best[:, :n_qe]
    if (picked < 0).any():
        raise ValueError(f"a query's FAISS shortlist holds fewer than ranking.n_qe={n_qe} images: "
                         "raise index.shortlist")
    expanded = expanded_queries(q_rows, q_offsets, collection, picked, n_qe, include_query)
    images_qe, _, _ = index.search(expanded, np.arange(len(expanded) + 1), collection.gather,
                                   min(collection.n_images, index.settings.shortlist))
    return ranks, complete_rankings(images_qe, collection.n_images)


def complete_rankings(images: np.ndarray, n_images: int) -> np.ndarray:
    """Each row's ranked images (padded with -1), then every other image in increasing order."""
    out = np.empty((len(images), n_images), dtype=np.int64)
    for q, found in enumerate(images):
        found = found[found >= 0]
        out[q, :len(found)] = found
        rest = np.ones(n_images, dtype=bool)
        rest[found] = False
        out[q, len(found):] = np.flatnonzero(rest)
    return out


def listed_images(entry: dict) -> np.ndarray:
    """Every database image a gnd entry names (positive or junk, in any setup)."""
    return np.unique(np.concatenate([np.asarray(entry.get(key, []), dtype=np.int64)
                                     for key in ("ok", "junk", "easy", "hard")]))


def truncated(ranks: np.ndarray, gnd: dict) -> list[list[int]]:
    """Each query's ranking cut after the last image its ground truth lists (and at least :data:`KEEP_TOP`)."""
    out = []
    for q, order in enumerate(ranks):
        listed = listed_images(gnd["gnd"][q])
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        last = int(position[listed].max()) + 1 if len(listed) else 0
        out.append(order[:max(last, min(KEEP_TOP, len(order)))].tolist())
    return out
