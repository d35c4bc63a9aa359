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
uncropped: a query without a box repeats its ``query`` rows).
"""
from __future__ import annotations

import logging
import sys

import h5py
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from rdfa.io.gnd import load_gnd
from rdfa.io.keys import full_keys, masks_for, query_keys
from rdfa.io.params import get_float
from rdfa.io.stage import h5_output, run_stage
from rdfa.pooling import region_descriptors

log = logging.getLogger("rdfa.descriptors")


def stacked(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate(parts), np.cumsum([0] + [len(p) for p in parts])


def main(dataset: str, params: dict, paths) -> None:
    beta_eps = get_float(params, "weights.beta_eps", positive=True)
    log_eps = get_float(params, "descriptors.log_eps", positive=True)
    gnd = load_gnd(paths.data)
    with h5py.File(paths.pca, "r") as f:
        components = f["components"][()]
    groups = {"db": [f"db/{name}" for name in gnd["imlist"]], "query": query_keys(gnd), "full": full_keys(gnd)}
    out_rows: dict[str, list] = {}
    # Many small eigendecompositions: multithreaded BLAS only adds overhead here
    # (and slows down badly when the cores are shared), so pin it to one thread.
    with threadpool_limits(limits=1, user_api="blas"), \
            h5py.File(paths.features, "r") as feats, h5py.File(paths.regions, "r") as regs:
        cache: dict[str, np.ndarray] = {}
        for group, keys in groups.items():
            rows = out_rows[group] = []
            for key in tqdm(keys, desc=f"descriptors {dataset} {group}", unit="img"):
                if key not in cache:
                    fmap = feats[key]["fmap"][()]
                    cache[key] = region_descriptors(fmap, masks_for(key, fmap.shape, regs, paths.regions),
                                                    components, beta_eps, log_eps)
                rows.append(cache[key])
            if group == "db":
                cache.clear()  # queries rarely repeat database images; keep memory flat
        # A query is described by all its regions exactly when regions.h5 has an entry for it.
        all_regions = np.array([key in regs for key in groups["query"]], dtype=np.int8)
    with h5_output(paths.descriptors) as out:
        for group, rows in out_rows.items():
            desc, offsets = stacked(rows)
            out.create_dataset(f"{group}/desc", data=desc)
            out.create_dataset(f"{group}/offsets", data=offsets)
        out.create_dataset("query/all_regions", data=all_regions)
    log.info("%d database regions; %d queries (%d by all their regions, %d by the R_M of their box); "
             "dimension %d", sum(len(r) for r in out_rows["db"]), len(out_rows["query"]), int(all_regions.sum()),
             int(len(all_regions) - all_regions.sum()), out_rows["db"][0].shape[1])


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.descriptors]))
