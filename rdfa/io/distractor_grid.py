"""Table 1's methods other than O2_R with a distractor set: every cell the shards allow, read block by block.

For each method the distractor shards keep (``index.json``'s ``methods``, written by the
distractors stage with ``methods.distractor_methods``), at each D of ``methods.D``: the
dataset's database and query vectors as the methods stage searched them
(``method_vectors.h5``, :mod:`rdfa.io.method_vectors`) followed by the distractors' (float16,
one shard at a time: :class:`rdfa.io.collection.Collection`), searched as the methods stage
searches them (:mod:`rdfa.methods.table1`): dot product and average QE for ``global`` and
``rmac`` methods (:func:`rdfa.distractor_search.global_search_with_qe`), eq. 7 and region QE
(eq. 8) for ``regional`` ones (:func:`rdfa.distractor_search.search_with_qe`); cropped queries and,
for the boxed ones, uncropped (``<name>_full``: the others rank as their cropped selves).
"""
from __future__ import annotations

import logging

import numpy as np

from ..distractor_search import at_dim, global_search_with_qe, search_with_qe, truncated
from ..evaluation import headline_score, rounded
from ..methods.table1 import FULL
from .collection import Collection
from .method_vectors import group_name, read_vectors
from .shards import method_blocks

log = logging.getLogger("rdfa.ranking_distractors")


def null(reason: str) -> dict:
    return {"mAP": None, "mAP_qe": None, "reason": reason}


def method_cells(index_path, index: dict, vectors_path, gnd: dict, dims, n_qe: int, include_query: bool,
                 chunk_rows: int, full_query: bool) -> dict:
    """``{name or name_full: {str(D): cell}}`` of every method of ``index["methods"]``."""
    cells: dict = {}
    n_queries = len(gnd["qimlist"])
    for name, meta in index.get("methods", {}).items():
        blocks = None
        for d in dims:
            key = meta["keys"].get(str(d))
            if key is None:
                why = meta["reasons"].get(str(d), f"D={d} not stored in the distractor shards")
                for suffix in ("", FULL):
                    cells.setdefault(name + suffix, {})[str(d)] = null(why)
                continue
            blocks = blocks or method_blocks(index_path, index, name)
            db, db_offsets, _ = read_vectors(vectors_path, name, "db", key)
            width = db.shape[1] if meta["plain"] else d
            collection = Collection(db, db_offsets, blocks, width, f"methods/{group_name(name)}/{key}")
            q, q_offsets, _ = read_vectors(vectors_path, name, "query", key)
            full, full_offsets, boxed = read_vectors(vectors_path, name, "full", key) if full_query else (None,) * 3
            rows, offsets = at_dim(q, width), q_offsets
            if full is not None:  # the boxed queries uncropped searched with the cropped ones, in one pass
                rows = np.vstack([rows, at_dim(full, width)])
                offsets = np.concatenate([q_offsets, full_offsets[1:] + q_offsets[-1]])
            log.info("%s at D=%d: %d queries against %d images", name, d, len(offsets) - 1, collection.n_images)
            if meta["kind"] == "regional":
                ranks, ranks_qe = search_with_qe(rows, offsets, collection, n_qe, include_query, chunk_rows)
            else:
                ranks, ranks_qe = global_search_with_qe(rows, collection, n_qe)
            sets = {"": (ranks[:n_queries], ranks_qe[:n_queries])}
            if full is not None:
                uncropped, uncropped_qe = ranks[:n_queries].copy(), ranks_qe[:n_queries].copy()
                uncropped[boxed], uncropped_qe[boxed] = ranks[n_queries:], ranks_qe[n_queries:]
                sets[FULL] = uncropped, uncropped_qe
            for suffix, (r, r_qe) in sets.items():
                cells.setdefault(name + suffix, {})[str(d)] = {
                    "mAP": rounded(headline_score(truncated(r, gnd), gnd["gnd"])),
                    "mAP_qe": rounded(headline_score(truncated(r_qe, gnd), gnd["gnd"]))}
    return cells


def grid(own: dict, cells: dict, dims, compared: list[str], chosen: list[str]) -> dict:
    """The dataset's grid (``own``: its methods.json's cells, in order) with distractors: ``cells`` where
    computed (with the whitening warning of the dataset's cell: the same fit), else a null with the
    reason (``compared``: the modes of ``methods.compare_whitening``, ``chosen``: the methods the shards
    were made with)."""
    out = {}
    for name in own:
        if name in cells:
            out[name] = {d: dict(cell, **({"warning": own[name][d]["warning"]} if "warning" in own[name].get(d, {})
                                          and cell["mAP"] is not None else {}))
                         for d, cell in cells[name].items()}
            continue
        base = name[:-len(FULL)] if name.endswith(FULL) else name
        variant = next((mode for mode in compared if base.endswith(f"_{mode}")), None)
        if variant is not None:
            why = (f"not computed with distractors: the distractor pass whitens with the main whitening "
                   f"(whitening.mode) only, not methods.compare_whitening's '{variant}'")
        elif base not in chosen:
            why = (f"not computed with distractors: {base} is not in methods.distractor_methods (a method there "
                   "runs over every distractor image)")
        else:
            why = "not computed with distractors: not in the distractor shards (re-run the distractors stage)"
        out[name] = {str(d): null(why) for d in dims}
    return out
