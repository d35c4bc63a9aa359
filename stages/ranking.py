#!/usr/bin/env python3
"""Stage `ranking`: rank the database for every query (eq. 7), and again after region QE (eq. 8).

Writes ``ranks.json`` and ``ranks_qe.json`` (one list of database indices per
query, best first), ``matches.h5`` (for each query and database image, the
row of the best-matched region, for Figure 2-style pictures) and
``search_info.json`` (what the evaluation reports beside the mAP, and the
digest of the descriptors the whitening was learned on: the table stage
checks it against the training set's, see ``whitening.train_on``). A dataset
without queries (a training set) is not searched: the same files, empty.
"""
from __future__ import annotations

import json
import logging
import sys

import h5py
import numpy as np

from rdfa.io.atomic import write_json
from rdfa.io.gnd import NO_QUERIES
from rdfa.io.provenance import check_training_source
from rdfa.io.stage import blas_threads, h5_output, run_stage
from rdfa.search import search_all
from rdfa.settings import Settings

log = logging.getLogger("rdfa.ranking")


def main(dataset: str, settings: Settings, paths) -> None:
    n_qe, include_query = settings.ranking.n_qe, settings.ranking.qe_include_query
    check_training_source(paths, dataset)
    with h5py.File(paths.whitened, "r") as f:
        db = f["db/desc"][()]
        db_offsets = f["db/offsets"][()]
        q_desc = f["query/desc"][()]
        q_offsets = f["query/offsets"][()]
        all_regions = f["query/all_regions"][()].astype(bool)
        info = {"D": int(f.attrs["D"]), "whitening_learned_on": str(f.attrs["learned_on"]),
                "whitening_train_descriptors": int(f.attrs["n_train"]),
                "whitening": str(f.attrs.get("mode", "pca")),
                "whitening_train_digest": str(f.attrs.get("train_digest", ""))}
        if "d_rule" in f.attrs:
            info["whitening_D_rule"] = json.loads(f.attrs["d_rule"])
        if info["whitening"] in ("shrink", "power"):
            info[f"whitening_{info['whitening']}"] = float(f.attrs[info["whitening"]])
        if f.attrs["note"]:
            info["whitening_warning"] = str(f.attrs["note"])
    rt = settings.runtime
    if len(q_offsets) == 1:
        log.info("%s: %s: nothing to search, the outputs written empty", dataset, NO_QUERIES)
        ranks = best = ranks_qe = best_qe = np.empty((0, len(db_offsets) - 1), dtype=np.int64)
        info["note"] = "no queries: a training set only (nothing searched)"
    else:
        log.info("%d queries against %d images (%d regions), region QE with N_QE=%d",
                 len(q_offsets) - 1, len(db_offsets) - 1, len(db), n_qe)
        # All queries at once, in blocks of runtime.chunk_rows database rows; runtime.blas_threads as
        # the methods stage's searches (BLAS threads split the product, not a dot product's sum).
        with blas_threads(rt.blas_threads or None):
            ranks, best, _, ranks_qe, best_qe, _ = search_all(q_desc, q_offsets, db, db_offsets, n_qe,
                                                              include_query, rt.chunk_rows)
    write_json(paths.ranks, ranks.tolist(), indent=None)
    write_json(paths.ranks_qe, ranks_qe.tolist(), indent=None)
    with h5_output(paths.matches) as out:
        out.create_dataset("best_region", data=best.astype(np.int32), compression="gzip")
        out.create_dataset("best_region_qe", data=best_qe.astype(np.int32), compression="gzip")
        out.create_dataset("db_offsets", data=db_offsets)
    # Which queries were described by which regions (a box: R_M of the crop; none: all regions).
    info.update({"n_qe": n_qe, "regions_per_image": round(len(db) / (len(db_offsets) - 1), 3),
                 "query_regions": {"box_R_M": int((~all_regions).sum()), "all_regions": int(all_regions.sum()),
                                   "per_query": ["all_regions" if a else "box_R_M" for a in all_regions]}})
    write_json(paths.search_info, info)


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0],
                       outputs=lambda p: [p.ranks, p.ranks_qe, p.matches, p.search_info]))
