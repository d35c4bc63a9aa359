#!/usr/bin/env python3
"""Stage `whitening`: PCA-whitening of the region descriptors to D (eq. 6), l2-normalised.

Learned on the database's region descriptors, as in the paper, or on another
dataset's (``whitening.train_on``; its K -> K' basis then comes from there
too, see the pca stage). ``whitening.mode``: ``pca`` (eq. 6, the paper's),
``shrink`` or ``power`` (softer scalings of the same axes, for small
training sets: ``rdfa.whitening.Whitening``), or ``none`` (the l2-normalised
descriptors as they are, full dimension; D unused).

Writes ``whitened.h5`` (same layout as ``descriptors.h5``, dimension D) and
records in its attributes the mode, what the whitening was learned on
(``learned_on``, ``n_train`` descriptors, and ``train_digest``, the digest of
those descriptors, checked by every reader when they belong to another
dataset: ``rdfa.io.provenance``), with a warning when D approaches the
number of training vectors. The fitted transform is kept beside the vectors
(``transform/mean``, ``transform/components`` ``(K'(K'+1)/2, D)``,
``transform/eigenvalues``, ``transform/total_variance``, float64), so that
``rdfa search`` whitens a new photo exactly as the database was whitened.
A dataset without queries (a training set) has its query and full groups
empty, as in ``descriptors.h5``.
"""
from __future__ import annotations

import json
import logging
import sys
from contextlib import ExitStack
from pathlib import Path

import h5py
from tqdm import tqdm

from rdfa.io.gnd import NO_QUERIES
from rdfa.io.provenance import check_same_basis, stored_digest, write_whitened_groups
from rdfa.io.stage import Paths, blas_threads, h5_output, run_stage
from rdfa.settings import Settings
from rdfa.whitening import fit_pca_rows, whitening_note, whitening_rule

log = logging.getLogger("rdfa.whitening")

#: Rows per float32 block product of the covariance (its rounding grows with the block).
WHITENING_BLOCK = 4096


def check_descriptors(path, f: h5py.File) -> None:
    missing = [k for k in ("db/desc", "db/offsets", "query/desc", "query/offsets", "query/all_regions",
                           "full/desc", "full/offsets") if k not in f]
    if missing:
        raise ValueError(f"{path}: no entry {', '.join(missing)} (written by an older version? "
                         "re-run the descriptors stage)")


def training_file(dataset: str, source: str, paths) -> Path:
    """The descriptors.h5 the whitening of ``dataset`` is learned on (its own, or ``source``'s).

    Another dataset's must have been computed with the same K -> K' basis as
    this dataset's (the pca stage learns it on theirs): else they live in another space.
    """
    if source == dataset:
        return paths.descriptors
    origin = Paths(paths.data.parent.parent, source).descriptors
    check_same_basis(dataset, source, paths.descriptors, origin)
    return origin


def main(dataset: str, settings: Settings, paths) -> None:
    dim, setting = settings.whitening.D, settings.whitening.setting()
    source = settings.training_dataset(dataset)
    rt = settings.runtime
    chunk = rt.chunk_rows
    origin = training_file(dataset, source, paths)
    digest = stored_digest(origin, "db/desc", "db_digest")
    with ExitStack() as files, blas_threads(rt.blas_threads or None):
        f = files.enter_context(h5py.File(paths.descriptors, "r"))
        check_descriptors(paths.descriptors, f)
        if len(f["query/offsets"]) == 1:
            log.info("%s: %s: the database whitened, the query and full groups empty", dataset, NO_QUERIES)
        theirs = f if origin == paths.descriptors else files.enter_context(h5py.File(origin, "r"))
        check_descriptors(origin, theirs)
        train = theirs["db/desc"]
        n_train, d = train.shape
        pca, note = None, None
        if setting.mode == "none":
            log.info("whitening.mode none: the %d-dimensional descriptors l2-normalised as they are "
                     "(whitening.D unused)", d)
            dim = d
        else:
            log.info("learning %s whitening %d -> %d on %d database region descriptors of %s "
                     "(read %d rows at a time)", setting.label, d, dim, n_train, source, chunk)
            # Read block by block: memory stays at the d x d covariance however large the database.
            pca = fit_pca_rows(lambda a, b: train[a:b], n_train, d, dim, name="whitening.D",
                               chunk_rows=min(chunk, WHITENING_BLOCK))
            note = whitening_note(n_train, dim, setting)
            if note:
                log.warning("%s", note)
        with h5_output(paths.whitened) as out:
            write_whitened_groups(out, f, pca, setting, dim, chunk, lambda blocks, group: tqdm(
                blocks, desc=f"whitening {dataset} {group}", unit="block", disable=len(blocks) <= 1))
            out.attrs["n_train"] = n_train
            out.attrs["learned_on"] = source
            out.attrs["train_digest"] = digest
            out.attrs["note"] = note or ""
            out.attrs["d_rule"] = json.dumps(whitening_rule(n_train, dim))


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.whitened]))
