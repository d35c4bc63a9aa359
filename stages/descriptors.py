#!/usr/bin/env python3
"""Stage `descriptors`: second-order region descriptors (eq. 5).

Local descriptors reduced to K' (eq. 4), then per region the alpha-weighted
average of their outer products, its regularised matrix log, the upper
triangle, l2-normalised. Database images get one descriptor per candidate
region; a query gets only its whole (cropped) image region R_M, as in the
paper. Writes ``descriptors.h5``: ``db/desc`` ``(R, K'(K'+1)/2)`` with
``db/offsets`` (image i owns rows offsets[i]:offsets[i+1]), and ``query/desc``
with ``query/offsets``.
"""
from __future__ import annotations

import logging
import sys

import h5py
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from rdfa.io.gnd import load_gnd
from rdfa.io.params import get_float
from rdfa.io.stage import h5_output, run_stage
from rdfa.pooling import reduce_local, second_order
from rdfa.regions import whole_image_mask
from rdfa.weights import channel_weights, spatial_weights

log = logging.getLogger("rdfa.descriptors")


def region_descriptors(fmap: np.ndarray, masks: np.ndarray, components: np.ndarray,
                       beta_eps: float, log_eps: float) -> np.ndarray:
    fmap = fmap.astype(np.float64)
    local = reduce_local(fmap, channel_weights(fmap, beta_eps), components)
    return second_order(local, masks, spatial_weights(fmap), log_eps).astype(np.float32)


def main(dataset: str, params: dict, paths) -> None:
    beta_eps = get_float(params, "weights.beta_eps", positive=True)
    log_eps = get_float(params, "descriptors.log_eps", positive=True)
    gnd = load_gnd(paths.data)
    with h5py.File(paths.pca, "r") as f:
        components = f["components"][()]
    db, db_counts, queries = [], [], []
    # Many small eigendecompositions: multithreaded BLAS only adds overhead here
    # (and slows down badly when the cores are shared), so pin it to one thread.
    with threadpool_limits(limits=1, user_api="blas"), \
            h5py.File(paths.features, "r") as feats, h5py.File(paths.regions, "r") as regs:
        for name in tqdm(gnd["imlist"], desc=f"descriptors {dataset} db", unit="img"):
            desc = region_descriptors(feats[f"db/{name}"]["fmap"][()], regs[name]["masks"][()],
                                      components, beta_eps, log_eps)
            db.append(desc)
            db_counts.append(len(desc))
        for name in tqdm(gnd["qimlist"], desc=f"descriptors {dataset} queries", unit="img"):
            fmap = feats[f"query/{name}"]["fmap"][()]
            queries.append(region_descriptors(fmap, whole_image_mask(fmap.shape[:2]),  # R_M only
                                              components, beta_eps, log_eps))
    with h5_output(paths.descriptors) as out:
        out.create_dataset("db/desc", data=np.concatenate(db))
        out.create_dataset("db/offsets", data=np.cumsum([0] + db_counts))
        out.create_dataset("query/desc", data=np.concatenate(queries))
        out.create_dataset("query/offsets", data=np.arange(len(queries) + 1))
    log.info("%d database regions, %d queries, dimension %d", sum(db_counts), len(queries), db[0].shape[1])


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0]))
