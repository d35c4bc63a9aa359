"""Salient points (section 2): detector points ranked by alpha, or alpha's largest cells (or pixels)."""
import numpy as np
import pytest

from rdfa.saliency import detect_hessian_affine, resize_to_image, salient_points


def test_points_ranked_by_alpha_at_their_position():
    alpha = np.zeros((4, 4))
    alpha[0, 3] = 1.0  # top-right cell strongest
    alpha[3, 0] = 0.5
    kps = np.array([[10.0, 100.0], [120.0, 5.0], [5.0, 120.0], [60.0, 60.0]] * 100)
    points, fallback = salient_points(kps, alpha, (128, 128), n_max=3, n_min=2)
    assert not fallback
    np.testing.assert_allclose(points, [[120.0, 5.0]] * 3)  # N_max strongest, all at the peak


def test_grid_fallback_takes_the_largest_cells_as_cell_centres():
    rng = np.random.default_rng(0)
    alpha = rng.uniform(size=(24, 32))  # 768 cells > N_min = 300
    image_hw = (384, 512)  # 16 pixels per cell
    points, fallback = salient_points(np.zeros((5, 2)), alpha, image_hw, n_max=4000, n_min=300)
    assert fallback and points.shape == (300, 2)
    # Independent reading: sort the cells, keep 300, put each at its centre in pixels.
    cells = sorted(((alpha[r, c], r, c) for r in range(24) for c in range(32)), reverse=True)[:300]
    expected = {(c * 16 + 7.5, r * 16 + 7.5) for _, r, c in cells}
    assert {tuple(p) for p in points} == expected
    # strongest cell first
    r, c = np.unravel_index(np.argmax(alpha), alpha.shape)
    np.testing.assert_allclose(points[0], [c * 16 + 7.5, r * 16 + 7.5])


def test_grid_fallback_on_a_grid_smaller_than_n_min_selects_every_cell():
    alpha = np.random.default_rng(1).uniform(size=(16, 16))  # 256 cells < N_min = 300
    points, fallback = salient_points(np.zeros((0, 2)), alpha, (512, 512), n_max=4000, n_min=300)
    assert fallback and len(points) == 256 and len(np.unique(points, axis=0)) == 256


def test_pixel_fallback_takes_the_largest_pixels_of_the_resized_alpha():
    rng = np.random.default_rng(0)
    alpha = rng.uniform(size=(16, 16))
    points, fallback = salient_points(np.zeros((5, 2)), alpha, (512, 512), n_max=4000, n_min=300,
                                      fallback="pixels")
    assert fallback
    assert len(points) == 300 and len(np.unique(points, axis=0)) == 300
    big = resize_to_image(alpha, (512, 512))
    values = big[points[:, 1].astype(int), points[:, 0].astype(int)]
    assert values.min() >= np.sort(big.ravel())[-300] - 1e-7
    # the degenerate case this reading is kept to show: a blob around the strongest cell
    cells = {(int(y) // 32, int(x) // 32) for x, y in points}
    assert len(cells) < 16  # of 256 cells


def test_bad_counts():
    with pytest.raises(ValueError, match="N_min"):
        salient_points(np.zeros((0, 2)), np.ones((2, 2)), (64, 64), n_max=10, n_min=20)
    with pytest.raises(ValueError, match="saliency.fallback"):
        salient_points(np.zeros((0, 2)), np.ones((2, 2)), (64, 64), n_max=10, n_min=2, fallback="cells")


def test_hessian_affine_finds_blobs_on_a_real_photo():
    import skimage.data

    gray = skimage.data.camera()
    kps = detect_hessian_affine(gray)
    assert kps.shape[1] == 2 and len(kps) > 100
    assert kps[:, 0].max() < gray.shape[1] and kps[:, 1].max() < gray.shape[0]
    assert len(detect_hessian_affine(np.zeros((64, 64), np.uint8))) == 0


def _discs(centres, shape=(240, 320), radius=9):
    import cv2

    img = np.full(shape, 220, np.uint8)
    for x, y in centres:
        cv2.circle(img, (int(x), int(y)), radius, 30, -1, lineType=cv2.LINE_AA)
    return img


@pytest.mark.parametrize("detector", ["hesaff", "hesaff_half"])
def test_each_detector_finds_each_blob_at_its_place_in_the_full_image(detector):
    # Dark discs at known centres: whichever scale the detector works at, its points come back in the
    # full image's pixels, on the discs (a few pixels off at most: far below a 16-32 px feature cell).
    from rdfa.saliency import detect_points

    centres = np.array([(40, 50), (160, 60), (270, 190), (90, 180), (200, 130)], dtype=np.float64)
    found = detect_points(_discs(centres), detector)
    for c in centres:
        assert np.linalg.norm(found - c, axis=1).min() < 3.0, (detector, c)


def test_hesaff_half_counts_n_min_at_its_scale():
    # A blank image: no point, so the grid fallback takes N_min cells; hesaff_half's N_min is a quarter.
    from rdfa.saliency import image_points

    fmap = np.random.default_rng(0).random((12, 16, 8)).astype(np.float32)
    image = np.full((384, 512, 3), 128, np.uint8)
    full = image_points(image, fmap, n_max=4000, n_min=100, detector="hesaff")
    half = image_points(image, fmap, n_max=4000, n_min=100, detector="hesaff_half")
    assert full.fallback and half.fallback
    assert len(full.points) == 100 and len(half.points) == 25


def test_unknown_detector_is_refused_naming_the_key():
    from rdfa.settings import SaliencySettings, SettingsError

    with pytest.raises(SettingsError, match="saliency.detector"):
        SaliencySettings(detector="sift")
