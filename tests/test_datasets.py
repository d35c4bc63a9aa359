"""prepare_dataset() on small hand-made sources (offline, fast)."""
from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rdfa.io.datasets import OFFICIAL, prepare_dataset
from rdfa.io.gnd import DatasetError, load_gnd

# --------------------------------------------------------------------------- helpers

def _jpeg_bytes(size=(40, 30), color=(200, 30, 30), orientation=None, marker=None) -> bytes:
    img = Image.new("RGB", size, color)
    if marker is not None:  # (box, color): a patch to find after rotations
        img.paste(marker[1], marker[0])
    buf = io.BytesIO()
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    img.save(buf, "JPEG", quality=95, **kwargs)
    return buf.getvalue()


def _tgz(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".tmp-")]


def _write_gt(folder: Path, queries: dict[str, dict], prefix: str = "") -> dict[str, bytes]:
    """Oxford-format gt files: query -> {"query": (name, box), "good": [...], "ok": [...], "junk": [...]}."""
    out = {}
    for q, spec in queries.items():
        name, box = spec["query"]
        out[f"{q}_query.txt"] = f"{prefix}{name} {' '.join(map(str, box))}\n".encode()
        for kind in ("good", "ok", "junk"):
            out[f"{q}_{kind}.txt"] = "".join(f"{n}\n" for n in spec.get(kind, [])).encode()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for n, data in out.items():
            (folder / n).write_bytes(data)
    return out


# --------------------------------------------------------------------------- COIL-100

COIL_OBJECTS = ("obj1", "obj2", "obj3")  # obj1's views are 32x32 in the shared copy: kept


@pytest.fixture
def coil_folder(shared_dir, tmp_path) -> Path:
    src = shared_dir / "datasets" / "coil100" / "images"
    folder = tmp_path / "coil_src"
    folder.mkdir()
    for obj in COIL_OBJECTS:
        for p in src.glob(f"{obj}__*.png"):
            shutil.copy(p, folder / p.name)
    return folder


def _coil_expected(folder: Path) -> tuple[int, int]:
    names = [p.name for p in folder.glob("obj*__*.png")]
    queries = [n for n in names if int(n.split("__")[1][:-4]) in (0, 90, 180, 270)]
    return len(names), len(queries)


def test_coil100_from_folder(coil_folder, tmp_path):
    n_images, n_queries = _coil_expected(coil_folder)
    assert n_queries == 11  # obj1 lacks one of its four query views
    out = tmp_path / "data" / "coil100"
    gnd = prepare_dataset("coil100", coil_folder, out, {})
    assert len(gnd["imlist"]) == n_images and len(gnd["qimlist"]) == n_queries
    assert gnd["imlist"][:3] == ["obj1__0.png", "obj1__5.png", "obj1__10.png"]  # by object, then angle
    assert load_gnd(out, check_files=True) == gnd
    with Image.open(out / "images" / "obj1__0.png") as img:
        assert img.size == (32, 32)
    # Hard links into the output, the source untouched.
    assert (out / "images" / "obj2__0.png").stat().st_ino == (coil_folder / "obj2__0.png").stat().st_ino
    assert len(list(coil_folder.iterdir())) == n_images
    _no_leftovers(out.parent)


def test_coil100_from_zip(coil_folder, tmp_path):
    n_images, n_queries = _coil_expected(coil_folder)
    arc = tmp_path / "coil-100.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        for p in sorted(coil_folder.iterdir()):
            zf.write(p, f"coil-100/{p.name}")
        zf.writestr("coil-100/convertGroupppm2png.pl", "# not an image\n")
    gnd = prepare_dataset("coil100", arc, tmp_path / "coil100", {"link": "copy"})
    assert len(gnd["imlist"]) == n_images and len(gnd["qimlist"]) == n_queries
    assert load_gnd(tmp_path / "coil100", check_files=True) == gnd
    # The same zip inside a source folder is found by its official name.
    folder = tmp_path / "dl"
    folder.mkdir()
    shutil.move(arc, folder / arc.name)
    assert prepare_dataset("coil100", folder, tmp_path / "coil100b", {}) == gnd
    _no_leftovers(tmp_path)


def test_coil100_corrupt_image_named(coil_folder, tmp_path):
    bad = coil_folder / "obj2__35.png"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated PNG
    with pytest.raises(DatasetError, match=r"obj2__35\.png: cannot decode"):
        prepare_dataset("coil100", coil_folder, tmp_path / "coil100", {})
    assert not (tmp_path / "coil100").exists()
    _no_leftovers(tmp_path)


# --------------------------------------------------------------------------- custom

@pytest.fixture
def custom_folder(tmp_path) -> Path:
    folder = tmp_path / "my_dataset"
    (folder / "images" / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "b.jpg", "sub/c.png", "q.jpg"]):
        Image.new("RGB", (20 + i, 16), (10 * i, 50, 90)).save(folder / "images" / name)
    gnd = {"imlist": ["a.jpg", "b.jpg", "sub/c.png"], "qimlist": ["q.jpg"],
           "gnd": [{"ok": [0, 2], "junk": [1], "bbx": [1, 1, 10, 10]}]}
    (folder / "gnd.json").write_text(json.dumps(gnd))
    return folder


def test_custom_copied_in(custom_folder, tmp_path):
    out = tmp_path / "data" / "custom"
    gnd = prepare_dataset("custom", custom_folder, out, {})
    assert gnd == json.loads((custom_folder / "gnd.json").read_text())
    assert load_gnd(out, check_files=True) == gnd
    assert (out / "images" / "sub" / "c.png").read_bytes() == (custom_folder / "images" / "sub" / "c.png").read_bytes()
    # link=copy: independent files.
    gnd2 = prepare_dataset("custom", custom_folder, out, {"link": "copy"})
    assert gnd2 == gnd
    assert (out / "images" / "a.jpg").stat().st_ino != (custom_folder / "images" / "a.jpg").stat().st_ino
    _no_leftovers(out.parent)


def test_custom_from_archive(custom_folder, tmp_path):
    arc = tmp_path / "custom.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(custom_folder, arcname="my_dataset")
    gnd = prepare_dataset("custom", arc, tmp_path / "out", {})
    assert load_gnd(tmp_path / "out", check_files=True) == gnd


def _edit_gnd(folder: Path, edit) -> None:
    gnd = json.loads((folder / "gnd.json").read_text())
    edit(gnd)
    (folder / "gnd.json").write_text(json.dumps(gnd))


def test_custom_errors_name_the_file(custom_folder, tmp_path):
    out = tmp_path / "data" / "custom"
    gnd_json = str(custom_folder / "gnd.json")
    prepare_dataset("custom", custom_folder, out, {})
    before = sorted(p.name for p in (out / "images").iterdir())

    (custom_folder / "images" / "b.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match=r"my_dataset/images/b\.jpg: cannot decode"):
        prepare_dataset("custom", custom_folder, out, {})
    Image.new("RGB", (8, 8)).save(custom_folder / "images" / "b.jpg")

    _edit_gnd(custom_folder, lambda g: g["imlist"].append("missing.jpg"))
    with pytest.raises(DatasetError, match=rf"{gnd_json}: names 1 image\(s\) missing .*missing\.jpg"):
        prepare_dataset("custom", custom_folder, out, {})
    _edit_gnd(custom_folder, lambda g: g["imlist"].remove("missing.jpg"))

    _edit_gnd(custom_folder, lambda g: g["gnd"][0]["ok"].append(3))
    with pytest.raises(DatasetError, match=rf"{gnd_json}: gnd\[0\] \(q\.jpg\) 'ok' holds index 3"):
        prepare_dataset("custom", custom_folder, out, {})
    _edit_gnd(custom_folder, lambda g: g["gnd"][0]["ok"].remove(3))

    _edit_gnd(custom_folder, lambda g: g["gnd"][0]["junk"].append(2))  # index 2 is also in 'ok'
    with pytest.raises(DatasetError, match=rf"{gnd_json}: gnd\[0\] \(q\.jpg\) lists database index 2 in both "
                                           r"'ok' and 'junk'"):
        prepare_dataset("custom", custom_folder, out, {})
    _edit_gnd(custom_folder, lambda g: g["gnd"][0]["junk"].remove(2))

    _edit_gnd(custom_folder, lambda g: g["imlist"].append("../escape.jpg"))
    with pytest.raises(DatasetError, match=rf"{gnd_json}: image name '\.\./escape\.jpg'"):
        prepare_dataset("custom", custom_folder, out, {})
    _edit_gnd(custom_folder, lambda g: g["imlist"].remove("../escape.jpg"))

    (custom_folder / "gnd.json").unlink()
    with pytest.raises(DatasetError, match=rf"{gnd_json}: ground-truth file not found"):
        prepare_dataset("custom", custom_folder, out, {})

    # The failed runs left the earlier output as it was, and no temporary folders.
    assert sorted(p.name for p in (out / "images").iterdir()) == before
    assert load_gnd(out, check_files=True)
    _no_leftovers(out.parent)


def test_argument_errors(custom_folder, tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        prepare_dataset("nope", custom_folder, tmp_path / "o", {})
    with pytest.raises(DatasetError, match="unknown option.*max_sidee"):
        prepare_dataset("holidays", custom_folder, tmp_path / "o", {"max_sidee": 3})
    with pytest.raises(DatasetError, match=r"nowhere: source of dataset 'custom' not found"):
        prepare_dataset("custom", tmp_path / "nowhere", tmp_path / "o", {})
    with pytest.raises(DatasetError, match="inside the output folder"):
        prepare_dataset("custom", custom_folder, custom_folder.parent, {})
    with pytest.raises(DatasetError, match="no official download"):
        prepare_dataset("custom", "download", tmp_path / "o", {})
    assert custom_folder.is_dir() and not (tmp_path / "o").exists()


def test_official_table_has_no_invented_checksums():
    for name, remotes in OFFICIAL.items():
        for r in remotes:
            assert r.url.startswith(("http://", "https://", "ftp://")), r
            assert r.sha256 is None or len(r.sha256) == 64


# --------------------------------------------------------------------------- Oxford / Paris

OX_QUERIES = {
    "all_souls_1": {"query": ("all_souls_000013", (1.5, 2.0, 30.5, 20.0)),
                    "good": ["all_souls_000013", "all_souls_000026", "all_souls_000026"],
                    "ok": ["all_souls_000040"], "junk": ["ashmolean_000000"]},
    "radcliffe_camera_1": {"query": ("radcliffe_camera_000519", (0, 0, 10, 10)),
                           "good": ["radcliffe_camera_000519"], "ok": [], "junk": ["all_souls_000040"]},
}
OX_IMAGES = ["all_souls_000013", "all_souls_000026", "all_souls_000040", "ashmolean_000000",
             "radcliffe_camera_000519", "christ_church_000001"]


def _oxford_source(tmp_path: Path, gt_archive=True) -> Path:
    src = tmp_path / "oxford_src"
    _tgz(src / "oxbuild_images-v1.tgz", {f"{n}.jpg": _jpeg_bytes() for n in OX_IMAGES})
    if gt_archive:
        _tgz(src / "gt_files_170407.tgz", _write_gt(None, OX_QUERIES, prefix="oxc1_"))
    return src


def test_oxford5k_from_archives(tmp_path):
    src = _oxford_source(tmp_path)
    out = tmp_path / "data" / "oxford5k"
    gnd = prepare_dataset("oxford5k", src, out, {})
    names = sorted(f"{n}.jpg" for n in OX_IMAGES)
    assert gnd["imlist"] == names
    assert gnd["qimlist"] == ["all_souls_000013.jpg", "radcliffe_camera_000519.jpg"]
    idx = {n: i for i, n in enumerate(names)}
    assert gnd["gnd"][0] == {"ok": [idx["all_souls_000013.jpg"], idx["all_souls_000026.jpg"],
                                    idx["all_souls_000040.jpg"]],
                             "junk": [idx["ashmolean_000000.jpg"]], "bbx": [1.5, 2.0, 30.5, 20.0]}
    assert load_gnd(out, check_files=True) == gnd
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    assert sorted(p.name for p in src.iterdir()) == ["gt_files_170407.tgz", "oxbuild_images-v1.tgz"]
    _no_leftovers(out.parent)

    # imlist option: its order, and images outside it left out.
    order = [f"{n}" for n in OX_IMAGES[:5]][::-1]
    gnd = prepare_dataset("oxford5k", src, out, {"imlist": order})
    assert gnd["imlist"] == [f"{n}.jpg" for n in order]
    assert not (out / "images" / "christ_church_000001.jpg").exists()

    # The gt archive and its extracted folder side by side: the same ground truth.
    _write_gt(src / "gt_files_170407", OX_QUERIES, prefix="oxc1_")
    assert prepare_dataset("oxford5k", src, out, {"imlist": order}) == gnd
    (src / "gt_files_170407" / "all_souls_1_ok.txt").write_text("")
    with pytest.raises(DatasetError, match="several ground-truth folders"):
        prepare_dataset("oxford5k", src, out, {})


def test_oxford5k_with_real_gt_reports_missing_images(tmp_path, shared_dir):
    src = _oxford_source(tmp_path, gt_archive=False)
    gt = shared_dir / "datasets" / "oxford5k" / "gt_files_170407"
    with pytest.raises(DatasetError, match=r"gt_files_170407/\w+\.txt: image '\w+' is not in the image list"):
        prepare_dataset("oxford5k", src, tmp_path / "oxford5k", {"gt": str(gt)})
    assert not (tmp_path / "oxford5k").exists()
    _no_leftovers(tmp_path)


def test_oxford5k_missing_gt_and_corrupt_image(tmp_path):
    src = _oxford_source(tmp_path, gt_archive=False)
    with pytest.raises(DatasetError, match=r"oxford_src: ground truth of 'oxford5k' not found: expected gt_files_170407"):
        prepare_dataset("oxford5k", src, tmp_path / "oxford5k", {})
    # A gt folder (not an archive) is found too; a corrupt image is named.
    _write_gt(src / "gt_files_170407", OX_QUERIES, prefix="oxc1_")
    images = src / "extracted"
    images.mkdir()
    (images / "christ_church_000001.jpg").write_bytes(_jpeg_bytes()[:300])
    with pytest.raises(DatasetError, match=r"christ_church_000001\.jpg.*different content"):
        prepare_dataset("oxford5k", src, tmp_path / "oxford5k", {})
    (src / "oxbuild_images-v1.tgz").rename(tmp_path / "elsewhere.tgz")
    for n in OX_IMAGES[:-1]:
        (images / f"{n}.jpg").write_bytes(_jpeg_bytes())
    with pytest.raises(DatasetError, match=r"extracted/christ_church_000001\.jpg: cannot decode"):
        prepare_dataset("oxford5k", src, tmp_path / "oxford5k", {})
    assert not (tmp_path / "oxford5k").exists()
    _no_leftovers(tmp_path)


PA_QUERIES = {
    "defense_1": {"query": ("paris_defense_000001", (1, 1, 20, 20)),
                  "good": ["paris_defense_000002"], "ok": ["paris_eiffel_000003"], "junk": []},
}


def _paris_source(tmp_path: Path) -> Path:
    src = tmp_path / "paris_src"
    _tgz(src / "paris_1-v1.tgz", {"paris/defense/paris_defense_000001.jpg": _jpeg_bytes(),
                                  "paris/defense/paris_defense_000002.jpg": _jpeg_bytes(),
                                  "paris/louvre/paris_louvre_000136.jpg": b"\xff\xd8 broken"})
    _tgz(src / "paris_2-v1.tgz", {"paris/eiffel/paris_eiffel_000003.jpg": _jpeg_bytes()})
    _tgz(src / "paris_120310.tgz", _write_gt(None, PA_QUERIES))
    return src


def test_paris6k_drops_corrupt_and_flattens(tmp_path):
    src = _paris_source(tmp_path)
    out = tmp_path / "paris6k"
    gnd = prepare_dataset("paris6k", src, out, {})
    names = ["paris_defense_000001.jpg", "paris_defense_000002.jpg", "paris_eiffel_000003.jpg"]
    assert gnd["imlist"] == names and gnd["qimlist"] == ["paris_defense_000001.jpg"]
    assert gnd["gnd"][0]["ok"] == [1, 2]
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    with pytest.raises(DatasetError, match=r"(?s)1 undecodable images.*paris_1-v1\.tgz \(member paris/louvre/paris_louvre_000136\.jpg\): cannot decode"):
        prepare_dataset("paris6k", src, tmp_path / "p2", {"max_corrupt": 0})
    # With the standard image list, the unlisted corrupt image is simply not taken...
    lst = tmp_path / "imlist.txt"
    lst.write_text("\n".join(n[:-4] for n in names[::-1]) + "\n")
    gnd = prepare_dataset("paris6k", src, out, {"imlist": str(lst)})
    assert gnd["imlist"] == names[::-1]
    # ...but a listed one must decode.
    lst.write_text("\n".join(n[:-4] for n in names) + "\nparis_louvre_000136\n")
    with pytest.raises(DatasetError, match=r"paris_1-v1\.tgz \(member paris/louvre/paris_louvre_000136\.jpg\): cannot decode"):
        prepare_dataset("paris6k", src, tmp_path / "p3", {"imlist": str(lst)})
    _no_leftovers(tmp_path)


def test_roxford5k_from_pickle(tmp_path):
    src = tmp_path / "rox"
    _tgz(src / "oxbuild_images-v1.tgz", {f"{n}.jpg": _jpeg_bytes() for n in ["a_1", "a_2", "q_1", "extra_1"]})
    cfg = {"imlist": ["a_2", "a_1"], "qimlist": ["q_1"],
           "gnd": [{"bbx": np.array([1.0, 2.0, 30.0, 25.0]), "easy": np.array([1]), "hard": [0], "junk": []}]}
    with open(src / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump(cfg, f, protocol=2)
    out = tmp_path / "roxford5k"
    gnd = prepare_dataset("roxford5k", src, out, {})
    assert gnd["imlist"] == ["a_2.jpg", "a_1.jpg"] and gnd["qimlist"] == ["q_1.jpg"]
    assert gnd["gnd"][0] == {"easy": [1], "hard": [0], "junk": [], "bbx": [1.0, 2.0, 30.0, 25.0]}
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a_1.jpg", "a_2.jpg", "q_1.jpg"]
    (src / "gnd_roxford5k.pkl").unlink()
    with pytest.raises(DatasetError, match=r"rox: ground truth 'gnd_roxford5k\.pkl' of 'roxford5k' not found"):
        prepare_dataset("roxford5k", src, tmp_path / "r2", {})


# --------------------------------------------------------------------------- Holidays

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _holidays_source(tmp_path: Path) -> tuple[Path, bytes]:
    src = tmp_path / "holidays_src"
    small = _jpeg_bytes((300, 200))
    _tgz(src / "jpg1.tar.gz", {
        "jpg/100000.jpg": _jpeg_bytes((2000, 1000)),
        # Stored 1600x1200 with a red top-left corner; EXIF 6: shown turned 90 degrees clockwise.
        "jpg/100001.jpg": _jpeg_bytes((1600, 1200), BLUE, orientation=6, marker=((0, 0, 400, 300), RED)),
    })
    _tgz(src / "jpg2.tar.gz", {
        "jpg/100100.jpg": small,
        # Red left half; the manual list turns it 90 degrees clockwise: red top half.
        "jpg/100101.jpg": _jpeg_bytes((400, 200), BLUE, marker=((0, 0, 200, 200), RED)),
    })
    return src, small


def _is_red(pixel) -> bool:
    return pixel[0] > 200 and pixel[2] < 60


def test_holidays_orientation_resize_and_rotate(tmp_path):
    src, small = _holidays_source(tmp_path)
    out = tmp_path / "holidays"
    gnd = prepare_dataset("holidays", src, out, {"max_side": 800, "rotate": {"100101.jpg": 90}})
    assert gnd["imlist"] == ["100000.jpg", "100001.jpg", "100100.jpg", "100101.jpg"]
    assert gnd["qimlist"] == ["100000.jpg", "100100.jpg"]
    assert gnd["gnd"] == [{"ok": [1], "junk": [0], "bbx": None}, {"ok": [3], "junk": [2], "bbx": None}]
    images = out / "images"
    with Image.open(images / "100000.jpg") as img:
        assert img.size == (800, 400)
    with Image.open(images / "100001.jpg") as img:
        assert img.size == (600, 800)  # upright, then shrunk
        assert img.getexif().get(0x0112, 1) == 1
        rgb = img.convert("RGB")
        assert _is_red(rgb.getpixel((580, 20))) and not _is_red(rgb.getpixel((20, 20)))
    with Image.open(images / "100101.jpg") as img:
        rgb = img.convert("RGB")
        assert img.size == (200, 400)
        assert _is_red(rgb.getpixel((100, 20))) and not _is_red(rgb.getpixel((100, 380)))
    assert (images / "100100.jpg").read_bytes() == small  # nothing to fix: kept as it is
    assert load_gnd(out, check_files=True) == gnd

    # By default the size is kept (features.size.holidays resizes to 1024); a rotation list file.
    rot = tmp_path / "rotate.txt"
    rot.write_text("# name degrees\n100101 270\n")
    prepare_dataset("holidays", src, out, {"rotate": str(rot)})
    with Image.open(images / "100000.jpg") as img:
        assert img.size == (2000, 1000)
    with Image.open(images / "100101.jpg") as img:
        assert img.size == (200, 400) and _is_red(img.convert("RGB").getpixel((100, 380)))
    _no_leftovers(tmp_path)


def test_holidays_bad_rotate_list(tmp_path):
    src, _ = _holidays_source(tmp_path)
    with pytest.raises(DatasetError, match=r"rotate.*'123456\.jpg'.*not among the 4 Holidays images"):
        prepare_dataset("holidays", src, tmp_path / "h", {"rotate": {"123456.jpg": 90}})
    with pytest.raises(DatasetError, match=r"rotation of '100000\.jpg' must be 90, 180 or 270"):
        prepare_dataset("holidays", src, tmp_path / "h", {"rotate": {"100000.jpg": 45}})
    assert not (tmp_path / "h").exists()


# --------------------------------------------------------------------------- custom: symbolic links

def test_custom_relative_link_inside_the_folder_is_resolved(custom_folder, tmp_path):
    (custom_folder / "extra").mkdir()
    Image.new("RGB", (30, 20), (1, 2, 3)).save(custom_folder / "extra" / "x.png")
    (custom_folder / "images" / "in.png").symlink_to("../extra/x.png")  # valid, inside the folder
    _edit_gnd(custom_folder, lambda g: g["imlist"].append("in.png"))
    for link in ("hardlink", "copy"):
        out = tmp_path / f"out-{link}"
        prepare_dataset("custom", custom_folder, out, {"link": link})
        placed = out / "images" / "in.png"
        assert not placed.is_symlink() and placed.is_file()  # the file, not the (now dangling) link
        assert placed.read_bytes() == (custom_folder / "extra" / "x.png").read_bytes()
        assert load_gnd(out, check_files=True)["imlist"][-1] == "in.png"
    assert (custom_folder / "images" / "in.png").is_symlink()  # the source is left as it was


def test_custom_link_outside_the_folder_is_refused(custom_folder, tmp_path):
    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (12, 12), (9, 9, 9)).save(secret)
    (custom_folder / "images" / "out.png").symlink_to(secret)
    _edit_gnd(custom_folder, lambda g: g["imlist"].append("out.png"))
    out = tmp_path / "data" / "custom"
    with pytest.raises(DatasetError, match=rf"my_dataset/images/out\.png: resolves through a symbolic link to {secret}, outside "
                                           r"the dataset folder .*data\.custom\.allow_outside_links: true"):
        prepare_dataset("custom", custom_folder, out, {})
    assert not out.exists()
    _no_leftovers(out.parent)
    with pytest.raises(DatasetError, match="allow_outside_links .* must be true or false"):
        prepare_dataset("custom", custom_folder, out, {"allow_outside_links": "yes"})
    prepare_dataset("custom", custom_folder, out, {"allow_outside_links": True})
    placed = out / "images" / "out.png"
    assert not placed.is_symlink() and placed.read_bytes() == secret.read_bytes()


def test_custom_folder_of_images_linked_outside_is_refused(custom_folder, tmp_path):
    # images/ itself a link out of the folder: every file resolves outside.
    moved = tmp_path / "moved-images"
    (custom_folder / "images").rename(moved)
    (custom_folder / "images").symlink_to(moved)
    with pytest.raises(DatasetError, match=r"images/a\.jpg: resolves through a symbolic link to .*moved-images/a\.jpg, outside"):
        prepare_dataset("custom", custom_folder, tmp_path / "out", {})
