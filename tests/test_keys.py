"""rdfa.io.keys: reading an entry's arrays back from the per-image HDF5 files."""
import h5py
import numpy as np
import pytest

from rdfa.io import map_compression
from rdfa.io.keys import masks_for, read_array
from rdfa.regions import whole_image_mask


@pytest.fixture
def stored(tmp_path):
    rng = np.random.default_rng(0)
    fmap = (rng.random((4, 3, 10)) * 5).astype(np.float16)
    fmap[fmap < 2] = 0
    masks = rng.random((3, 4, 3)) > 0.5
    path = tmp_path / "entries.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("db/a.jpg/fmap", data=fmap, chunks=fmap.shape, **map_compression())
        f.create_dataset("db/a.jpg/masks", data=masks)
        f.create_dataset("db/empty/masks", data=np.zeros((0, 4, 3), dtype=bool))
        f.create_dataset("db/scalar", data=2.5)
        f["query/0"] = h5py.SoftLink("/db/a.jpg")
    return path, fmap, masks


def test_read_array_gives_what_h5py_gives(stored):
    path, fmap, masks = stored
    with h5py.File(path, "r") as f:
        for key in ("db/a.jpg/fmap", "db/a.jpg/masks", "query/0/fmap", "db/empty/masks", "db/scalar"):
            got, expected = read_array(f, key), f[key][()]
            assert got.dtype == expected.dtype and got.shape == expected.shape, key
            np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(read_array(f, "db/a.jpg/fmap"), fmap)  # through the zstd filter
        np.testing.assert_array_equal(read_array(f, "query/0/masks"), masks)  # a soft-linked entry


def test_read_array_of_a_missing_path_or_a_group_is_a_key_error(stored):
    path, _, _ = stored
    with h5py.File(path, "r") as f:
        for key in ("db/b.jpg/fmap", "db/a.jpg", "nothing"):
            with pytest.raises(KeyError):
                read_array(f, key)


def test_masks_for_entries_with_and_without_regions(stored, tmp_path):
    path, _, masks = stored
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(masks_for("db/a.jpg", (4, 3), f, path), masks)
        # a boxed query has no entry: R_M, the whole (cropped) map
        np.testing.assert_array_equal(masks_for("query/7", (4, 3, 10), f, path), whole_image_mask((4, 3)))
        with pytest.raises(ValueError, match="no entry 'db/b.jpg'"):
            masks_for("db/b.jpg", (4, 3), f, path)
