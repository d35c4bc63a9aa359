"""Malformed gnd.json / ranks.json: an error naming the file and the entry, never a traceback."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from rdfa.io.gnd import DatasetError, load_gnd

GOOD = {"imlist": ["a.jpg", "b.jpg"], "qimlist": ["q.jpg"], "gnd": [{"ok": [0], "junk": [1], "bbx": [0, 0, 5, 5]}]}


def _gnd_text(**changes) -> str:
    gnd = json.loads(json.dumps(GOOD))
    gnd.update(changes)
    return json.dumps(gnd)


# name -> (gnd.json text, what the message must say after the file name)
BAD_GND = {
    "ok_not_a_list": (_gnd_text(gnd=[{"ok": 3, "junk": []}]),
                      r"gnd\[0\] \(q\.jpg\) 'ok' must be a list of indices into 'imlist', got int 3"),
    "junk_null": (_gnd_text(gnd=[{"ok": [0], "junk": None}]), r"gnd\[0\] \(q\.jpg\) 'junk' must be a list"),
    # json.dumps writes Infinity / NaN, and json.loads reads them back
    "box_infinity": (_gnd_text(gnd=[{"ok": [0], "bbx": [0, 0, float("inf"), 5]}]),
                     r"gnd\[0\] \(q\.jpg\) 'bbx' \[0, 0, inf, 5\] must hold four finite numbers"),
    "box_nan": (_gnd_text(gnd=[{"ok": [0], "bbx": [float("nan"), 0, 4, 5]}]),
                r"gnd\[0\] \(q\.jpg\) 'bbx' \[nan, 0, 4, 5\] must hold four finite numbers"),
    "box_inverted": (_gnd_text(gnd=[{"ok": [0], "bbx": [5, 0, 4, 5]}]), r"gnd\[0\] \(q\.jpg\) 'bbx' .* is empty"),
    "box_three_numbers": (_gnd_text(gnd=[{"ok": [0], "bbx": [0, 0, 4]}]), r"gnd\[0\] \(q\.jpg\) 'bbx' \[0, 0, 4\] must be \[x1, y1, x2, y2\]"),
    "number": ("42", r"expected an object with 'imlist', 'qimlist' and 'gnd', got int 42"),
    "list": ("[1, 2]", r"expected an object with 'imlist', 'qimlist' and 'gnd', got list"),
    "empty_qimlist": (_gnd_text(qimlist=[], gnd=[]), r"'qimlist' is empty: a dataset that is evaluated needs"),
    "dot_slash_duplicate": (_gnd_text(imlist=["./x.jpg", "b.jpg", "x.jpg"]),
                            r"'imlist' names an image twice: '\./x\.jpg' and 'x\.jpg' are the same file "
                            r"\('imlist'\[0\] and 'imlist'\[2\]\)"),
    "name_not_a_string": (_gnd_text(imlist=["a.jpg", 7]), r"'imlist'\[1\] must be an image file name, got 7"),
    "imlist_not_a_list": (_gnd_text(imlist="a.jpg"), r"'imlist' must be a list, got str 'a\.jpg'"),
    # Accepted before: the evaluation then took the image as junk (mAP 1.0 -> 0.833 on a 12-image folder).
    "ok_and_junk_overlap": (_gnd_text(gnd=[{"ok": [0, 1], "junk": [1]}]),
                            r"gnd\[0\] \(q\.jpg\) lists database index 1 in both 'ok' and 'junk'"),
    "hard_and_junk_overlap": (_gnd_text(gnd=[{"easy": [0], "hard": [1], "junk": [1, 0]}]),
                              r"gnd\[0\] \(q\.jpg\) lists database index 0 in both 'easy' and 'junk'"),
}


@pytest.mark.parametrize("case", sorted(BAD_GND))
def test_bad_gnd_names_file_and_entry(tmp_path, case):
    text, message = BAD_GND[case]
    (tmp_path / "gnd.json").write_text(text)
    with pytest.raises(DatasetError) as err:
        load_gnd(tmp_path)
    assert re.search(re.escape(str(tmp_path / "gnd.json")) + ": " + message, str(err.value)), str(err.value)
    assert "PosixPath" not in str(err.value)


def test_good_gnd_and_queries_optional_when_asked(tmp_path):
    (tmp_path / "gnd.json").write_text(json.dumps(GOOD))
    assert load_gnd(tmp_path) == GOOD
    (tmp_path / "gnd.json").write_text(_gnd_text(qimlist=[], gnd=[]))
    assert load_gnd(tmp_path, need_queries=False)["qimlist"] == []


def _evaluate(repo_dir, *args) -> subprocess.CompletedProcess:
    """stages/evaluate.py run as DVC runs it."""
    return subprocess.run([sys.executable, str(repo_dir / "stages" / "evaluate.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


# Not "empty_qimlist": stage mode takes a training set (tests/test_evaluation.py).
@pytest.mark.parametrize("case", ["ok_not_a_list", "box_infinity", "number", "dot_slash_duplicate"])
def test_evaluate_stage_reports_bad_gnd(tmp_path, repo_dir, case):
    text, message = BAD_GND[case]
    gnd = tmp_path / "gnd.json"
    gnd.write_text(text)
    ranks = tmp_path / "ranks.json"
    ranks.write_text("[[0, 1]]")
    out = tmp_path / "m.json"
    proc = _evaluate(repo_dir, "--gnd", gnd, "--ranks", ranks, "--out", out)
    assert proc.returncode == 2
    assert re.search(re.escape(str(gnd)) + ": " + message, proc.stderr), proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_pipeline_stage_reports_bad_gnd_without_traceback(tmp_path, repo_dir):
    # Before, a gnd.json holding a number (or "ok": 3) escaped run_stage as a TypeError traceback.
    (tmp_path / "data" / "toy").mkdir(parents=True)
    for case in ("number", "ok_not_a_list"):
        text, message = BAD_GND[case]
        (tmp_path / "data" / "toy" / "gnd.json").write_text(text)
        proc = subprocess.run([sys.executable, str(repo_dir / "stages" / "points.py"), "--dataset", "toy",
                               "--params", str(repo_dir / "params.yaml"), "--root", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        assert re.search(r"data/toy/gnd\.json: " + message, proc.stderr), proc.stderr


def test_huge_rank_index_is_named(tmp_path, repo_dir):
    gnd = tmp_path / "gnd.json"
    gnd.write_text(json.dumps(GOOD))
    ranks = tmp_path / "ranks.json"
    ranks.write_text(f"[[0, {2 ** 70}]]")  # beyond int64: was a bare OverflowError
    out = tmp_path / "m.json"
    proc = _evaluate(repo_dir, "--gnd", gnd, "--ranks", ranks, "--out", out)
    assert proc.returncode == 2
    assert f"{ranks}: ranks[0] holds index {2 ** 70}, outside the 2 database images" in proc.stderr
    assert not out.exists()


def test_query_file_with_infinite_box(tmp_path):
    from rdfa.io.groundtruth import parse_query_line

    path = tmp_path / "x_1_query.txt"
    path.write_text("oxc1_a 0 0 inf 5\n")
    with pytest.raises(DatasetError, match=r"x_1_query\.txt: the box \[0\.0, 0\.0, inf, 5\.0\] must hold four finite"):
        parse_query_line(path)
