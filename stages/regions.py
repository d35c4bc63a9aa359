#!/usr/bin/env python3
"""Stage `regions`: candidate regions of every image described by its regions (paper section 2).

Fast global k-means of the salient points into L clusters; the power set of
the clusters (without the empty set) plus the whole image gives M = 2^L
convex-hull regions, mapped onto the feature grid; regions that vanish there,
or repeat another region, are dropped. Database images, queries without a
box and uncropped queries, under the keys of ``rdfa.io.keys``. Writes
``regions.h5``: ``<key>/masks`` ``(M', h, w)`` bool, ``<key>/hulls`` (all hull
vertices stacked) with ``<key>/hull_offsets``, ``<key>/subsets`` (cluster
bitmask per region, 0 = whole image, last) and ``<key>/labels``.
"""
from __future__ import annotations

import logging
import sys

import h5py
import numpy as np
from tqdm import tqdm

from rdfa.io.gnd import NO_QUERIES, load_gnd
from rdfa.io.keys import entries, link
from rdfa.io.stage import h5_output, run_stage, worker_map
from rdfa.regions import image_regions
from rdfa.settings import Settings

log = logging.getLogger("rdfa.regions")

class _Clusterer:
    """Per-process state of the clustering workers: the open input files and the parameters.

    Each worker opens ``points.h5`` and ``features.h5`` itself (an HDF5 handle must not cross a fork).
    """

    points = features = points_path = None
    settings: tuple = ()

    @classmethod
    def start(cls, points_path, features_path, n_clusters: int, min_cells: int, max_iter: int) -> None:
        cls.points, cls.features = h5py.File(points_path, "r"), h5py.File(features_path, "r")
        cls.points_path, cls.settings = points_path, (n_clusters, min_cells, max_iter)

    @classmethod
    def regions(cls, job: tuple[str, str]):
        """Section 2 for one entry ``(key, image name)``: fast global k-means and the hull regions."""
        key, name = job
        n_clusters, min_cells, max_iter = cls.settings
        if key not in cls.points:
            raise ValueError(f"{cls.points_path}: no entry '{key}' ({name}); re-run the points stage")
        points = cls.points[key]["points"][()].astype(np.float64)
        input_hw = tuple(int(v) for v in cls.points[key].attrs["input_hw"])
        grid_hw = cls.features[key]["fmap"].shape[:2]
        if len(points) < n_clusters:
            raise ValueError(f"{cls.points_path}: {key} ({name}) has {len(points)} salient points, "
                             f"fewer than regions.L={n_clusters}")
        return image_regions(points, n_clusters, input_hw, grid_hw, min_cells, max_iter)


def main(dataset: str, settings: Settings, paths) -> None:
    n_clusters, min_cells, max_iter = settings.regions.L, settings.regions.min_cells, settings.regions.kmeans_max_iter
    workers = settings.runtime.worker_count()
    gnd = load_gnd(paths.data, need_queries=False)
    if not gnd["qimlist"]:
        log.info("%s: %s: the database images only", dataset, NO_QUERIES)
    todo = [e for e in entries(gnd) if e.needs_regions]
    jobs = [(e.key, e.name) for e in todo if e.same_as is None]
    setup = (paths.points, paths.features, n_clusters, min_cells, max_iter)
    kept = []
    with worker_map(workers, _Clusterer.start, setup, **settings.runtime.executor_options()) as run:
        found_all = run(_Clusterer.regions, jobs, 8)
        with h5_output(paths.regions) as out:
            out.attrs["L"] = n_clusters
            for (key, _), found in tqdm(zip(jobs, found_all), total=len(jobs), desc=f"regions {dataset}",
                                        unit="img"):
                masks = found.masks
                g = out.create_group(key)
                g.create_dataset("masks", data=masks, compression="gzip")
                g.create_dataset("hulls", data=np.concatenate(found.hulls).astype(np.float32))
                g.create_dataset("hull_offsets", data=np.cumsum([0] + [len(h) for h in found.hulls]))
                g.create_dataset("subsets", data=found.subsets)
                g.create_dataset("labels", data=found.labels.astype(np.int16))
                kept.append(len(masks))
            for entry in todo:
                if entry.same_as is not None:
                    link(out, entry)
    log.info("%d images: %.2f regions per image on average (at most 2^L = %d), %d worker process(es)",
             len(kept), float(np.mean(kept)) if kept else 0.0, 2 ** n_clusters, workers)


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.regions]))
