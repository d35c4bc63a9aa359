"""Interrupted work never looks complete; an interrupted feature extraction resumes."""
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

from rdfa.io.atomic import atomic_path, write_json

REPO = Path(__file__).resolve().parents[1]


def test_failed_write_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_failed_folder_keeps_the_previous_one(tmp_path):
    target = tmp_path / "dataset"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target, directory=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_path(target, directory=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


def run_features(root: Path, params: dict):
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(REPO / "stages" / "features.py"), "--dataset", "toy",
                           "--params", str(root / "params.yaml"), "--root", str(root)],
                          capture_output=True, text=True, timeout=300)


def toy_params(min_side: int) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["features"]["size"]["toy"] = {"max_side": None, "min_side": min_side, "max_pixels": None}
    return params


def make_toy(root: Path, seed: int) -> dict:
    folder = root / "data" / "toy" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"im{i}.png" for i in range(4)]
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), np.uint8)).save(folder / name)
    # The same image twice as a query, with two different boxes: two entries.
    gnd = {"imlist": names, "qimlist": names[:1] * 2,
           "gnd": [{"ok": [1], "junk": [0], "bbx": [0, 0, 50, 40]}, {"ok": [2], "junk": [0], "bbx": [40, 20, 96, 64]}]}
    (folder.parent / "gnd.json").write_text(json.dumps(gnd))
    return gnd


def read_maps(path: Path) -> dict:
    with h5py.File(path) as f:
        keys = [f"db/im{i}.png" for i in range(4)] + ["query/0", "query/1", "full/0", "full/1"]
        return {k: f[k]["fmap"][()] for k in keys}


@pytest.mark.slow
def test_features_resume_keeps_only_entries_whose_image_box_and_size_still_match(tmp_path):
    make_toy(tmp_path, seed=0)
    params = toy_params(64)
    proc = run_features(tmp_path, params)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "features" / "toy" / "features.h5"
    reference = read_maps(out)
    assert reference["query/0"].shape[:2] == (2, 2)  # the 50x40 box at the image's own scale
    # the same image with two boxes gives two different maps; uncropped queries are the database image
    assert not np.array_equal(reference["query/0"][:, :1], reference["query/1"][:, :1])
    np.testing.assert_array_equal(reference["full/1"], reference["db/im0.png"])
    with h5py.File(out) as f:
        assert f.get("full/0", getlink=True).path == "/db/im0.png"  # stored once, as a link

    # As if interrupted: the partial file lacks two entries, the output is absent.
    partial = out.with_name("features.h5.partial")
    out.rename(partial)
    with h5py.File(partial, "a") as f:
        del f["db/im3.png"]
        del f["query/0"]
    proc = run_features(tmp_path, params)
    assert proc.returncode == 0, proc.stderr
    assert "resumed: 4 entries kept" in proc.stderr and "0 recomputed" in proc.stderr
    assert out.exists() and not partial.exists()
    for key, value in read_maps(out).items():
        if key in ("db/im3.png", "query/0"):
            # Recomputed in a batch of another composition: convolutions batched differently
            # round differently, within the runtime tolerance (a float16 step or two).
            np.testing.assert_allclose(value, reference[key], rtol=4e-3, atol=1e-3)
        else:  # kept as they were
            np.testing.assert_array_equal(value, reference[key])

    # Interrupted again, then the images change (another seed): nothing stale may be kept.
    out.rename(partial)
    make_toy(tmp_path, seed=1)
    proc = run_features(tmp_path, params)
    assert proc.returncode == 0, proc.stderr
    assert "6 recomputed" in proc.stderr
    clean = tmp_path / "clean"
    make_toy(clean, seed=1)
    assert run_features(clean, params).returncode == 0
    fresh = read_maps(clean / "features" / "toy" / "features.h5")
    for key, value in read_maps(out).items():
        np.testing.assert_array_equal(value, fresh[key])
        assert not np.array_equal(value, reference[key])

    # A changed size policy re-extracts every entry at the new size.
    out.rename(partial)
    proc = run_features(tmp_path, toy_params(96))
    assert proc.returncode == 0, proc.stderr
    assert "6 recomputed" in proc.stderr
    with h5py.File(out) as f:
        assert f["db/im0.png/fmap"].shape[:2] == (3, 5)  # 96x144 input
        assert tuple(f["query/0"].attrs["input_hw"]) == (60, 75)  # the box at scale 1.5

    # Another network configuration discards the partial file as a whole.
    out.rename(partial)
    params = toy_params(96)
    params["features"]["dtype"] = "float32"
    proc = run_features(tmp_path, params)
    assert proc.returncode == 0, proc.stderr
    assert "discarding" in proc.stderr and "resumed" not in proc.stderr


# --------------------------------------------------------------------------- leftovers of killed stages

_KILLED_WRITER = """
import os, signal, sys
from rdfa.io.atomic import atomic_path
with atomic_path(sys.argv[1], directory=sys.argv[2] == "dir") as tmp:
    if sys.argv[2] == "dir":
        (tmp / "half.jpg").write_bytes(b"half")
    else:
        tmp.write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)  # as a kill -9 (or a second Ctrl+C): no cleanup runs
"""


def _killed_write(target: Path, kind: str = "file") -> Path:
    """Leave the temporary of a writer of ``target`` killed mid-write; return it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    before = set(target.parent.iterdir())
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target), kind], timeout=60)
    assert proc.returncode == -9
    (left,) = set(target.parent.iterdir()) - before
    assert left.name.startswith(f".tmp-{target.name}-")
    return left


def _run(stage: str, root: Path, dataset: str = "toy", params: dict | None = None):
    params_path = root / "params.yaml"
    params_path.write_text(yaml.safe_dump(params or yaml.safe_load((REPO / "params.yaml").read_text())))
    return subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), "--dataset", dataset,
                           "--params", str(params_path), "--root", str(root)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_stage_removes_its_own_leftover_temporaries_only(tmp_path):
    work = tmp_path / "features" / "toy"
    stale = [_killed_write(work / "ranks.json"), _killed_write(work / "matches.h5")]
    keep = [work / ".tmp-regions.h5-abcd1234",   # another stage's temporary
            work / ".tmp-ranks.json-notes",      # not a name atomic_path makes
            work / "my.tmp-ranks.json-abcd1234",
            work / "ranks.json.bak"]
    for path in keep:
        path.write_text("the user's")
    proc = _run("ranking", tmp_path)  # then fails: there is no whitened.h5
    assert proc.returncode == 1 and "whitened.h5" in proc.stderr
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "the user's" for p in keep)
    assert f"removed {stale[0]}, left by an interrupted run" in proc.stderr


@pytest.mark.slow
def test_data_stage_removes_its_leftover_folders(tmp_path):
    data = tmp_path / "data"
    stale = [_killed_write(data / "custom", "dir")]
    work = data / ".tmp-custom-work-x1y2z3w4"  # the work folder of prepare_dataset
    (work / "1-archive.tgz").mkdir(parents=True)
    stale.append(work)
    other = _killed_write(data / "custom2", "dir")  # another dataset's: not this stage's
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sources"]["custom"] = str(tmp_path / "nowhere")
    proc = _run("data", tmp_path, "custom", params)
    assert proc.returncode == 1 and "nowhere: source of dataset 'custom' not found" in proc.stderr
    assert not any(p.exists() for p in stale)
    assert (other / "half.jpg").read_bytes() == b"half"


@pytest.mark.slow
def test_evaluate_removes_leftover_temporaries(tmp_path):
    out = tmp_path / "metrics" / "toy.json"
    stale = _killed_write(out)
    gnd = tmp_path / "gnd.json"
    gnd.write_text(json.dumps({"imlist": ["a.jpg"], "qimlist": ["a.jpg"], "gnd": [{"ok": [0]}]}))
    ranks = tmp_path / "ranks.json"
    ranks.write_text("[[0]]")
    results = tmp_path / "results" / "toy.json"
    stale_results = _killed_write(results)
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "evaluate.py"), "--gnd", str(gnd), "--ranks",
                           str(ranks), "--out", str(out), "--results", str(results)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"removed {stale}, left by an interrupted run" in proc.stderr
    assert not stale.exists() and sorted(p.name for p in out.parent.iterdir()) == ["toy.json"]
    assert not stale_results.exists() and sorted(p.name for p in results.parent.iterdir()) == ["toy.json"]
