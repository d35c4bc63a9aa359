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


def test_features_resume_from_partial_file_and_discard_a_stale_one(tmp_path):
    folder = tmp_path / "data" / "toy" / "images"
    folder.mkdir(parents=True)
    names = [f"im{i}.png" for i in range(4)]
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), np.uint8)).save(folder / name)
    gnd = {"imlist": names, "qimlist": names[:1], "gnd": [{"ok": [1], "junk": [0], "bbx": [0, 0, 50, 40]}]}
    (folder.parent / "gnd.json").write_text(json.dumps(gnd))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["features"]["min_side"] = 64
    proc = run_features(tmp_path, params)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "features" / "toy" / "features.h5"
    with h5py.File(out) as f:
        reference = {k: f[k]["fmap"][()] for k in ("db/im0.png", "db/im3.png", "query/im0.png")}
        assert f["query/im0.png/fmap"].shape[:2] == (2, 3)  # the 50x40 box, enlarged to 80x64: ceil(/32)

    # As if interrupted after three images: the partial file holds them, the output is absent.
    partial = out.with_name("features.h5.partial")
    out.rename(partial)
    with h5py.File(partial, "a") as f:
        del f["db/im3.png"]
        del f["query/im0.png"]
    proc = run_features(tmp_path, params)
    assert proc.returncode == 0, proc.stderr
    assert "resuming: 3 of 5 images already extracted" in proc.stderr
    assert out.exists() and not partial.exists()
    with h5py.File(out) as f:
        for key, value in reference.items():
            np.testing.assert_array_equal(f[key]["fmap"][()], value)

    # A partial file made with another configuration is not reused.
    out.rename(partial)
    params["features"]["min_side"] = 96
    proc = run_features(tmp_path, params)
    assert proc.returncode == 0, proc.stderr
    assert "discarding" in proc.stderr and "resuming" not in proc.stderr
    with h5py.File(out) as f:
        assert f["db/im0.png/fmap"].shape[:2] == (3, 5)  # 96x144 input
