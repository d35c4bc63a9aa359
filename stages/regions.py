#!/usr/bin/env python3
"""Stage `regions`: candidate regions of every database image (paper section 2).

Fast global k-means of the salient points into L clusters; the power set of
the clusters (without the empty set) plus the whole image gives M = 2^L
convex-hull regions, mapped onto the feature grid; regions that vanish there
are dropped. Writes ``regions.h5``: ``<name>/masks`` ``(M', h, w)`` bool,
``<name>/hulls`` (all hull vertices stacked) with ``<name>/hull_offsets``,
and ``<name>/subsets`` (cluster bitmask per region, 0 = whole image, last).
"""
from __future__ import annotations

import logging
import sys

import h5py
import numpy as np
from tqdm import tqdm

from rdfa.clustering import fast_global_kmeans
from rdfa.io.gnd import load_gnd
from rdfa.io.params import get_int
from rdfa.io.stage import h5_output, run_stage
from rdfa.regions import candidate_regions

log = logging.getLogger("rdfa.regions")


def main(dataset: str, params: dict, paths) -> None:
    n_clusters = get_int(params, "regions.L", 1)
    min_cells = get_int(params, "regions.min_cells", 1)
    max_iter = get_int(params, "regions.kmeans_max_iter", 1)
    if n_clusters > 8:
        log.warning("regions.L=%d gives 2^L=%d regions per image", n_clusters, 2 ** n_clusters)
    gnd = load_gnd(paths.data)
    kept = []
    with h5py.File(paths.features, "r") as feats, h5py.File(paths.points, "r") as pts, \
            h5_output(paths.regions) as out:
        out.attrs["L"] = n_clusters
        for name in tqdm(gnd["imlist"], desc=f"regions {dataset}", unit="img"):
            points = pts[name]["points"][()].astype(np.float64)
            input_hw = tuple(int(v) for v in pts[name].attrs["input_hw"])
            grid_hw = feats[f"db/{name}"]["fmap"].shape[:2]
            if len(points) < n_clusters:
                raise ValueError(f"{paths.points}: {name} has {len(points)} salient points, fewer than L={n_clusters}")
            _, labels = fast_global_kmeans(points, n_clusters, max_iter)
            masks, hulls, subsets = candidate_regions(points, labels, n_clusters, input_hw, grid_hw, min_cells)
            g = out.create_group(name)
            g.create_dataset("masks", data=masks, compression="gzip")
            g.create_dataset("hulls", data=np.concatenate(hulls).astype(np.float32))
            g.create_dataset("hull_offsets", data=np.cumsum([0] + [len(h) for h in hulls]))
            g.create_dataset("subsets", data=subsets)
            g.create_dataset("labels", data=labels.astype(np.int16))
            kept.append(len(masks))
    log.info("%d images: %.2f regions per image on average (at most 2^L = %d)",
             len(kept), float(np.mean(kept)), 2 ** n_clusters)


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0]))
