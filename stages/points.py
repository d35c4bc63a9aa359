#!/usr/bin/env python3
"""Stage `points`: salient points of every image described by its regions (paper section 2).

Database images, queries without a box and uncropped queries (``full/<i>``):
Hessian-affine points of the image as the network saw it, ranked by alpha
(eq. 1) resized to the image; the N_max strongest kept, or, when the detector
finds fewer than N_min, the N_min largest values of alpha read as
``saliency.fallback`` (``grid``: cell centres; ``pixels``: pixels of the
resized alpha). Writes ``points.h5`` under the keys of ``rdfa.io.keys``:
``<key>/points`` ``(N, 2)`` pixel ``(x, y)``, with ``fallback``,
``n_detected``, ``input_hw`` and ``all_cells`` (the grid had no more than
N_min cells, so the fallback took every cell) attributes.
"""
from __future__ import annotations

import logging
import sys

import cv2
import h5py
import numpy as np
from tqdm import tqdm

from rdfa.io.gnd import NO_QUERIES, load_gnd
from rdfa.io.images import load_rgb, resize_to
from rdfa.io.keys import entries, link, read_array
from rdfa.io.stage import h5_output, run_stage, worker_map
from rdfa.saliency import image_points
from rdfa.settings import Settings

log = logging.getLogger("rdfa.points")


class _Detector:
    """Per-process state of the detection workers: the open feature file and the parameters.

    Each worker process opens ``features.h5`` itself (an HDF5 handle must not cross a fork).
    """

    features = None
    images = None
    settings: tuple = ()

    @classmethod
    def start(cls, features_path, images_path, n_max: int, n_min: int, fallback: str, detector: str) -> None:
        cv2.setNumThreads(1)  # parallelism comes from the processes; more threads only contend
        cls.features = h5py.File(features_path, "r")
        cls.images = images_path
        cls.settings = (n_max, n_min, fallback, detector)

    @classmethod
    def points(cls, job: tuple[str, str]):
        """Section 2 for one entry ``(key, image name)``: its points and the network input size."""
        key, name = job
        group = cls.features[key]
        input_hw = tuple(int(v) for v in group.attrs["input_hw"])
        image = resize_to(load_rgb(cls.images / name), input_hw)
        return image_points(image, read_array(cls.features, f"{key}/fmap"), *cls.settings), input_hw


def main(dataset: str, settings: Settings, paths) -> None:
    sal = settings.saliency
    n_max, n_min, fallback = sal.n_max, sal.n_min, sal.fallback
    workers = settings.runtime.worker_count()
    gnd = load_gnd(paths.data, need_queries=False)
    if not gnd["qimlist"]:
        log.info("%s: %s: the database images only", dataset, NO_QUERIES)
    todo = [e for e in entries(gnd) if e.needs_regions]
    jobs = [(e.key, e.name) for e in todo if e.same_as is None]
    setup = (paths.features, paths.images, n_max, n_min, fallback, sal.detector)
    fallbacks = all_cells = 0
    counts = []
    log.info("%d images, detector %s, detection in %s", len(jobs), sal.detector,
             f"{workers} worker process(es)" if workers else "Ray actors")
    with worker_map(workers, _Detector.start, setup, **settings.runtime.executor_options()) as run:
        found_all = run(_Detector.points, jobs, 4)
        with h5_output(paths.points) as out:
            out.attrs["n_max"], out.attrs["n_min"], out.attrs["fallback"] = n_max, n_min, fallback
            out.attrs["detector"] = sal.detector
            for (key, _), (found, input_hw) in tqdm(zip(jobs, found_all), total=len(jobs),
                                                     desc=f"points {dataset}", unit="img"):
                g = out.create_group(key)
                g.create_dataset("points", data=found.points)
                g.attrs["fallback"] = found.fallback
                g.attrs["all_cells"] = found.all_cells
                g.attrs["n_detected"] = found.n_detected
                g.attrs["input_hw"] = np.array(input_hw, dtype=np.int64)
                fallbacks += found.fallback
                all_cells += found.all_cells
                counts.append(found.n_detected)
            for entry in todo:
                if entry.same_as is not None:
                    link(out, entry)
            out.attrs["n_fallback"], out.attrs["n_all_cells"] = fallbacks, all_cells
    n = max(len(counts), 1)
    log.info("%d images: median %d Hessian-affine points; alpha fallback (fewer than N_min=%d, read as %s) "
             "on %d (%.0f%%)", len(counts), int(np.median(counts)) if counts else 0, n_min, fallback,
             fallbacks, 100.0 * fallbacks / n)
    if all_cells:
        log.warning("%s: on %d images (%.0f%%) the feature grid has no more than N_min=%d cells, so the grid "
                    "fallback selected every cell: their regions do not depend on alpha (enlarge the images "
                    "with features.size.%s.min_side, or lower saliency.n_min)",
                    dataset, all_cells, 100.0 * all_cells / n, n_min, dataset)


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.points]))
