"""Searching large region collections (issue 12): eq. 7 over stored float16 regions, exactly or via FAISS.

The database is the regions of every image, stored as float16 rows, possibly
in many files: ``blocks`` is a sequence of ``(rows, offsets)``, image ``i`` of
a block owning its rows ``offsets[i]:offsets[i + 1]``; ``rows`` is anything
sliced by row ranges (an ndarray, a ``np.memmap``, an ``h5py`` dataset), and
the images of the blocks, in order, are the database's images, their rows the
global rows. Queries are float32 rows with ``q_offsets``, as in
:mod:`rdfa.search`.

:func:`exact_image_scores` is eq. 7 against everything in one pass over the
stored rows for all queries together, ``chunk_rows`` rows at a time (NumPy
has no float16 BLAS: each chunk is converted to float32 first).
:class:`RegionIndex` is the approximate alternative for collections too
large to scan per query: a FAISS index over the region rows gives each query
row its ``shortlist`` nearest regions, the images owning them are the
candidates, and eq. 7 is computed exactly for those candidates only
(:func:`candidate_scores`), so the scores are eq. 7's and only the choice of
candidates is approximate (:func:`recall_at_k` measures it against the exact
search). FAISS (``faiss-cpu``) is imported only when an index is built or
read.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Sequence

import numpy as np

from .search import CHUNK_ROWS, _check_offsets, fold_image_maxima, query_maxima
from .settings import INDEX_TYPES, IndexSettings  # noqa: F401  (index settings are settings)

#: Stored rows by global row index: an array (``rows[index]``, e.g. a ``np.memmap``) or a function ``rows(index)``.
RowSource = np.ndarray | Callable[[np.ndarray], np.ndarray]


def _check_queries(q_rows: np.ndarray, q_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q_rows = np.ascontiguousarray(np.atleast_2d(q_rows), dtype=np.float32)
    q_offsets = _check_offsets(q_offsets, "query")
    if q_offsets[-1] != len(q_rows):
        raise ValueError(f"query offsets end at {q_offsets[-1]}, but there are {len(q_rows)} query rows")
    return q_rows, q_offsets


def _check_block(rows, offsets: np.ndarray, dim: int, number: int) -> np.ndarray:
    offsets = _check_offsets(offsets, f"database image (block {number})")
    if offsets[-1] != len(rows):
        raise ValueError(f"block {number}: offsets end at {offsets[-1]}, but it has {len(rows)} rows")
    if rows.shape[1] != dim:
        raise ValueError(f"block {number}: {rows.shape[1]}-dimensional rows, the queries are {dim}-dimensional")
    return offsets


def exact_image_scores(q_rows: np.ndarray, q_offsets: np.ndarray, blocks: Iterable[tuple[np.ndarray, np.ndarray]],
                       chunk_rows: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """eq. (7) for every query against every image of ``blocks``, in one pass over the stored rows.

    Each block is read ``chunk_rows`` rows at a time, converted to float32
    into one reused buffer, multiplied by all query rows at once (one matrix
    product), maximised over each query's rows and then over each image's
    rows (:func:`rdfa.search.fold_image_maxima`, which carries an image cut
    by a chunk boundary over to the next chunk). Memory: the buffer and the
    ``(query rows, chunk_rows)`` products, plus the results.

    Returns ``(similarity, best_region)``, both ``(n_queries, n_images)``:
    float32 similarities and the global row of the best-matching region (the
    first such row on ties), as :func:`rdfa.search.similarities` gives on the
    float32 rows.
    """
    if chunk_rows < 1:
        raise ValueError(f"runtime.chunk_rows must be >= 1 (got {chunk_rows})")
    q_rows, q_offsets = _check_queries(q_rows, q_offsets)
    n_queries, dim = len(q_offsets) - 1, q_rows.shape[1]
    buffer = np.empty((0, dim), dtype=np.float32)
    sims, bests, row_base = [], [], 0
    for number, (rows, offsets) in enumerate(blocks):
        offsets = _check_block(rows, offsets, dim, number)
        sim = np.full((n_queries, len(offsets) - 1), -np.inf, dtype=np.float32)
        best = np.zeros(sim.shape, dtype=np.int64)
        for start in range(0, len(rows), chunk_rows):
            stop = min(start + chunk_rows, len(rows))
            if len(buffer) < stop - start:
                buffer = np.empty((min(chunk_rows, len(rows)), dim), dtype=np.float32)
            chunk = buffer[:stop - start]
            np.copyto(chunk, rows[start:stop])  # float16 -> float32, no temporary
            fold_image_maxima(sim, best, query_maxima(q_rows, q_offsets, chunk), start, offsets)
        best += row_base
        row_base += len(rows)
        sims.append(sim)
        bests.append(best)
    if not sims:
        return np.empty((n_queries, 0), dtype=np.float32), np.empty((n_queries, 0), dtype=np.int64)
    if len(sims) == 1:  # no copy of the (n_queries, n_images) results
        return sims[0], bests[0]
    return np.concatenate(sims, axis=1), np.concatenate(bests, axis=1)


def _gather(rows: RowSource, index: np.ndarray) -> np.ndarray:
    return rows(index) if callable(rows) else rows[index]


def candidate_scores(query: np.ndarray, images: np.ndarray, rows: RowSource, offsets: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """eq. (7) for one query ``(M_q, D)`` against the database images ``images`` only (increasing ids).

    ``rows`` gives the stored rows of global row indices (an array indexed
    by them, or a function of them); ``offsets`` are the database's global
    image offsets. The candidates' rows are fetched in one gather, converted
    to float32 and multiplied by the query rows; returns ``(similarity,
    best_region)``, both ``(len(images),)``, the best region a global row.
    """
    query = np.ascontiguousarray(np.atleast_2d(query), dtype=np.float32)
    images = np.asarray(images, dtype=np.int64)
    if len(images) == 0:
        return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
    lengths = offsets[images + 1] - offsets[images]
    local_offsets = np.concatenate(([0], np.cumsum(lengths)))
    index = np.repeat(offsets[images] - local_offsets[:-1], lengths) + np.arange(local_offsets[-1])
    fetched = np.asarray(_gather(rows, index), dtype=np.float32)
    sim = np.full((1, len(images)), -np.inf, dtype=np.float32)
    best = np.zeros((1, len(images)), dtype=np.int64)
    fold_image_maxima(sim, best, query_maxima(query, np.array([0, len(query)]), fetched), 0, local_offsets)
    return sim[0], index[best[0]]


def recall_at_k(ranked: np.ndarray, reference: np.ndarray, k: int) -> float:
    """Share of the reference's top ``k`` images that ``ranked``'s top ``k`` contain, averaged over queries.

    Both ``(n_queries, >= k)`` image ids by decreasing score (``ranked`` may
    be padded with -1); e.g. an approximate search against
    :func:`rdfa.search.rank_all` of the exact scores.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k})")
    ranked, reference = np.atleast_2d(ranked), np.atleast_2d(reference)
    k = min(k, reference.shape[1])
    found = [len(np.intersect1d(r[:k], e[:k])) for r, e in zip(ranked, reference)]
    return float(np.mean(found)) / k if found else float("nan")


def _faiss(threads: int):
    """The faiss module, its OpenMP threads set (0 = all cores).

    Its OpenMP threads wait passively (unless ``OMP_WAIT_POLICY`` is set;
    it must be before faiss's first import): spinning, two threads on two
    cores shared with one other busy process made a build 4 to 5 times
    slower than one thread here.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import faiss

    faiss.omp_set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))
    return faiss


def training_rows(blocks: Sequence[tuple[np.ndarray, np.ndarray]], n: int, seed: int) -> np.ndarray:
    """``n`` distinct rows (or all, if fewer) drawn uniformly over all blocks with ``seed``, float32, in row order."""
    lengths = np.array([len(rows) for rows, _ in blocks], dtype=np.int64)
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    n = int(min(n, bounds[-1]))
    picked = np.sort(np.random.default_rng(seed).choice(bounds[-1], size=n, replace=False))
    parts = []
    for (rows, _), lo, hi in zip(blocks, bounds[:-1], bounds[1:]):
        local = picked[(picked >= lo) & (picked < hi)] - lo
        if len(local):
            parts.append(np.asarray(rows[local], dtype=np.float32))
    return np.concatenate(parts) if parts else np.empty((0, blocks[0][0].shape[1]), dtype=np.float32)


class RegionIndex:
    """A FAISS index over the database's region rows, searched with an exact eq. 7 re-ranking.

    Row ``r`` of the index is global row ``r`` of the database, which image
    ``i`` owns for ``offsets[i] <= r < offsets[i + 1]``. Build it with
    :meth:`build`; ``rdfa.io.region_index`` writes and reads it. ``threads``
    (FAISS's OpenMP threads, 0 = all cores) does not change results.
    """

    def __init__(self, index, settings: IndexSettings, offsets: np.ndarray, threads: int = 0):
        faiss = _faiss(threads)
        self.offsets = _check_offsets(offsets, "database image")
        if index.ntotal != self.offsets[-1]:
            raise ValueError(f"the FAISS index holds {index.ntotal} regions, the database {self.offsets[-1]}")
        built = _settings_of(faiss, index)
        for key, value in built.items():
            if getattr(settings, key) != value:
                raise ValueError(f"the FAISS index was built with index.{key}: {value}, params.yaml says "
                                 f"{getattr(settings, key)}: rebuild it")
        if settings.type in ("ivfpq", "ivfflat"):
            faiss.extract_index_ivf(index).nprobe = settings.nprobe
        self.index, self.settings, self.threads = index, settings, threads

    @classmethod
    def build(cls, blocks: Sequence[tuple[np.ndarray, np.ndarray]], settings: IndexSettings, threads: int = 0,
              chunk_rows: int = CHUNK_ROWS) -> RegionIndex:
        """Train on :func:`training_rows` (``settings.train_size``, ``settings.seed``), then add every row.

        ``blocks`` is read twice (the training rows, then all rows in chunks
        of ``chunk_rows`` converted to float32). The k-means of the lists
        (spherical: the rows are unit vectors, searched by inner product)
        and of PQ use ``settings.seed``, so a build is reproducible.
        """
        faiss = _faiss(threads)
        dim = blocks[0][0].shape[1] if len(blocks) else 0
        offsets = [np.zeros(1, dtype=np.int64)]
        for number, (rows, local) in enumerate(blocks):
            local = _check_block(rows, local, dim, number)
            offsets.append(local[1:] + offsets[-1][-1])
        offsets = np.concatenate(offsets)
        settings.check_fit(dim, int(offsets[-1]))
        index = faiss.index_factory(dim, settings.factory, faiss.METRIC_INNER_PRODUCT)
        if settings.type != "flat":
            ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
            ivf.cp.seed, ivf.cp.spherical = settings.seed, True
            if settings.type == "ivfpq":
                ivf.pq.cp.seed = settings.seed
                # index_factory turns on polysemous training (a Hamming filter this search does not use):
                # seconds per build on 5000 rows, nothing gained.
                ivf.do_polysemous_training = False
            index.train(training_rows(blocks, settings.train_size, settings.seed))
        buffer = np.empty((min(chunk_rows, max(len(rows) for rows, _ in blocks)), dim), dtype=np.float32)
        for rows, _ in blocks:
            for start in range(0, len(rows), chunk_rows):
                chunk = buffer[:min(chunk_rows, len(rows) - start)]
                np.copyto(chunk, rows[start:start + len(chunk)])
                index.add(chunk)
        return cls(index, settings, offsets, threads)

    def candidates(self, q_rows: np.ndarray, q_offsets: np.ndarray, shortlist: int | None = None
                   ) -> list[np.ndarray]:
        """Per query, the images (increasing ids) owning the ``shortlist`` nearest regions of any of its rows."""
        q_rows, q_offsets = _check_queries(q_rows, q_offsets)
        k = int(min(shortlist or self.settings.shortlist, self.index.ntotal))
        _faiss(self.threads)
        _, labels = self.index.search(q_rows, k)
        out = []
        for lo, hi in zip(q_offsets[:-1], q_offsets[1:]):
            found = labels[lo:hi].ravel()
            found = found[found >= 0]
            out.append(np.unique(np.searchsorted(self.offsets, found, side="right") - 1))
        return out

    def search(self, q_rows: np.ndarray, q_offsets: np.ndarray, rows: RowSource, top_images: int,
               shortlist: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The best ``top_images`` images per query: :meth:`candidates`, re-ranked by exact eq. (7).

        ``rows`` gives the stored rows of global row indices (see
        :func:`candidate_scores`). Returns ``(images, similarity,
        best_region)``, each ``(n_queries, top_images)``, by decreasing
        similarity (ties: lower image id first, as :func:`rdfa.search.rank_all`);
        a query with fewer candidates is padded with image -1, similarity
        ``-inf`` and region -1.
        """
        q_rows, q_offsets = _check_queries(q_rows, q_offsets)
        n_queries = len(q_offsets) - 1
        images = np.full((n_queries, top_images), -1, dtype=np.int64)
        similarity = np.full((n_queries, top_images), -np.inf, dtype=np.float32)
        best_region = np.full((n_queries, top_images), -1, dtype=np.int64)
        for q, found in enumerate(self.candidates(q_rows, q_offsets, shortlist)):
            sim, best = candidate_scores(q_rows[q_offsets[q]:q_offsets[q + 1]], found, rows, self.offsets)
            order = np.argsort(-sim, kind="stable")[:top_images]
            images[q, :len(order)], similarity[q, :len(order)], best_region[q, :len(order)] = (
                found[order], sim[order], best[order])
        return images, similarity, best_region


def _settings_of(faiss, index) -> dict:
    """The index settings a FAISS index was built with: its type and the parameters fixed at training."""
    index = faiss.downcast_index(index)
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError("the FAISS index does not search by inner product (eq. 7's similarity)")
    if isinstance(index, faiss.IndexFlat):
        return {"type": "flat"}
    if isinstance(index, faiss.IndexIVFPQ):
        return {"type": "ivfpq", "nlist": index.nlist, "m": index.pq.M, "nbits": index.pq.nbits}
    if isinstance(index, faiss.IndexIVFFlat):
        return {"type": "ivfflat", "nlist": index.nlist}
    raise ValueError(f"unsupported FAISS index {type(index).__name__} (index.type: {', '.join(INDEX_TYPES[1:])})")
