"""The regions of every image of a synth run equal those of the implementation before issue 25's speed work.

The run's own points (``points.h5``) through today's ``rdfa.regions.image_regions`` against the literal
copies of the original fast global k-means, hulls and masks kept in tests/test_clustering.py and
tests/test_regions.py: cluster labels, masks, hull vertices and subsets, bit for bit.
"""
import h5py
import numpy as np
import pytest
from test_clustering import original_fast_global_kmeans
from test_regions import original_candidate_regions

from rdfa.regions import image_regions


def check_run(root, dataset="synth") -> int:
    """Compare every entry of ``root``'s run of ``dataset``; returns how many were compared."""
    from rdfa.settings import load_settings

    s = load_settings(root / "params.yaml")
    n_clusters, min_cells, max_iter = s.regions.L, s.regions.min_cells, s.regions.kmeans_max_iter
    checked = 0
    with h5py.File(root / "features" / dataset / "points.h5", "r") as points_file, \
            h5py.File(root / "features" / dataset / "features.h5", "r") as features:
        def visit(name, obj):
            nonlocal checked
            if not (isinstance(obj, h5py.Dataset) and name.endswith("/points")) or obj.shape[0] < n_clusters:
                return
            key = name[:-len("/points")]
            points = obj[()].astype(np.float64)
            input_hw = tuple(int(v) for v in points_file[key].attrs["input_hw"])
            grid_hw = features[key]["fmap"].shape[:2]
            found = image_regions(points, n_clusters, input_hw, grid_hw, min_cells, max_iter)
            _, labels = original_fast_global_kmeans(points, n_clusters, max_iter)
            np.testing.assert_array_equal(found.labels, labels, err_msg=key)
            masks, hulls, subsets = original_candidate_regions(points, labels, n_clusters, input_hw, grid_hw,
                                                               min_cells)
            np.testing.assert_array_equal(found.masks, masks, err_msg=key)
            np.testing.assert_array_equal(found.subsets, subsets, err_msg=key)
            assert len(found.hulls) == len(hulls), key
            for hull, ref in zip(found.hulls, hulls):
                np.testing.assert_array_equal(hull, ref, err_msg=key)
            checked += 1

        points_file.visititems(visit)
    return checked


@pytest.mark.slow
def test_every_synth_image_gets_the_original_regions(synth_run):
    root, _, _ = synth_run
    assert check_run(root) >= 40  # the reduced synth's database images and queries
