"""The candidate regions of the database images in each image's own pixels.

``regions.h5`` stores each region's hull in network-input pixels; the
``features.h5`` entry's ``scale`` ``(sy, sx)`` maps it back to the original
image. ``rdfa search`` reports the best-matched region's box from here, and
the report and Figure 2 draw its polygon.
"""
from __future__ import annotations

import h5py
import numpy as np

from ..regions import rescale_points
from .stage import Paths


class RegionHulls:
    """The regions of the database images (``regions.h5``) in each image's own pixels (``features.h5``).

    A hull is stored in network-input pixels; the features entry's ``scale``
    ``(sy, sx)`` maps it back to the original image. Open as a context manager.
    """

    def __init__(self, paths: Paths):
        self.paths = paths

    def __enter__(self) -> "RegionHulls":
        self.regions = h5py.File(self.paths.regions, "r")
        self.features = h5py.File(self.paths.features, "r")
        return self

    def __exit__(self, *exc) -> None:
        self.regions.close()
        self.features.close()

    def polygon(self, name: str, region: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Region ``region`` (its row among the image's regions) of database image ``name``: its hull
        ``(N, 2)`` in the original image's pixels ``(x, y)``, and that image's ``(H, W)``."""
        key = f"db/{name}"
        if key not in self.regions or key not in self.features:
            raise ValueError(f"{self.paths.regions}: no entry '{key}'; re-run the pipeline (`dvc repro`)")
        group = self.regions[key]
        offsets = group["hull_offsets"][()]
        if not 0 <= region < len(offsets) - 1:
            raise ValueError(f"{self.paths.regions}: '{key}' has {len(offsets) - 1} regions, not {region + 1}")
        hull = group["hulls"][offsets[region]:offsets[region + 1]]
        attrs = self.features[key].attrs
        in_h, in_w = (int(v) for v in attrs["input_hw"])
        sy, sx = (float(v) for v in attrs["scale"])
        return rescale_points(hull, (1.0 / sx, 1.0 / sy)), (int(round(in_h / sy)), int(round(in_w / sx)))
