"""The FAISS index of ``rdfa.index.RegionIndex`` on disk (``faiss.write_index`` / ``faiss.read_index``).

The file holds the FAISS index alone; the image offsets come from the
descriptors file it was built from, and the settings from ``params.yaml``'s
``index`` group, which :class:`rdfa.index.RegionIndex` checks against what
the file was built with.
"""
from __future__ import annotations

import os

import numpy as np

from ..index import IndexSettings, RegionIndex
from .atomic import atomic_path


def write_region_index(path: str | os.PathLike, index: RegionIndex) -> None:
    """Write the FAISS index to ``path`` atomically (an interrupted write leaves no file)."""
    import faiss

    with atomic_path(path) as tmp:
        faiss.write_index(index.index, str(tmp))


def read_region_index(path: str | os.PathLike, settings: IndexSettings, offsets: np.ndarray,
                      threads: int = 0) -> RegionIndex:
    """The index written by :func:`write_region_index`, for the database of image ``offsets``."""
    import faiss

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no FAISS index here (build it first)")
    return RegionIndex(faiss.read_index(str(path)), settings, offsets, threads)
