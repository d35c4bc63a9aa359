"""Decoding odd images as a user would expect, and the size policy."""
import numpy as np
import pytest
from PIL import Image

from rdfa.io.images import ImageError, load_rgb, prepare, target_size


def test_grayscale_becomes_rgb(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(np.full((8, 9), 77, np.uint8)).save(path)
    img = load_rgb(path)
    assert img.shape == (8, 9, 3) and img.dtype == np.uint8 and np.all(img == 77)


def test_16_bit_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(path)
    img = load_rgb(path)
    np.testing.assert_array_equal(img[0, :, 0], [0, 128, 255])


def test_alpha_channel_is_composited(tmp_path):
    path = tmp_path / "a.png"
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # opaque red
    rgba[1, 1, 3] = 0  # transparent
    Image.fromarray(rgba, "RGBA").save(path)
    img = load_rgb(path)
    assert img.shape == (2, 2, 3)
    assert tuple(img[0, 0]) == (200, 0, 0) and tuple(img[1, 1]) == (0, 0, 0)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rot.jpg"
    arr = np.zeros((20, 40, 3), np.uint8)  # landscape as stored
    arr[:, :20] = 255
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(path, exif=exif, quality=95)
    img = load_rgb(path)
    assert img.shape == (40, 20, 3)  # displayed as portrait
    assert img[:20].mean() > 200 and img[20:].mean() < 50


def test_corrupt_and_missing_images_are_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg: cannot decode"):
        load_rgb(bad)
    with pytest.raises(ImageError, match="nothere.jpg: image file not found"):
        load_rgb(tmp_path / "nothere.jpg")
    truncated = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "ok.jpg")
    truncated.write_bytes((tmp_path / "ok.jpg").read_bytes()[:300])
    with pytest.raises(ImageError, match="cut.jpg"):
        load_rgb(truncated)


def test_size_policy():
    assert target_size(768, 1024, None, None) == (768, 1024)  # the paper keeps Oxford's size
    assert target_size(768, 1536, 1024, None) == (512, 1024)  # Holidays: longer side 1024
    assert target_size(128, 128, None, 512) == (512, 512)  # COIL upsampled
    assert target_size(32, 64, 1024, 512) == (512, 1024)


def test_image_smaller_than_stride_is_an_error_or_upsampled():
    tiny = np.zeros((20, 30, 3), np.uint8)
    with pytest.raises(ImageError, match=r"tiny.png: image is 30x20 .* stride \(32\)"):
        prepare(tiny, None, None, 32, "tiny.png")
    assert prepare(tiny, None, 64, 32, "tiny.png").shape == (64, 96, 3)


def test_query_box_crop():
    img = np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3).astype(np.uint8)
    out = prepare(img, None, None, 1, "q", box=[10.2, 20.7, 50.5, 60.0])
    # edges rounded to the nearest pixel edge: x 10..51, y 21..60
    np.testing.assert_array_equal(out, img[21:60, 10:51])
    with pytest.raises(ImageError, match="does not overlap"):
        prepare(img, None, None, 1, "q", box=[300, 300, 400, 400])


def test_box_partly_outside_is_clipped_with_a_warning(caplog):
    img = np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3).astype(np.uint8)
    with caplog.at_level("WARNING", logger="rdfa.io.images"):
        out = prepare(img, None, None, 1, "q.jpg", box=[-20, 50, 150, 400])
    np.testing.assert_array_equal(out, img[50:100, 0:150])
    assert "q.jpg: query box [-20, 50, 150, 400] reaches outside the 200x100 image: clipped to [0.0, 50.0, 150.0, " \
           "100.0]" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="rdfa.io.images"):
        prepare(img, None, None, 1, "q.jpg", box=[0, 0, 200, 100])  # the whole image: no warning
    assert caplog.text == ""


@pytest.mark.parametrize("box", [[0, 0, float("inf"), float("inf")], [float("nan"), 0, 5, 5]])
def test_box_with_infinity_or_nan_is_an_error(box):
    img = np.zeros((100, 200, 3), np.uint8)
    with pytest.raises(ImageError, match=r"q\.jpg: query box .* must be four finite numbers"):  # OverflowError before
        prepare(img, None, None, 1, "q.jpg", box=box)


def bomb_png(path, side: int = 50_000) -> None:
    """A 1-bit PNG whose header says ``side`` x ``side`` pixels (a decompression bomb), a few bytes on disk:
    Pillow writes a 1x1 image, whose IHDR then gets the large size (and its CRC again)."""
    import struct
    import zlib

    Image.new("1", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def test_decompression_bomb_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "bomb.png"
    bomb_png(path)
    assert path.stat().st_size < 100  # small on disk, 2.5 Gpx once decoded
    with pytest.raises(ImageError, match=rf"{path}: refused, its pixel count is over twice Pillow's limit"):
        load_rgb(path)
    from rdfa.io.images import decode_rgb

    with pytest.raises(ImageError, match=r"member/bomb\.png: refused"):
        decode_rgb(path.read_bytes(), "member/bomb.png")
