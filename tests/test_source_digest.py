"""sources.<dataset> tracked by content: the source stage's digest file changes exactly when what the
folder holds changes, and `dvc repro` then runs the data stage again without being forced."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from rdfa.io import sourcedigest
from rdfa.io.gnd import DatasetError
from rdfa.io.sourcedigest import digest_path, write_digest

REPO = Path(__file__).resolve().parents[1]


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 32, 3), np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path) -> Path:
    """A custom dataset folder in the canonical layout: three database images and a query."""
    root = tmp_path / "my_dataset"
    for i, name in enumerate(["a.png", "b.png", "sub/c.png", "q.png"]):
        _image(root / "images" / name, i)
    gnd = {"imlist": ["a.png", "b.png", "sub/c.png"], "qimlist": ["q.png"], "gnd": [{"ok": [0, 2], "junk": [1]}]}
    (root / "gnd.json").write_text(json.dumps(gnd))
    return root


def _expected(root: Path) -> str:
    """The digest computed independently: sha256 over (name, size, content sha256) lines in name order."""
    total = hashlib.sha256()
    for path in sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix()):
        data = path.read_bytes()
        line = json.dumps([path.relative_to(root).as_posix(), len(data), hashlib.sha256(data).hexdigest()])
        total.update(line.encode() + b"\n")
    return total.hexdigest()


def test_digest_follows_the_content(folder, tmp_path, monkeypatch):
    data = tmp_path / "data"
    assert write_digest("custom", str(folder), data)
    out = digest_path(data, "custom")
    first = json.loads(out.read_text())
    assert first == {"dataset": "custom", "source": str(folder), "kind": "folder", "files": 5,
                     "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
                     "sha256": _expected(folder)}
    stamp = out.stat().st_mtime_ns

    # Unchanged: no file is read again (the stat cache), and the digest file is left as it was.
    reads = []
    real = sourcedigest.sha256_file
    monkeypatch.setattr(sourcedigest, "sha256_file", lambda p: reads.append(Path(p).name) or real(p))
    assert not write_digest("custom", str(folder), data)
    assert reads == [] and out.stat().st_mtime_ns == stamp

    # Touched without a change: read again, same digest.
    os.utime(folder / "images" / "a.png", ns=(1, 1))
    assert not write_digest("custom", str(folder), data)
    assert reads == ["a.png"] and json.loads(out.read_text()) == first

    # One image replaced in place (same name, new bytes): only it is read, and the digest changes.
    _image(folder / "images" / "b.png", 99)
    assert write_digest("custom", str(folder), data)
    assert reads == ["a.png", "b.png"]
    assert json.loads(out.read_text())["sha256"] == _expected(folder) != first["sha256"]

    # A file added, or one removed, changes it too; hidden folders do not count.
    _image(folder / ".thumbnails" / "x.png", 5)
    assert not write_digest("custom", str(folder), data)
    (folder / "images" / "sub" / "c.png").unlink()
    assert write_digest("custom", str(folder), data)
    assert json.loads(out.read_text())["files"] == 4


def test_settings_are_their_own_digest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert write_digest("synth", "generated", Path("data"))
    assert json.loads(Path("data/synth.source.json").read_text()) == {"dataset": "synth", "source": "generated"}
    assert not write_digest("synth", "generated", Path("data"))
    assert write_digest("oxford5k", "download", Path("data"))
    with pytest.raises(DatasetError, match=r"nowhere: source of dataset 'custom' \(sources\.custom\) not found"):
        write_digest("custom", "nowhere", Path("data"))


def test_a_local_archive_is_its_own_digest(tmp_path):
    arc = tmp_path / "custom.tar"
    arc.write_bytes(b"x" * 100)
    write_digest("custom", str(arc), tmp_path / "data")
    digest = json.loads(digest_path(tmp_path / "data", "custom").read_text())
    assert digest["kind"] == "file" and digest["files"] == 1 and digest["bytes"] == 100


def _stages(names: tuple[str, ...]) -> dict:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {"stages": {name: stages[name] for name in names}}


def test_dvc_yaml_wiring():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    source = stages["source"]["do"]
    assert source["always_changed"] is True and source["outs"] == ["data/${item}.source.json"]
    assert "data/${item}.source.json" in stages["data"]["do"]["deps"]


def _dvc(root: Path, *args: str) -> str:
    # The stages' `python` is this one (the virtual environment's), and the copy's rdfa wins.
    env = dict(os.environ, PYTHONPATH=str(root), DVC_NO_ANALYTICS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_dvc_repro_sees_a_change_inside_the_folder(folder, tmp_path):
    """The issue's case: an image of sources.custom replaced in place (same name) was 'up to date'."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(REPO / "rdfa", root / "rdfa", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "dvc.yaml").write_text(yaml.safe_dump(_stages(("source", "data")), sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump(
        {"datasets": ["custom"], "sources": {"custom": "../my_dataset"}, "data": {"custom": {}}}))
    _dvc(root, "init", "--no-scm", "-q")
    out = _dvc(root, "repro")
    assert "Running stage 'data@custom'" in out
    out = _dvc(root, "repro")  # nothing changed: the source stage runs, the data stage does not
    assert "Running stage 'source@custom'" in out and "Running stage 'data@custom'" not in out
    # A new file under the same name (as an editor or an export writes it: the data stage hard-links
    # the folder's files into data/, so writing through the old inode would change data/ as well).
    _image(folder / "new.png", 42)
    os.replace(folder / "new.png", folder / "images" / "a.png")
    out = _dvc(root, "repro")
    assert "Running stage 'data@custom'" in out
    assert (root / "data" / "custom" / "images" / "a.png").read_bytes() == (folder / "images" / "a.png").read_bytes()
