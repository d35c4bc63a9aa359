#!/usr/bin/env python3
"""Stage `ranking_distractors`: rank a dataset's database plus a distractor set for every query (eqs. 7, 8).

The queries and database regions of ``whitened.h5`` and the distractor
shards of ``features/<dataset>+<set>/shards/`` (float16, multiplied in
float32 one shard at a time, ``runtime.chunk_rows`` rows per product: memory
stays bounded by a shard whatever the set's size), searched exactly, without
and with region QE (eq. 8, its top images taken from the whole collection);
or, with ``index.type`` flat / ivfpq / ivfflat, through a FAISS index of
the regions (``rdfa.index.RegionIndex``, built here at each D) whose
shortlist of ``index.shortlist`` regions per query row is re-ranked by exact
eq. 7, the images outside it following in collection order.
Image ``i < N`` is the dataset's database image ``i``; ``N + j`` is the
distractor ``j`` in shard order.

Writes ``features/<dataset>+<set>/``: ``ranks.json`` and ``ranks_qe.json``
(per query, the collection's indices best first, up to the last image the
query's ground truth lists, positive or junk, and at least the top
:data:`KEEP_TOP`: what every AP and mP@k needs, without a million indices
per query), ``methods.json`` (Table 1's grid in the dataset's layout: O2_R
and O2_R_full at every ``methods.D`` up to ``whitening.D``, the leading
columns of the whitened rows; every other method null with its reason: the
distractor path keeps O2_R's region descriptors only) and
``search_info.json``.
"""
from __future__ import annotations

import json
import logging
import sys
import time

import h5py
import numpy as np
from tqdm import tqdm

from rdfa.evaluation import headline_score
from rdfa.index import IndexSettings, RegionIndex
from rdfa.io.atomic import write_json
from rdfa.io.gnd import load_gnd
from rdfa.io.params import get, get_bool, get_int, runtime
from rdfa.io.provenance import check_training_source
from rdfa.io.stage import blas_threads, run_stage
from rdfa.pooling import l2_normalize
from rdfa.search import expand_queries, rank_all, similarities

log = logging.getLogger("rdfa.ranking_distractors")

#: Results kept per query beyond what the ground truth needs (a report shows the top ones).
KEEP_TOP = 100
DIGITS = 6


class BlockRows:
    """The rows of one block of the collection at D, read on demand: ``rows[a:b]`` or ``rows[indices]``,
    float32 (what :class:`rdfa.index.RegionIndex` builds from and re-ranks with)."""

    def __init__(self, collection: "Collection", block: int):
        self.collection, self.block = collection, block
        self.shape = (int(collection.row_starts[block + 1] - collection.row_starts[block]), collection.dim)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        return self.collection.rows(self.block, index)


class Collection:
    """The dataset's whitened database regions followed by the distractor shards, read block by block.

    At a D below the stored one (Table 1's smaller D), every row is cut to its leading
    columns and l2-normalised again, as the methods stage does for O2_R.
    """

    def __init__(self, db: np.ndarray, db_offsets: np.ndarray, shards: list, dim: int):
        self.blocks = [(None, db, db_offsets)] + shards  # (path or None, rows if in memory, offsets)
        self.dim = dim
        self.row_starts = np.cumsum([0] + [int(offsets[-1]) for _, _, offsets in self.blocks])
        self.n_images = sum(len(offsets) - 1 for _, _, offsets in self.blocks)
        self.image_offsets = np.concatenate([[0]] + [offsets[1:] + start for (_, _, offsets), start
                                                    in zip(self.blocks, self.row_starts[:-1])])

    def rows(self, block: int, index=slice(None)) -> np.ndarray:
        """Rows ``index`` (a slice, or increasing row numbers) of block ``block`` at the collection's D, float32."""
        path, rows, _ = self.blocks[block]
        if rows is None:
            with h5py.File(path, "r") as f:
                rows = f["desc"][index]
        else:
            rows = rows[index]
        if path is None and rows.shape[1] == self.dim:  # the whitening stage's rows as they are
            return np.asarray(rows, dtype=np.float32)
        # float16 rows, or a smaller D (the leading columns): l2-normalised again
        return l2_normalize(np.asarray(rows[:, :self.dim], dtype=np.float32)).astype(np.float32)

    def gather(self, global_rows: np.ndarray) -> np.ndarray:
        """The rows at the collection's row indices ``global_rows`` (any shape), float32; only those are read."""
        flat = np.asarray(global_rows).ravel()
        out = np.empty((len(flat), self.dim), dtype=np.float32)
        block_of = np.searchsorted(self.row_starts, flat, side="right") - 1
        for block in np.unique(block_of):
            pick = np.flatnonzero(block_of == block)
            wanted, inverse = np.unique(flat[pick] - self.row_starts[block], return_inverse=True)
            out[pick] = self.rows(block, wanted)[inverse]
        return out.reshape(*np.shape(global_rows), self.dim)

    def views(self) -> list[tuple[BlockRows, np.ndarray]]:
        """Every block as ``(rows read on demand, offsets)``, for :meth:`rdfa.index.RegionIndex.build`."""
        return [(BlockRows(self, b), offsets) for b, (_, _, offsets) in enumerate(self.blocks)]


def search(q_rows: np.ndarray, q_offsets: np.ndarray, collection: Collection, chunk_rows: int, desc: str):
    """eq. 7 against every image of the collection: ``(similarity, best_region)``, ``(n_queries, n_images)``,
    best_region as a row index of the whole collection."""
    sims, bests = [], []
    for block in tqdm(range(len(collection.blocks)), desc=desc, unit="block", disable=len(collection.blocks) < 3):
        sim, best = similarities(q_rows, q_offsets, collection.rows(block), collection.blocks[block][2], chunk_rows)
        sims.append(sim)
        bests.append(best + collection.row_starts[block])
    return np.hstack(sims), np.hstack(bests)


def expanded_queries(q_rows, q_offsets, collection: Collection, picked: np.ndarray, n_qe: int,
                     include_query: bool) -> np.ndarray:
    """eq. 8 for every query from ``picked``, the collection rows of its top images' best regions
    ``(n_queries, n_qe)``: only those rows are read."""
    rows = collection.gather(picked).reshape(-1, collection.dim)
    # expand_queries reads best_region at ranks[:, :n_qe]: hand it the gathered rows' positions.
    local = np.arange(picked.size).reshape(picked.shape)
    top = np.tile(np.arange(picked.shape[1]), (len(picked), 1))
    return expand_queries(q_rows, q_offsets, rows, top, local, n_qe, include_query)


def search_with_qe(q_rows, q_offsets, collection: Collection, n_qe: int, include_query: bool, chunk_rows: int):
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


def faiss_search_with_qe(q_rows, q_offsets, collection: Collection, index, n_qe: int, include_query: bool):
    """Ranks without and with region QE from a FAISS shortlist re-ranked by exact eq. 7
    (:class:`rdfa.index.RegionIndex`); the images outside a query's shortlist follow its
    re-ranked candidates, in collection order."""
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


def headline(ranks: list, gnd: dict) -> float | None:
    """The dataset's headline mAP of ``ranks`` (the methods stage's cell)."""
    return headline_score(ranks, gnd["gnd"])


def shard_list(paths) -> tuple[list, dict]:
    if not paths.index.is_file():
        raise ValueError(f"{paths.index} not found: run the distractors stage first (`dvc repro`)")
    index = json.loads(paths.index.read_text())
    shards = []
    for shard in index["shards"]:
        path = paths.shards / shard["file"]
        with h5py.File(path, "r") as f:
            if f.attrs.get("config") != index["config"]:
                raise ValueError(f"{path}: computed with other settings than {paths.index}; re-run the distractors "
                                 "stage")
            shards.append((path, None, f["offsets"][()]))
    return shards, index


def main(dataset: str, params: dict, paths) -> None:
    n_qe = get_int(params, "ranking.n_qe", 0)
    include_query = get_bool(params, "ranking.qe_include_query", True)
    dims = sorted(int(d) for d in get(params, "methods.D", [512]))
    full_query = get_bool(params, "methods.full_query", True)
    chunk = runtime(params)["chunk_rows"]
    try:
        search_index = IndexSettings.from_params(get(params, "index", None))
    except ValueError as err:
        raise ValueError(f"params.yaml: {err}") from None
    main_paths = paths.main
    check_training_source(main_paths, dataset)
    gnd = load_gnd(main_paths.data, need_queries=True)
    shards, index = shard_list(paths)
    with h5py.File(main_paths.whitened, "r") as f:
        dim = int(f.attrs["D"])
        if index["D"] != dim or index["config"] == "":
            raise ValueError(f"{paths.index}: D={index['D']}, but {main_paths.whitened} has D={dim}; re-run the "
                             "distractors stage")
        db, db_offsets = f["db/desc"][()], f["db/offsets"][()]
        groups = {"": (f["query/desc"][()], f["query/offsets"][()])}
        if full_query:
            groups["_full"] = (f["full/desc"][()], f["full/offsets"][()])
    n_db = len(db_offsets) - 1
    if n_db != len(gnd["imlist"]):
        raise ValueError(f"{main_paths.whitened}: {n_db} images, {main_paths.gnd} lists {len(gnd['imlist'])}")
    settings = runtime(params)
    cells: dict = {}
    main_ranks = None
    with blas_threads(settings["blas_threads"] or None):
        for d in dims:
            if d > dim:
                for suffix in groups:
                    cells.setdefault(f"O2_R{suffix}", {})[str(d)] = {
                        "mAP": None, "mAP_qe": None, "reason": f"D={d} above whitening.D={dim}: the distractors "
                                                               f"are stored at D={dim}"}
                continue
            collection = Collection(db, db_offsets, shards, d)
            region_index = None
            if search_index.type != "exact":
                started = time.perf_counter()
                region_index = RegionIndex.build(collection.views(), search_index, settings["blas_threads"], chunk)
                log.info("FAISS %s index of the %d regions at D=%d built in %.1f s", search_index.factory,
                         collection.row_starts[-1], d, time.perf_counter() - started)
            for suffix, (q_rows, q_offsets) in groups.items():
                q = np.asarray(q_rows[:, :d], dtype=np.float32)
                q = q if d == dim else l2_normalize(q).astype(np.float32)
                log.info("O2_R%s at D=%d: %d queries against %d images (%d distractors)", suffix, d,
                         len(q_offsets) - 1, collection.n_images, collection.n_images - n_db)
                if region_index is None:
                    ranks, ranks_qe = search_with_qe(q, q_offsets, collection, n_qe, include_query, chunk)
                else:
                    ranks, ranks_qe = faiss_search_with_qe(q, q_offsets, collection, region_index, n_qe,
                                                           include_query)
                cut, cut_qe = truncated(ranks, gnd), truncated(ranks_qe, gnd)
                cells.setdefault(f"O2_R{suffix}", {})[str(d)] = {
                    "mAP": round(headline(cut, gnd), DIGITS), "mAP_qe": round(headline(cut_qe, gnd), DIGITS)}
                if d == dim and not suffix:
                    main_ranks = (cut, cut_qe)
    if main_ranks is None:
        raise ValueError(f"methods.D has no D <= whitening.D={dim}")
    # The other methods of the dataset's grid: null, with the reason.
    methods_file = main_paths.methods
    names = list(json.loads(methods_file.read_text())["methods"]) if methods_file.is_file() else []
    reason = "not computed with distractors: the distractor path keeps O2_R's region descriptors only"
    grid = {name: {str(d): {"mAP": None, "mAP_qe": None, "reason": reason} for d in dims} for name in names}
    grid.update(cells)
    write_json(paths.ranks, main_ranks[0], indent=None)
    write_json(paths.ranks_qe, main_ranks[1], indent=None)
    n_regions = int(index["n_regions"])
    write_json(paths.methods, {"methods": grid, "info": {"distractors": paths.set, "D": dim}})
    write_json(paths.search_info, {"D": dim, "n_qe": n_qe, "distractor_set": paths.set,
                                   "index": vars(search_index),
                                   "n_distractors": int(index["n_images"]), "n_distractor_regions": n_regions,
                                   "n_database_images": n_db, "ranks": f"cut after the last image each query's "
                                   f"ground truth lists, and at least the top {KEEP_TOP}"})
    log.info("%s: headline O2_R at D=%d with %d distractors: mAP %.4f, with QE %.4f", paths.name, dim,
             index["n_images"], cells["O2_R"][str(dim)]["mAP"], cells["O2_R"][str(dim)]["mAP_qe"])


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0],
                       outputs=lambda p: [p.ranks, p.ranks_qe, p.methods, p.search_info], distractors=True))
