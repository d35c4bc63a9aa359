#!/usr/bin/env python3
"""Stage `ranking_distractors`: rank a dataset's database plus a distractor set for every query (eqs. 7, 8).

The queries and database regions of ``whitened.h5`` and the distractor
shards of ``features/<dataset>+<set>/shards/`` (float16, multiplied in
float32 one shard at a time, ``runtime.chunk_rows`` rows per product: memory
stays bounded by a shard whatever the set's size; ``rdfa.distractor_search``),
searched exactly, without
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
``rdfa.distractor_search.KEEP_TOP``: what every AP and mP@k needs, without a million indices
per query), ``methods.json`` (Table 1's grid in the dataset's layout: O2_R
and O2_R_full at every ``methods.D`` up to ``whitening.D``, the leading
columns of the whitened rows; every other method the shards keep
(``methods.distractor_methods``) at every D the methods stage learned, from
its vectors of the dataset (``method_vectors.h5``) and the shards',
searched as the methods stage searches it (``rdfa.io.distractor_grid``,
exact search); the rest null with the reason) and ``search_info.json``.
"""
from __future__ import annotations

import json
import logging
import sys
import time

import h5py

from rdfa.distractor_search import KEEP_TOP, at_dim, faiss_search_with_qe, search_with_qe, truncated
from rdfa.evaluation import headline_score, rounded
from rdfa.index import RegionIndex
from rdfa.io.atomic import write_json
from rdfa.io.collection import Collection
from rdfa.io.collection_whitening import FILE as COLLECTION_FILE
from rdfa.io.distractor_grid import grid, method_cells
from rdfa.io.gnd import load_gnd
from rdfa.io.provenance import check_training_source
from rdfa.io.shards import read_shards
from rdfa.io.stage import blas_threads, run_stage
from rdfa.settings import Settings

log = logging.getLogger("rdfa.ranking_distractors")


def main(dataset: str, settings: Settings, paths) -> None:
    n_qe, include_query = settings.ranking.n_qe, settings.ranking.qe_include_query
    dims, full_query = settings.methods.D, settings.methods.full_query
    rt, search_index = settings.runtime, settings.index
    main_paths = paths.main
    check_training_source(main_paths, dataset)
    gnd = load_gnd(main_paths.data, need_queries=True)
    shards, index = read_shards(paths.index)
    # whitening.distractors.fit collection: the database and queries whitened with the collection's fit
    whitened_path = paths.index.parent / COLLECTION_FILE if index.get("whitening_fit") == "collection" \
        else main_paths.whitened
    with h5py.File(whitened_path, "r") as f:
        dim = int(f.attrs["D"])
        if index["D"] != dim or index["config"] == "":
            raise ValueError(f"{paths.index}: D={index['D']}, but {whitened_path} has D={dim}; re-run the "
                             "distractors stage")
        db, db_offsets = f["db/desc"][()], f["db/offsets"][()]
        groups = {"": (f["query/desc"][()], f["query/offsets"][()])}
        if full_query:
            groups["_full"] = (f["full/desc"][()], f["full/offsets"][()])
    n_db = len(db_offsets) - 1
    if n_db != len(gnd["imlist"]):
        raise ValueError(f"{main_paths.whitened}: {n_db} images, {main_paths.gnd} lists {len(gnd['imlist'])}")
    cells: dict = {}
    main_ranks = None
    with blas_threads(rt.blas_threads or None):
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
                region_index = RegionIndex.build(collection.views(), search_index, rt.blas_threads, rt.chunk_rows)
                log.info("FAISS %s index of the %d regions at D=%d built in %.1f s", search_index.factory,
                         collection.row_starts[-1], d, time.perf_counter() - started)
            for suffix, (q_rows, q_offsets) in groups.items():
                q = at_dim(q_rows, d)
                log.info("O2_R%s at D=%d: %d queries against %d images (%d distractors)", suffix, d,
                         len(q_offsets) - 1, collection.n_images, collection.n_images - n_db)
                if region_index is None:
                    ranks, ranks_qe = search_with_qe(q, q_offsets, collection, n_qe, include_query, rt.chunk_rows)
                else:
                    ranks, ranks_qe = faiss_search_with_qe(q, q_offsets, collection, region_index, n_qe,
                                                           include_query)
                cut, cut_qe = truncated(ranks, gnd), truncated(ranks_qe, gnd)
                cells.setdefault(f"O2_R{suffix}", {})[str(d)] = {"mAP": rounded(headline_score(cut, gnd["gnd"])),
                                                                 "mAP_qe": rounded(headline_score(cut_qe, gnd["gnd"]))}
                if d == dim and not suffix:
                    main_ranks = (cut, cut_qe)
        # Table 1's other methods, from their vectors (exact search, whatever index.type says).
        cells.update(method_cells(paths.index, index, main_paths.method_vectors, gnd, dims, n_qe, include_query,
                                  rt.chunk_rows, full_query))
    if main_ranks is None:
        raise ValueError(f"methods.D has no D <= whitening.D={dim}")
    methods_file = main_paths.methods
    own = json.loads(methods_file.read_text())["methods"] if methods_file.is_file() else {}
    table = grid(own, cells, dims, settings.methods.compare_whitening, ["O2_R", *index.get("methods", {})])
    write_json(paths.ranks, main_ranks[0], indent=None)
    write_json(paths.ranks_qe, main_ranks[1], indent=None)
    n_regions = int(index["n_regions"])
    write_json(paths.methods, {"methods": table, "info": {"distractors": paths.set, "D": dim,
                                                          "whitening_fit": index.get("whitening_fit", "database"),
                                                          "collection_fit": index.get("collection_fit"),
                                                          "methods": list(index.get("methods", {}))}})
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
