#!/usr/bin/env python3
"""Stage `points`: salient points of every database image (paper section 2).

Hessian-affine points of the image as the network saw it, ranked by alpha
(eq. 1) resized to the image; the N_max strongest kept, or the N_min largest
positions of alpha when the detector finds fewer than N_min. Writes
``points.h5``: ``<name>/points`` ``(N, 2)`` pixel ``(x, y)`` and a
``fallback`` attribute.
"""
from __future__ import annotations

import logging
import sys

import cv2
import h5py
import numpy as np
from tqdm import tqdm

from rdfa.io.gnd import load_gnd
from rdfa.io.images import load_rgb, resize_to
from rdfa.io.params import ParamError, get_int
from rdfa.io.stage import h5_output, run_stage
from rdfa.saliency import detect_hessian_affine, salient_points
from rdfa.weights import spatial_weights

log = logging.getLogger("rdfa.points")


def main(dataset: str, params: dict, paths) -> None:
    n_max = get_int(params, "saliency.n_max", 1)
    n_min = get_int(params, "saliency.n_min", 1)
    if n_min > n_max:
        raise ParamError(f"params.yaml: 'saliency.n_min' ({n_min}) must not exceed 'saliency.n_max' ({n_max})")
    gnd = load_gnd(paths.data)
    cv2.setNumThreads(1)
    fallbacks = 0
    counts = []
    with h5py.File(paths.features, "r") as feats, h5_output(paths.points) as out:
        out.attrs["n_max"], out.attrs["n_min"] = n_max, n_min
        for name in tqdm(gnd["imlist"], desc=f"points {dataset}", unit="img"):
            group = feats[f"db/{name}"]
            input_hw = tuple(int(v) for v in group.attrs["input_hw"])
            image = resize_to(load_rgb(paths.images / name), input_hw)
            gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
            keypoints = detect_hessian_affine(gray)
            alpha = spatial_weights(group["fmap"][()])
            points, used_fallback = salient_points(keypoints, alpha, input_hw, n_max, n_min)
            g = out.create_group(name)
            g.create_dataset("points", data=points.astype(np.float32))
            g.attrs["fallback"] = bool(used_fallback)
            g.attrs["n_detected"] = len(keypoints)
            g.attrs["input_hw"] = np.array(input_hw, dtype=np.int64)
            fallbacks += used_fallback
            counts.append(len(keypoints))
    log.info("%d images: median %d Hessian-affine points; alpha fallback (fewer than N_min=%d) on %d (%.0f%%)",
             len(counts), int(np.median(counts)), n_min, fallbacks, 100.0 * fallbacks / max(len(counts), 1))


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0]))
