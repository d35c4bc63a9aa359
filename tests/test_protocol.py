"""The retrieval protocol: queries keep their image's scale; queries without a box get all their regions."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

from rdfa.io.images import SizePolicy, prepare_input

REPO = Path(__file__).resolve().parents[1]


def test_a_query_box_is_cut_from_the_resized_whole_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (128, 128, 3), np.uint8)  # COIL-sized
    prepared = prepare_input(image, SizePolicy(None, 512, None), 32, "q.png", box=[10, 20, 74, 84])
    # The whole image is enlarged 4x; the 64x64 box becomes 256x256 pixels (not 512x512, which a
    # crop resized on its own to min_side would give).
    assert prepared.image.shape == (256, 256, 3) and prepared.scale == (4.0, 4.0)
    whole = cv2.resize(image, (512, 512), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(prepared.image, whole[80:336, 40:296])
    assert prepared.crop == (40, 80, 296, 336) and prepared.enlarged == 1.0


def test_a_crop_smaller_than_the_stride_alone_is_enlarged(caplog):
    image = np.zeros((480, 640, 3), np.uint8)
    prepared = prepare_input(image, SizePolicy(None, None, None), 32, "q.png", box=[100, 100, 116, 140])
    assert min(prepared.image.shape[:2]) == 32 and prepared.enlarged == 2.0
    assert "smaller than the network's stride" in caplog.text


def test_an_input_over_the_pixel_limit_is_refused_naming_the_image():
    from rdfa.io.images import ImageError

    with pytest.raises(ImageError, match=r"big\.jpg: a 300x200 image gives a 300x200 network input.*max_pixels"):
        prepare_input(np.zeros((200, 300, 3), np.uint8), SizePolicy(None, None, 50_000), 32, "big.jpg")


def photo(name: str, hw: tuple[int, int]) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return cv2.resize(np.ascontiguousarray(img[:, :, :3]), (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def run(stage: str, root: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), "--dataset", "toy",
                           "--params", str(root / "params.yaml"), "--root", str(root)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Database photos of 480x640; queries: a database image (no box), another photo (no box),
    and a box cut from a database image; then the stages up to the descriptors."""
    root = tmp_path_factory.mktemp("protocol")
    images = root / "data" / "toy" / "images"
    images.mkdir(parents=True)
    db = {"astronaut.png": "astronaut", "coffee.png": "coffee", "chelsea.png": "chelsea", "rocket.png": "rocket"}
    for name, source in db.items():
        Image.fromarray(photo(source, (480, 640))).save(images / name)
    Image.fromarray(photo("immunohistochemistry", (480, 640))).save(images / "other.png")
    box = [100, 60, 420, 300]
    gnd = {"imlist": list(db), "qimlist": ["astronaut.png", "other.png", "coffee.png"],
           "gnd": [{"ok": [0], "junk": []}, {"ok": [1], "junk": []}, {"ok": [1], "junk": [], "bbx": box}]}
    (root / "data" / "toy" / "gnd.json").write_text(json.dumps(gnd))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["features"]["size"]["toy"] = {"max_side": None, "min_side": 512, "max_pixels": None}
    params["saliency"].update({"n_max": 400, "n_min": 40})
    params["regions"]["L"] = 2
    params["pca"]["k_prime"] = 8
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("features", "points", "regions", "pca", "descriptors"):
        run(stage, root)
    return root, box


@pytest.mark.slow
def test_query_input_has_its_images_scale(toy):
    root, box = toy
    with h5py.File(root / "features" / "toy" / "features.h5") as f:
        db_hw = tuple(f["db/coffee.png"].attrs["input_hw"])
        query = f["query/2"]
        scale = tuple(query.attrs["scale"])
        q_hw = tuple(query.attrs["input_hw"])
    assert db_hw == (512, 683)  # 480x640 enlarged to a 512-pixel shorter side
    np.testing.assert_allclose(scale, (512 / 480, 683 / 640))
    # The box (320x240 pixels) at the database image's scale, to a pixel.
    assert abs(q_hw[0] - (box[3] - box[1]) * 512 / 480) <= 1
    assert abs(q_hw[1] - (box[2] - box[0]) * 683 / 640) <= 1


@pytest.mark.slow
def test_queries_without_a_box_get_all_their_regions(toy):
    root, _ = toy
    work = root / "features" / "toy"
    with h5py.File(work / "regions.h5") as regs, h5py.File(work / "descriptors.h5") as d:
        offsets = d["query/offsets"][()]
        counts = np.diff(offsets)
        assert d["query/all_regions"][()].tolist() == [1, 1, 0]
        # a query without a box: as many descriptors as candidate regions (more than R_M alone)
        assert counts[0] == len(regs["query/0/masks"]) > 1
        assert counts[1] == len(regs["query/1/masks"]) > 1
        # the database image used as a query is described exactly as in the database
        db_offsets = d["db/offsets"][()]
        np.testing.assert_array_equal(d["query/desc"][offsets[0]:offsets[1]], d["db/desc"][db_offsets[0]:db_offsets[1]])
        # the boxed query: R_M of its crop only; its uncropped variant: all regions of the whole image
        assert counts[2] == 1
        full = np.diff(d["full/offsets"][()])
        assert full[2] == len(regs["full/2/masks"]) and full[0] == counts[0]
        assert "query/2" not in regs  # boxed queries need no regions
