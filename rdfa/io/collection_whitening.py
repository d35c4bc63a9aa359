"""Whitening learned on the collection: the database plus a sample of its distractor set (issue 24).

With ``whitening.distractors.fit: collection`` the distractors stage learns eq. 6's whitening on the
training dataset's database region descriptors (``descriptors.h5``: what the whitening stage learns
on) plus those of the first ``whitening.distractors.fit_images`` images of the distractor set,
described up to eq. 5 in a first pass over that sample only. The covariance is accumulated block by
block (:class:`rdfa.whitening.StreamingPCA`): memory stays at the ``d x d`` matrix however large the
sample. :func:`write_whitened` then whitens the dataset's database, queries and uncropped queries
with that fit, into a file of ``whitened.h5``'s layout kept with the shards (``shards/whitened.h5``,
which the ranking stage reads instead of the dataset's), and the stage whitens every distractor with
it. The fit is kept in that file too, so an interrupted run resumes without a second first pass
when what it was learned from is unchanged (:func:`stored_fit`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from ..whitening import PCA, StreamingPCA, Whitening, whitening_note

log = logging.getLogger(__name__)

#: Rows per block of the covariance, as the whitening stage accumulates it (its rounding grows with the block).
BLOCK = 4096
FILE = "whitened.h5"


def fit_collection(train_path: Path, sample: Iterable[np.ndarray], dim: int, chunk_rows: int) -> tuple[PCA, dict]:
    """PCA to ``dim`` axes of the database rows of ``train_path`` (a ``descriptors.h5``) and of the
    ``(M, d)`` eq. 5 rows of each sample image ``sample`` yields; and how many of each it saw."""
    block = min(chunk_rows, BLOCK)
    with h5py.File(train_path, "r") as f:
        train = f["db/desc"]
        n_db, d = train.shape
        fitter = StreamingPCA(d, block)
        for start in range(0, n_db, block):
            fitter.add(train[start:start + block])
    n_rows = n_images = 0
    for rows in sample:
        fitter.add(np.asarray(rows, dtype=np.float32))
        n_rows += len(rows)
        n_images += 1
    pca = fitter.fit(dim, name="whitening.D")
    return pca, {"database_rows": int(n_db), "sample_images": n_images, "sample_rows": n_rows,
                 "n_train": int(n_db + n_rows)}


def write_whitened(path: Path, descriptors_path: Path, pca: PCA, mode: Whitening, fit: dict, inputs: str,
                   chunk_rows: int) -> str | None:
    """The dataset's ``db``, ``query`` and ``full`` rows (``descriptors_path``) whitened with the
    collection's fit, in ``whitened.h5``'s layout, with the fit (``transform/*``), ``fit`` (what it
    was learned on) and ``inputs`` (the digest of everything it was learned from) as attributes.
    Returns the small-training-set warning of :func:`rdfa.whitening.whitening_note`, if any."""
    from .provenance import write_whitened_groups

    dim = pca.components.shape[1]
    note = whitening_note(fit["n_train"], dim, mode)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(descriptors_path, "r") as f, h5py.File(tmp, "w") as out:
        write_whitened_groups(out, f, pca, mode, dim, chunk_rows)
        out.attrs["learned_on"] = "collection"
        out.attrs.update({k: v for k, v in fit.items()})
        out.attrs["inputs"] = inputs
        out.attrs["note"] = note or ""
    tmp.replace(path)
    return note


def learn_on_collection(settings, dataset: str, paths, images, setup: tuple, folder: Path, task_images: int,
                        record: dict) -> tuple[PCA, dict]:
    """``whitening.distractors.fit: collection`` for the distractors stage: the fit (learned in a first
    pass over the set's first ``fit_images`` images, or the one an interrupted run kept in
    ``folder``) and the dataset's rows whitened with it into ``folder/whitened.h5``. ``setup``: the
    stage's worker set-up (:class:`rdfa.io.distractors.ShardDescriber`), ``record``: what the
    images are described with (the digest of the fit's inputs)."""
    from .distractors import ShardDescriber
    from .provenance import stored_digest
    from .shards import config_digest
    from .stage import Paths, placement, worker_map

    s = settings.whitening
    mode, n = s.setting(), min(s.distractors.fit_images, len(images.names))
    source = settings.training_dataset(dataset)
    train = paths.descriptors if source == dataset else Paths(paths.root, source).descriptors
    inputs = config_digest({"describe": record, "train": [source, stored_digest(train, "db/desc", "db_digest")],
                            "sample": images.names[:n], "D": s.D, "mode": mode.record()})
    chunk = settings.runtime.chunk_rows
    found = stored_fit(folder / FILE, inputs)
    if found is None:
        started = time.perf_counter()
        _, workers, num_gpus = placement(settings.runtime)
        jobs = list(images.jobs(0, n))
        tasks = [jobs[i:i + task_images] for i in range(0, n, task_images)]
        with worker_map(workers, ShardDescriber.start, setup, num_gpus=num_gpus,
                        **settings.runtime.executor_options()) as run:
            sample = (rows for part in run(ShardDescriber.pooled, tasks, 1) for rows in part)
            found = fit_collection(train, tqdm(sample, total=n, desc="collection fit (first pass)", unit="img"),
                                   s.D, chunk)
        seconds = time.perf_counter() - started
        log.info("collection whitening learned on %d database rows of %s and %d rows of %d distractor images "
                 "in %.1f s (first pass: %.1f ms per image)", found[1]["database_rows"], source,
                 found[1]["sample_rows"], n, seconds, 1000 * seconds / max(n, 1))
    else:
        log.info("collection whitening: the fit of an earlier run, learned on the same inputs")
    note = write_whitened(folder / FILE, paths.descriptors, found[0], mode, found[1], inputs, chunk)
    if note:
        log.warning("%s", note)
    return found


def stored_fit(path: Path, inputs: str) -> tuple[PCA, dict] | None:
    """The fit kept in ``path`` by an earlier run, if it was learned from the same ``inputs``."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("inputs") != inputs:
                return None
            pca = PCA(*(f[f"transform/{name}"][()] for name in ("mean", "components", "eigenvalues")),
                      total_variance=float(f["transform/total_variance"][()]))
            fit = {k: int(f.attrs[k]) for k in ("database_rows", "sample_images", "sample_rows", "n_train")}
    except (OSError, KeyError):
        return None
    return pca, fit
