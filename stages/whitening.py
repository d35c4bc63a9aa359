#!/usr/bin/env python3
"""Stage `whitening`: PCA-whitening of the region descriptors to D (eq. 6), l2-normalised.

Learned on the database's region descriptors, as in the paper. Writes
``whitened.h5`` (same layout as ``descriptors.h5``, dimension D) and records
in its attributes how many descriptors the whitening was learned on, with a
warning when D approaches that number. The fitted transform is kept beside
the vectors (``transform/mean``, ``transform/components`` ``(K'(K'+1)/2, D)``,
``transform/eigenvalues``, float64), so that ``rdfa search`` whitens a new
photo exactly as the database was whitened.
"""
from __future__ import annotations

import logging
import sys

import h5py

from rdfa.io.params import get_int
from rdfa.io.stage import h5_output, run_stage
from rdfa.whitening import fit_pca, whitened, whitening_note

log = logging.getLogger("rdfa.whitening")


def main(dataset: str, params: dict, paths) -> None:
    dim = get_int(params, "whitening.D", 1)
    with h5py.File(paths.descriptors, "r") as f:
        missing = [k for k in ("db/desc", "db/offsets", "query/desc", "query/offsets", "query/all_regions",
                               "full/desc", "full/offsets") if k not in f]
        if missing:
            raise ValueError(f"{paths.descriptors}: no entry {', '.join(missing)} (written by an older version? "
                             "re-run the descriptors stage)")
        db = f["db/desc"][()]
        db_offsets = f["db/offsets"][()]
        queries = {group: (f[f"{group}/desc"][()], f[f"{group}/offsets"][()]) for group in ("query", "full")}
        all_regions = f["query/all_regions"][()]
    log.info("learning PCA-whitening %d -> %d on %d database region descriptors", db.shape[1], dim, len(db))
    pca = fit_pca(db, dim, name="whitening.D")
    note = whitening_note(len(db), dim)
    if note:
        log.warning("%s", note)
    with h5_output(paths.whitened) as out:
        out.create_dataset("db/desc", data=whitened(db, pca))
        out.create_dataset("db/offsets", data=db_offsets)
        for group, (desc, offsets) in queries.items():
            out.create_dataset(f"{group}/desc", data=whitened(desc, pca))
            out.create_dataset(f"{group}/offsets", data=offsets)
        out.create_dataset("query/all_regions", data=all_regions)
        for name in ("mean", "components", "eigenvalues"):
            out.create_dataset(f"transform/{name}", data=getattr(pca, name))
        out.attrs["D"] = dim
        out.attrs["n_train"] = len(db)
        out.attrs["learned_on"] = dataset
        out.attrs["note"] = note or ""


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.whitened]))
