#!/usr/bin/env python3
"""Stage `descriptors`: second-order region descriptors (eq. 5).

Local descriptors reduced to K' (eq. 4), then per region the alpha-weighted
average of their outer products, its regularised matrix log, the upper
triangle, l2-normalised. Database images get one descriptor per candidate
region. A query with a box gets only its whole cropped region R_M, as in the
paper (section 5: Oxford and Paris give boxes); a query without a box is
described like a database image, by all its candidate regions, and matched by
eq. 7 over region pairs. Uncropped queries (``full/<i>``, Table 1's "OF")
get all their regions too.

Writes ``descriptors.h5``: ``db/desc`` ``(R, K'(K'+1)/2)`` with ``db/offsets``
(image i owns rows offsets[i]:offsets[i+1]); ``query/desc`` with
``query/offsets`` and ``query/all_regions`` (per query: 1 = all its regions,
0 = R_M of its box); ``full/desc`` with ``full/offsets`` (every query,
uncropped: a query without a box repeats its ``query`` rows); a dataset
without queries (a training set) has these groups empty (no rows, offsets
``[0]``). Attributes
``db_digest`` and ``pca_digest`` (``rdfa.io.provenance``): the digests of
the database rows and of the K -> K' basis they were computed with, which a
whitening learned on them records (``whitening.train_on``).
"""
from __future__ import annotations

import logging
import sys

import h5py
import numpy as np
from tqdm import tqdm

from rdfa.io.gnd import NO_QUERIES, load_gnd
from rdfa.io.keys import full_keys, masks_for, query_keys, read_array
from rdfa.io.provenance import Digester, array_digest
from rdfa.io.stage import blas_threads, h5_output, placement, run_stage, worker_map
from rdfa.pooling import region_descriptors_batch
from rdfa.settings import Settings

log = logging.getLogger("rdfa.descriptors")


#: Images per batched eigendecomposition (and per task of a worker process).
CHUNK_IMAGES = 32


class _Describer:
    """Per-process state of the pooling workers: open input files and the parameters.

    Each worker opens ``features.h5`` and ``regions.h5`` itself (an HDF5 handle must not
    cross a fork).
    """

    features = regions = regions_path = components = None
    settings: tuple = ()

    device = "cpu"

    @classmethod
    def start(cls, features_path, regions_path, components, beta_eps: float, log_eps: float,
              device: str = "cpu") -> None:
        cls.features, cls.regions = h5py.File(features_path, "r"), h5py.File(regions_path, "r")
        cls.regions_path, cls.components, cls.settings = regions_path, components, (beta_eps, log_eps)
        cls.device = device

    @classmethod
    def describe(cls, keys: list[str]) -> list[np.ndarray]:
        """eq. 5 for the entries ``keys``, with one eigendecomposition call for all their regions."""
        # Many small eigendecompositions: multithreaded BLAS only adds overhead here (and slows
        # down badly when the cores are shared); parallelism comes from the worker processes.
        with blas_threads(1):
            fmaps = [read_array(cls.features, f"{key}/fmap") for key in keys]
            masks = [masks_for(key, fmap.shape, cls.regions, cls.regions_path) for key, fmap in zip(keys, fmaps)]
            if cls.device != "cpu":
                from rdfa.torch_ops import region_descriptors_torch  # float64: equal to the CPU path to ~1e-13

                return region_descriptors_torch(fmaps, masks, cls.components, *cls.settings, device=cls.device)
            return region_descriptors_batch(fmaps, masks, cls.components, *cls.settings)


def chunks(keys: list[str], size: int) -> list[list[str]]:
    return [keys[i:i + size] for i in range(0, len(keys), size)]


def main(dataset: str, settings: Settings, paths) -> None:
    beta_eps, log_eps = settings.weights.beta_eps, settings.descriptors.log_eps
    rt = settings.runtime
    # On a GPU eq. 5 runs there (no float64 eigh on Apple GPUs: the CPU then); on the CPU, in workers.
    device, workers, num_gpus = placement(settings.runtime, mps=False)
    gnd = load_gnd(paths.data, need_queries=False)
    if not gnd["qimlist"]:
        log.info("%s: %s: the database only, the query and full groups empty", dataset, NO_QUERIES)
    with h5py.File(paths.pca, "r") as f:
        components = f["components"][()]
    groups = {"db": [f"db/{name}" for name in gnd["imlist"]], "query": query_keys(gnd), "full": full_keys(gnd)}
    with h5py.File(paths.regions, "r") as regs:
        # A query is described by all its regions exactly when regions.h5 has an entry for it.
        all_regions = np.array([key in regs for key in groups["query"]], dtype=np.int8)
    setup = (paths.features, paths.regions, components, beta_eps, log_eps, device)
    log.info("eq. 5 for %d database images and %d queries, %d images per batched eigendecomposition, "
             "on %s, %s", len(groups["db"]), len(groups["query"]), CHUNK_IMAGES, device,
             f"{rt.executor} executor, {workers or 'one per CPU/GPU'} worker(s)")
    query_rows: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    db_digest = Digester()  # what a whitening learned on these rows records (rdfa.io.provenance)
    with worker_map(workers, _Describer.start, setup, num_gpus=num_gpus, **rt.executor_options()) as run:
        with h5_output(paths.descriptors) as out:
            for group, keys in groups.items():
                # The uncropped variant of a box-less query is that query: reuse its rows.
                todo = [key for key in keys if not (group == "full" and key in query_rows)]
                computed = {}
                rows = None
                with tqdm(total=len(todo), desc=f"descriptors {dataset} {group}", unit="img") as progress:
                    batches = chunks(todo, CHUNK_IMAGES)
                    for chunk, described in zip(batches, run(_Describer.describe, batches)):
                        if group == "db":  # written as it comes: memory stays flat as the database grows
                            block = np.concatenate(described)
                            db_digest.add(block)
                            rows = append_rows(out, "db/desc", block)
                            computed.update((key, len(d)) for key, d in zip(chunk, described))
                        else:
                            computed.update(zip(chunk, described))
                        progress.update(len(chunk))
                if group == "db":
                    sizes = [computed[key] for key in keys]
                else:
                    parts = [computed[key] if key in computed else query_rows[key] for key in keys]
                    if group == "query":
                        query_rows = dict(zip(keys, parts))
                    # No queries (a training set): no rows, in the database's dimension.
                    block = np.concatenate(parts) if parts else out["db/desc"][:0]
                    rows = append_rows(out, f"{group}/desc", block)
                    sizes = [len(p) for p in parts]
                out.create_dataset(f"{group}/offsets", data=np.cumsum([0] + sizes))
                counts[group] = rows
            out.create_dataset("query/all_regions", data=all_regions)
            dim = out["db/desc"].shape[1]
            out.attrs["db_digest"] = db_digest.hexdigest()
            out.attrs["pca_digest"] = array_digest(components)
    log.info("%d database regions; %d queries (%d by all their regions, %d by the R_M of their box); "
             "dimension %d", counts["db"], len(groups["query"]), int(all_regions.sum()),
             int(len(all_regions) - all_regions.sum()), dim)


def append_rows(out: h5py.File, key: str, rows: np.ndarray) -> int:
    """Append ``rows`` to the extendable dataset ``key`` (created on first use); returns its length."""
    if key not in out:
        out.create_dataset(key, shape=(0, rows.shape[1]), maxshape=(None, rows.shape[1]), dtype=rows.dtype,
                           chunks=(max(1, min(256, (1 << 22) // (4 * rows.shape[1]))), rows.shape[1]))
    data = out[key]
    n = data.shape[0]
    data.resize(n + len(rows), axis=0)
    data[n:] = rows
    return n + len(rows)


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.descriptors]))
