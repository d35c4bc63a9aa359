"""A dataset's whitened database regions followed by its distractor shards, read block by block.

What :mod:`rdfa.distractor_search` searches: block 0 is the database (in
memory), the others the shard files (``rdfa.io.shards``), read when asked
for, so memory stays bounded by a block whatever the set's size.
"""
from __future__ import annotations

import h5py
import numpy as np

from ..distractor_search import at_dim, leading_columns


class Collection:
    """The dataset's whitened database regions followed by the distractor shards, read block by block.

    At a D below the stored one (Table 1's smaller D), every row is cut to its leading
    columns and l2-normalised again, as the methods stage does for O2_R; the float16 shard
    rows are l2-normalised again at every D.
    """

    def __init__(self, db: np.ndarray, db_offsets: np.ndarray, shards: list, dim: int, dataset: str = "desc"):
        self.dataset = dataset  # the shards' rows: O2_R's, or methods/<name>/<key> (rdfa.io.shards)
        self.blocks = [(None, db, db_offsets)] + shards  # (path or None, rows if in memory, offsets)
        self.dim = dim
        self.row_starts = np.cumsum([0] + [int(offsets[-1]) for _, _, offsets in self.blocks])
        self.n_images = sum(len(offsets) - 1 for _, _, offsets in self.blocks)
        self.image_offsets = np.concatenate([[0]] + [offsets[1:] + start for (_, _, offsets), start
                                                    in zip(self.blocks, self.row_starts[:-1])])

    def rows(self, block: int, index=slice(None)) -> np.ndarray:
        """Rows ``index`` (a slice, or increasing row numbers) of block ``block`` at the collection's D, float32."""
        path, rows, _ = self.blocks[block]
        if rows is None:
            with h5py.File(path, "r") as f:
                return leading_columns(f[self.dataset][index], self.dim)
        return at_dim(rows[index], self.dim)  # the whitening stage's rows

    def gather(self, global_rows: np.ndarray) -> np.ndarray:
        """The rows at the collection's row indices ``global_rows`` (any shape), float32; only those are read."""
        flat = np.asarray(global_rows).ravel()
        out = np.empty((len(flat), self.dim), dtype=np.float32)
        block_of = np.searchsorted(self.row_starts, flat, side="right") - 1
        for block in np.unique(block_of):
            pick = np.flatnonzero(block_of == block)
            wanted, inverse = np.unique(flat[pick] - self.row_starts[block], return_inverse=True)
            out[pick] = self.rows(block, wanted)[inverse]
        return out.reshape(*np.shape(global_rows), self.dim)

    def views(self) -> list[tuple[BlockRows, np.ndarray]]:
        """Every block as ``(rows read on demand, offsets)``, for :meth:`rdfa.index.RegionIndex.build`."""
        return [(BlockRows(self, b), offsets) for b, (_, _, offsets) in enumerate(self.blocks)]


class BlockRows:
    """The rows of one block of the collection at D, read on demand: ``rows[a:b]`` or ``rows[indices]``,
    float32 (what :class:`rdfa.index.RegionIndex` builds from and re-ranks with)."""

    def __init__(self, collection: Collection, block: int):
        self.collection, self.block = collection, block
        self.shape = (int(collection.row_starts[block + 1] - collection.row_starts[block]), collection.dim)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        return self.collection.rows(self.block, index)
