#!/usr/bin/env python3
"""Stage `pca`: PCA bases U1 (K to K') of the database's first-order region descriptors (eqs. 3, 4).

Each region R'_m of each database image gives ``beta o sum_{p in R'_m} f_p``,
l2-normalised (eq. 3); their principal axes reduce the local descriptors to
K' dimensions for second-order pooling (eq. 4). Writes ``pca.h5``.

With ``whitening.train_on.<dataset>: <other>``, everything learned comes from
the other dataset: the basis is learned on its database (its features.h5 and
regions.h5), by the same code and so the same basis as its own pca stage
writes (``learned_on``, and its digest in ``source_digest``), so that this
dataset's second-order descriptors share the space the other's whitening is
learned in (the whitening stage checks that they do). Learned rather than
copied from the other's ``pca.h5``: DVC runs the foreach instances stage by
stage, in the order of ``datasets``, so that file may not be written yet
(``datasets: [synth, synth_train]``) or be stale, whereas the files the
basis is learned from come from earlier stages. Only database images count,
so a training set without queries is no different here.
"""
from __future__ import annotations

import logging
import sys

import h5py
import numpy as np
from tqdm import tqdm

from rdfa.io.gnd import NO_QUERIES, load_gnd
from rdfa.io.keys import read_array
from rdfa.io.provenance import array_digest, require_training_files
from rdfa.io.stage import Paths, blas_threads, h5_output, run_stage, worker_map
from rdfa.pooling import first_order
from rdfa.settings import Settings
from rdfa.weights import channel_weights
from rdfa.whitening import StreamingPCA

log = logging.getLogger("rdfa.pca")


#: Images per task of a worker process.
CHUNK_IMAGES = 32


class _FirstOrder:
    """Per-process state of the workers: the open input files (an HDF5 handle must not cross a fork)."""

    features = regions = None
    beta_eps = 0.0

    @classmethod
    def start(cls, paths, beta_eps: float) -> None:
        cls.features, cls.regions = h5py.File(paths.features, "r"), h5py.File(paths.regions, "r")
        cls.beta_eps = beta_eps

    @classmethod
    def rows(cls, names: list[str]) -> np.ndarray:
        """eq. (3) for every region of the database images ``names``, stacked in order."""
        with blas_threads(1):  # parallelism comes from the processes
            out = []
            for name in names:
                fmap = read_array(cls.features, f"db/{name}/fmap").astype(np.float64)
                masks = read_array(cls.regions, f"db/{name}/masks")
                out.append(first_order(fmap, masks, channel_weights(fmap, cls.beta_eps)))
            return np.concatenate(out)


def learn_basis(dataset: str, paths, k_prime: int, beta_eps: float, workers: int = 1, executor: dict | None = None):
    """The K -> K' PCA basis of ``dataset``'s database (``paths``) and the number of region descriptors.

    The maps are read and pooled in ``workers`` processes, 32 images per task; the rows reach
    the fit in image order whatever the number of workers, so the basis does not depend on it.
    ``executor``: :meth:`rdfa.settings.RuntimeSettings.executor_options` (default: local processes).
    """
    gnd = load_gnd(paths.data, need_queries=False)
    if not gnd["qimlist"]:
        log.info("%s: %s: the basis of its database images, as for any dataset", dataset, NO_QUERIES)
    names = list(gnd["imlist"])
    tasks = [names[i:i + CHUNK_IMAGES] for i in range(0, len(names), CHUNK_IMAGES)]
    fitter = None
    with worker_map(min(workers, len(tasks)), _FirstOrder.start, (paths, beta_eps), **(executor or {})) as run, \
            tqdm(total=len(names), desc=f"pca {dataset}", unit="img") as progress:
        for task, rows in zip(tasks, run(_FirstOrder.rows, tasks)):
            # Accumulated as they come: memory stays at K x K however large the database.
            fitter = fitter or StreamingPCA(rows.shape[1])
            fitter.add(rows)
            progress.update(len(task))
    log.info("fitting PCA %d -> %d on %d first-order region descriptors of %s", fitter.dim, k_prime, fitter.n,
             dataset)
    return fitter.fit(k_prime, name="pca.k_prime"), fitter.n


def main(dataset: str, settings: Settings, paths) -> None:
    k_prime, beta_eps = settings.pca.k_prime, settings.weights.beta_eps
    source = settings.training_dataset(dataset)
    origin = paths if source == dataset else Paths(paths.data.parent.parent, source)
    if source != dataset:
        require_training_files(dataset, source, origin.gnd, origin.features, origin.regions)
    pca, n_train = learn_basis(source, origin, k_prime, beta_eps, settings.runtime.worker_count(),
                                 settings.runtime.executor_options())
    kept = pca.eigenvalues.sum() / max(pca.total_variance, 1e-300)
    log.info("the %d axes keep %.1f%% of the variance", k_prime, 100 * kept)
    with h5_output(paths.pca) as out:
        out.create_dataset("components", data=pca.components)
        out.create_dataset("mean", data=pca.mean)
        out.create_dataset("eigenvalues", data=pca.eigenvalues)
        out.attrs["n_train"] = n_train
        out.attrs["learned_on"] = source
        if source != dataset:
            out.attrs["source_digest"] = array_digest(pca.components)


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.pca]))
