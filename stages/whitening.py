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
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from rdfa.io.params import get_int, runtime
from rdfa.io.stage import h5_output, run_stage
from rdfa.whitening import fit_pca_rows, whitened, whitening_note

log = logging.getLogger("rdfa.whitening")

#: Rows per float32 block product of the covariance (its rounding grows with the block).
WHITENING_BLOCK = 4096


def main(dataset: str, params: dict, paths) -> None:
    dim = get_int(params, "whitening.D", 1)
    rt = runtime(params)
    chunk = rt["chunk_rows"]
    with h5py.File(paths.descriptors, "r") as f, \
            threadpool_limits(limits=rt["blas_threads"] or None, user_api="blas"):
        missing = [k for k in ("db/desc", "db/offsets", "query/desc", "query/offsets", "query/all_regions",
                               "full/desc", "full/offsets") if k not in f]
        if missing:
            raise ValueError(f"{paths.descriptors}: no entry {', '.join(missing)} (written by an older version? "
                             "re-run the descriptors stage)")
        db = f["db/desc"]
        n_train, d = db.shape
        log.info("learning PCA-whitening %d -> %d on %d database region descriptors (read %d rows at a time)",
                 d, dim, n_train, chunk)
        # Read block by block: memory stays at the d x d covariance however large the database.
        pca = fit_pca_rows(lambda a, b: db[a:b], n_train, d, dim, name="whitening.D",
                           chunk_rows=min(chunk, WHITENING_BLOCK))
        note = whitening_note(n_train, dim)
        if note:
            log.warning("%s", note)
        with h5_output(paths.whitened) as out:
            for group in ("db", "query", "full"):
                source = f[f"{group}/desc"]
                target = out.create_dataset(f"{group}/desc", shape=(len(source), dim), dtype=np.float32)
                for start in tqdm(range(0, len(source), chunk), desc=f"whitening {dataset} {group}",
                                  unit="block", disable=len(source) <= chunk):
                    target[start:start + chunk] = whitened(source[start:start + chunk], pca)
                out.create_dataset(f"{group}/offsets", data=f[f"{group}/offsets"][()])
            out.create_dataset("query/all_regions", data=f["query/all_regions"][()])
            for name in ("mean", "components", "eigenvalues"):
                out.create_dataset(f"transform/{name}", data=getattr(pca, name))
            out.attrs["D"] = dim
            out.attrs["n_train"] = n_train
            out.attrs["learned_on"] = dataset
            out.attrs["note"] = note or ""


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.whitened]))
