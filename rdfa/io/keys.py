"""The key scheme of every per-image HDF5 file (features.h5, points.h5, regions.h5).

- ``db/<name>``: database image ``<name>`` (its file under ``images/``);
- ``query/<i>``: query ``i`` of ``qimlist`` (cropped to its box when it has
  one), so the same image listed twice with two boxes is two entries;
- ``full/<i>``: query ``i`` uncropped (Table 1's "OF" variant), only for
  queries that have a box: a query without one is stored once, as ``query/<i>``.

Entries whose network input is the same (a query without a box that is also a
database image, Oxford's uncropped queries, a query listed twice) are stored
once: the later ones are HDF5 soft links to the first (``same_as``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rdfa.regions import whole_image_mask


@dataclass(frozen=True)
class Entry:
    key: str
    name: str
    box: tuple[float, float, float, float] | None
    same_as: str | None = None

    @property
    def needs_regions(self) -> bool:
        """Entries described by all their candidate regions (no box): everything but a boxed query."""
        return self.box is None


def entries(gnd: dict, full: bool = True) -> list[Entry]:
    """Every entry the per-image stages process, database first, in a fixed order."""
    out: list[Entry] = []
    first: dict = {}

    def add(key: str, name: str, box) -> None:
        box = None if box is None else tuple(float(v) for v in box)
        ident = (name, box)
        out.append(Entry(key, name, box, first.get(ident)))
        first.setdefault(ident, key)

    for name in gnd["imlist"]:
        add(f"db/{name}", name, None)
    for i, (name, entry) in enumerate(zip(gnd["qimlist"], gnd["gnd"])):
        add(f"query/{i}", name, entry.get("bbx"))
    if full:
        for i, (name, entry) in enumerate(zip(gnd["qimlist"], gnd["gnd"])):
            if entry.get("bbx") is not None:
                add(f"full/{i}", name, None)
    return out


def query_keys(gnd: dict) -> list[str]:
    return [f"query/{i}" for i in range(len(gnd["qimlist"]))]


def full_keys(gnd: dict) -> list[str]:
    """The uncropped variant of each query: ``full/<i>`` with a box, ``query/<i>`` without."""
    return [f"full/{i}" if entry.get("bbx") is not None else f"query/{i}" for i, entry in enumerate(gnd["gnd"])]


def link(f, entry: Entry) -> None:
    """Store ``entry`` as a soft link to the entry it duplicates (replacing whatever is there)."""
    import h5py

    if f.get(entry.key, getlink=True) is not None:
        del f[entry.key]
    f[entry.key] = h5py.SoftLink("/" + entry.same_as)


def read_array(f, path: str) -> np.ndarray:
    """``f[path][()]`` for a dataset of numbers (or booleans) of the open HDF5 file ``f``: the same
    array, through h5py's low-level API.

    Every per-image stage reads each entry's map (and its masks) once: the high-level objects
    cost more than the read itself for these small datasets (``python bench/kernels.py pool``,
    1,280 COIL-100 entries: a map and its masks in 0.63 ms instead of 1.14). A missing path, or
    one that is not a dataset, raises ``KeyError`` as ``f[path]`` does; soft links are followed.
    """
    import h5py

    dataset = h5py.h5d.open(f.id, path.encode())
    out = np.empty(dataset.shape, dtype=dataset.dtype)
    if out.size:
        dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
    return out


def masks_for(key: str, grid_hw, regions, regions_path) -> np.ndarray:
    """The regions an entry is described by: all its candidate regions from regions.h5, or, for a
    boxed query (which has no entry there), R_M, the whole cropped image."""
    try:  # (a membership test first would cost HDF5 a second lookup of the key)
        return read_array(regions, f"{key}/masks")
    except KeyError:
        pass
    if key.startswith("query/"):
        return whole_image_mask(grid_hw[:2])
    raise ValueError(f"{regions_path}: no entry '{key}'; re-run the regions stage")
