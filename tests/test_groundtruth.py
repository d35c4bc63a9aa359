"""Ground-truth parsers on the real official files, and the restricted unpickler."""
import os
import pickle
import shutil

import numpy as np
import pytest

from rdfa.io.gnd import DatasetError
from rdfa.io.groundtruth import (
    coil100_gnd,
    load_revisited_pickle,
    oxford_query_prefixes,
    parse_holidays,
    parse_oxford_style,
    read_name_list,
)


@pytest.fixture(scope="module")
def datasets(shared_dir):
    return shared_dir / "datasets"


# --------------------------------------------------------------------------- Oxford / Paris

@pytest.fixture(scope="module")
def oxford_gnd(datasets):
    return parse_oxford_style(datasets / "oxford5k" / "gt_files_170407",
                              read_name_list(datasets / "oxford5k" / "imlist.txt"))


def test_oxford_parse(oxford_gnd, datasets):
    gnd = oxford_gnd
    assert len(gnd["imlist"]) == 5063 and gnd["imlist"][0] == "ashmolean_000283.jpg"
    assert len(gnd["qimlist"]) == len(gnd["gnd"]) == 55
    assert gnd["qimlist"][0] == "all_souls_000013.jpg"
    assert gnd["gnd"][0]["bbx"] == [136.5, 34.1, 648.5, 955.7]
    assert all(e["bbx"] is not None and e["ok"] for e in gnd["gnd"])
    prefixes = oxford_query_prefixes(datasets / "oxford5k" / "gt_files_170407")
    assert prefixes[:3] == ["all_souls_1", "all_souls_2", "all_souls_3"] and prefixes == sorted(prefixes)


def test_oxford_duplicate_good_name_counts_once(oxford_gnd, datasets):
    gt = datasets / "oxford5k" / "gt_files_170407"
    names = (gt / "all_souls_1_good.txt").read_text().split() + (gt / "all_souls_1_ok.txt").read_text().split()
    assert len(set(names)) == len(names) - 1          # the official file repeats one name
    ok = oxford_gnd["gnd"][0]["ok"]
    assert len(ok) == len(set(ok)) == len(set(names))
    assert {oxford_gnd["imlist"][i] for i in ok} == {n + ".jpg" for n in names}


def test_paris_parse(datasets):
    gnd = parse_oxford_style(datasets / "paris6k" / "paris_120310",
                             read_name_list(datasets / "paris6k" / "imlist.txt"))
    assert len(gnd["imlist"]) == 6392 and len(gnd["qimlist"]) == 55
    assert gnd["qimlist"][0] == "paris_defense_000605.jpg"
    assert gnd["gnd"][0]["bbx"] == [130.0, 17.0, 843.0, 732.0]
    assert all(e["bbx"] is not None for e in gnd["gnd"])


@pytest.fixture()
def small_gt(tmp_path):
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "a_1_query.txt").write_text("oxc1_img_1 1 2 30.5 40\n")
    (gt / "a_1_good.txt").write_text("img_1\nimg_2\n")
    (gt / "a_1_ok.txt").write_text("img_3\n")
    (gt / "a_1_junk.txt").write_text("")
    return gt, ["img_1", "img_2", "img_3", "img_4"]


def test_small_gt_parses(small_gt):
    gt, names = small_gt
    gnd = parse_oxford_style(gt, names)
    assert gnd["qimlist"] == ["img_1.jpg"]
    assert gnd["gnd"] == [{"ok": [0, 1, 2], "junk": [], "bbx": [1.0, 2.0, 30.5, 40.0]}]


def test_missing_gt_file_is_named(small_gt):
    gt, names = small_gt
    (gt / "a_1_junk.txt").unlink()
    with pytest.raises(DatasetError, match="a_1_junk.txt: file not found"):
        parse_oxford_style(gt, names)


@pytest.mark.parametrize("line, message", [
    ("oxc1_img_1 1 2 3\n", "found 4 fields"),
    ("oxc1_img_1 1 2 x 4\n", "not four numbers"),
    ("oxc1_img_1 5 2 3 4\n", "is empty"),
    ("", "found 0 lines"),
])
def test_malformed_query_file_is_named(small_gt, line, message):
    gt, names = small_gt
    (gt / "a_1_query.txt").write_text(line)
    with pytest.raises(DatasetError, match=f"a_1_query.txt: .*{message}"):
        parse_oxford_style(gt, names)


def test_unknown_image_is_named(small_gt):
    gt, names = small_gt
    (gt / "a_1_ok.txt").write_text("img_99\n")
    with pytest.raises(DatasetError, match="a_1_ok.txt: image 'img_99' is not in the image list"):
        parse_oxford_style(gt, names)


def test_empty_gt_folder(tmp_path):
    with pytest.raises(DatasetError, match="no '<query>_query.txt' files"):
        parse_oxford_style(tmp_path, ["a"])


def test_read_name_list_errors(tmp_path):
    with pytest.raises(DatasetError, match="missing.txt: file not found"):
        read_name_list(tmp_path / "missing.txt")
    (tmp_path / "dup.txt").write_text("a\nb\n\na\n")
    with pytest.raises(DatasetError, match="dup.txt: image name 'a' is listed twice"):
        read_name_list(tmp_path / "dup.txt")


# --------------------------------------------------------------------------- Holidays, COIL-100

def test_holidays(datasets):
    names = read_name_list(datasets / "holidays" / "holidays_images.dat")
    gnd = parse_holidays(names)
    assert len(gnd["imlist"]) == 1491 and len(gnd["qimlist"]) == 500
    assert sum(len(e["ok"]) for e in gnd["gnd"]) == 991
    assert gnd["qimlist"][:2] == ["100000.jpg", "100100.jpg"]
    assert gnd["gnd"][0] == {"ok": [1, 2], "junk": [0], "bbx": None}
    for q, entry in enumerate(gnd["gnd"]):
        query = gnd["qimlist"][q]
        assert entry["junk"] == [gnd["imlist"].index(query)] and query.endswith("00.jpg")
        assert all(gnd["imlist"][i][:4] == query[:4] for i in entry["ok"])


def test_holidays_bad_name():
    with pytest.raises(DatasetError, match="list.dat: image name 'abc.jpg'"):
        parse_holidays(["100000.jpg", "abc.jpg"], source="list.dat")


def test_coil100_real_names(datasets):
    names = sorted(os.listdir(datasets / "coil100" / "images"))
    gnd = coil100_gnd(names)
    per_object = {}
    for name in names:
        per_object.setdefault(name.split("__")[0], []).append(name)
    # 4 query views per object, except where a view is missing from this copy
    expected_queries = sum(1 for n in names if int(n.split("__")[1][:-4]) in (0, 90, 180, 270))
    assert len(gnd["qimlist"]) == expected_queries == 399
    for q, entry in enumerate(gnd["gnd"][:8]):
        query = gnd["qimlist"][q]
        obj = query.split("__")[0]
        assert entry["junk"] == [gnd["imlist"].index(query)]
        assert sorted(gnd["imlist"][i] for i in entry["ok"]) == sorted(set(per_object[obj]) - {query})


def test_coil100_small():
    names = ["obj2__0.png", "obj1__5.png", "obj1__0.png", "obj1__90.png"]
    gnd = coil100_gnd(names)
    assert gnd["qimlist"] == ["obj1__0.png", "obj1__90.png", "obj2__0.png"]
    assert gnd["gnd"][0] == {"ok": [1, 3], "junk": [2], "bbx": None}
    assert gnd["gnd"][2] == {"ok": [], "junk": [0], "bbx": None}
    with pytest.raises(DatasetError, match="'obj1_0.png' is not of the form"):
        coil100_gnd(["obj1_0.png"])


# --------------------------------------------------------------------------- revisitop pickle

def _revisited_cfg():
    return {
        "imlist": ["im_a", "im_b", "im_c"],
        "qimlist": ["q_a"],
        "gnd": [{"easy": np.array([0], dtype=np.int64), "hard": np.array([2, 1]),
                 "junk": np.array([], dtype=np.int64),
                 "bbx": np.array([1.5, 2.0, 10.0, 20.0], dtype=np.float64)}],
        "extra": {1, 2},
    }


@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_load_revisited_pickle(tmp_path, protocol):
    path = tmp_path / "gnd_rtest.pkl"
    path.write_bytes(pickle.dumps(_revisited_cfg(), protocol=protocol))
    gnd = load_revisited_pickle(path)
    assert gnd == {"imlist": ["im_a.jpg", "im_b.jpg", "im_c.jpg"], "qimlist": ["q_a.jpg"],
                   "gnd": [{"easy": [0], "hard": [2, 1], "junk": [], "bbx": [1.5, 2.0, 10.0, 20.0]}]}
    assert all(type(i) is int for i in gnd["gnd"][0]["hard"])


def test_load_revisited_pickle_numpy1_names(tmp_path):
    # NumPy 1.x writes numpy.core.multiarray; protocol 2 spells globals as text.
    data = pickle.dumps(_revisited_cfg(), protocol=2)
    assert b"numpy._core.multiarray" in data
    path = tmp_path / "old.pkl"
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert load_revisited_pickle(path)["gnd"][0]["easy"] == [0]


class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    cfg = _revisited_cfg()
    cfg["gnd"][0]["bbx"] = _Evil(f"touch {marker}")
    path.write_bytes(pickle.dumps(cfg, protocol=4))
    assert shutil.which("touch")
    with pytest.raises(DatasetError, match=r"evil.pkl: unsafe or malformed pickle: refuses global '(posix|os|nt)\.system'"):
        load_revisited_pickle(path)
    assert not marker.exists()


def test_restricted_unpickler_refuses_other_builtins(tmp_path):
    path = tmp_path / "eval.pkl"
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(DatasetError, match="refuses global 'builtins.eval'"):
        load_revisited_pickle(path)


def test_revisited_pickle_layout_errors(tmp_path):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps({"imlist": ["a"], "qimlist": ["a"], "gnd": [{"easy": [0], "junk": []}]}))
    with pytest.raises(DatasetError, match=r"bad.pkl: gnd\[0\] has no 'hard' list"):
        load_revisited_pickle(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="bad.pkl"):
        load_revisited_pickle(path)


class _Reduce:
    """Pickles as ``func(*args)`` (then ``__setstate__(state)`` when given)."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _huge_requests():
    from numpy._core.multiarray import _reconstruct

    return {
        "reconstruct": _Reduce(_reconstruct, (np.ndarray, (2 ** 40,), b"b")),
        "ndarray": _Reduce(np.ndarray, ((2 ** 40,), "u1")),
        "setstate": _Reduce(_reconstruct, (np.ndarray, (0,), b"b"),
                            (1, (2 ** 37,), np.dtype(object), False, [1])),
        "bytearray": _Reduce(bytearray, (2 ** 40,)),
    }


@pytest.mark.parametrize("kind", ["reconstruct", "ndarray", "setstate", "bytearray"])
def test_restricted_unpickler_bounds_allocations(tmp_path, kind):
    # A few bytes of pickle asking for 2**40 bytes: refused by name before allocating
    # (MemoryError, or worse, swapping, before).
    cfg = _revisited_cfg()
    cfg["gnd"][0]["bbx"] = _huge_requests()[kind]
    path = tmp_path / "huge.pkl"
    path.write_bytes(pickle.dumps(cfg, protocol=4))
    assert path.stat().st_size < 2000
    with pytest.raises(DatasetError, match=r"huge\.pkl: unsafe or malformed pickle: .*would allocate "
                                           r"1099511627776 bytes, more than the 268435456 allowed"):
        load_revisited_pickle(path)
