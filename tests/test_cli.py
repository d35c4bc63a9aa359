"""`rdfa search` refuses what it cannot answer, with a message saying why (the searches themselves run in
tests/test_pipeline.py, on the outputs of a real `dvc repro`)."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def rdfa(*args, cwd, module=False):
    """The installed command (or ``python -m rdfa``), as a user runs it."""
    command = [sys.executable, "-m", "rdfa"] if module else [str(Path(sys.executable).parent / "rdfa")]
    return subprocess.run(command + list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def project(tmp_path):
    """A project folder whose pipeline has not run, and a photo."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, tmp_path / name)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)).save(photo)
    return tmp_path, photo


@pytest.mark.parametrize("module", [False, True], ids=["rdfa", "python -m rdfa"])
def test_both_commands_are_installed_and_explain_themselves(tmp_path, module):
    proc = rdfa("search", "--help", cwd=tmp_path, module=module)
    assert proc.returncode == 0, proc.stderr
    assert "--dataset" in proc.stdout and "--box X1 Y1 X2 Y2" in proc.stdout and "--show" in proc.stdout


def test_a_dataset_whose_pipeline_has_not_run_is_refused(project):
    root, photo = project
    proc = rdfa("search", "--dataset", "synth", str(photo), cwd=root)
    assert proc.returncode == 2
    assert "rdfa search: error: dataset 'synth': data/synth/gnd.json not found: the pipeline has not run" in proc.stderr
    assert "dvc repro" in proc.stderr and proc.stdout == ""


@pytest.mark.slow
def test_an_unreadable_image_is_refused_naming_it(project):
    root, photo = project
    bad = root / "notes.jpg"
    bad.write_text("not an image")
    proc = rdfa("search", "--dataset", "synth", str(photo), str(bad), cwd=root)
    assert proc.returncode == 2
    assert f"rdfa search: error: {bad}: cannot decode image" in proc.stderr
    proc = rdfa("search", "--dataset", "synth", str(root / "missing.jpg"), cwd=root)
    assert proc.returncode == 2 and "missing.jpg: image file not found" in proc.stderr


@pytest.mark.slow
def test_bad_arguments_are_refused(project, tmp_path_factory):
    root, photo = project
    proc = rdfa("search", "--dataset", "synth", str(photo), str(photo), "--box", "0", "0", "10", "10", cwd=root)
    assert proc.returncode == 2 and "--box describes one photo, but 2 were given" in proc.stderr
    proc = rdfa("search", "--dataset", "synth", str(photo), "--box", "10", "0", "5", "10", cwd=root)
    assert proc.returncode == 2 and "needs X2 > X1 and Y2 > Y1" in proc.stderr
    proc = rdfa("search", "--dataset", "synth", str(photo), "--top", "0", cwd=root)
    assert proc.returncode == 2 and "expected a positive integer" in proc.stderr
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    proc = rdfa("search", "--dataset", "synth", str(photo), cwd=elsewhere)
    assert proc.returncode == 2 and "no dvc.yaml here; run `rdfa search` in the project folder" in proc.stderr


def test_what_dvc_status_reported_is_said_in_one_line():
    from rdfa.io.index import describe_changes

    changes = {"regions@synth": [{"changed deps": {"params.yaml": {"regions": "modified"},
                                                   "stages/regions.py": "modified"}},
                                 {"changed outs": {"features/synth/regions.h5": "deleted"}}],
               "ranking@synth": ["always changed"]}
    assert describe_changes(changes) == (
        "regions@synth: changed deps (params.yaml: regions modified; stages/regions.py modified), "
        "changed outs (features/synth/regions.h5 deleted); ranking@synth: always changed")


@pytest.mark.slow
def test_an_infinite_box_is_refused_naming_the_option(project):
    root, photo = project
    proc = rdfa("search", "--dataset", "synth", str(photo), "--box", "0", "0", "inf", "inf", cwd=root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # an OverflowError before
    assert "rdfa search: error: --box 0 0 inf inf: X2, Y2 must be finite numbers" in proc.stderr
    proc = rdfa("search", "--dataset", "synth", str(photo), "--box", "nan", "0", "5", "5", cwd=root)
    assert proc.returncode == 2 and "--box nan 0 5 5: X1 must be finite numbers" in proc.stderr


def test_a_decompression_bomb_is_refused_naming_it(project):
    from test_images import bomb_png

    root, photo = project
    bomb = root / "bomb.png"
    bomb_png(bomb)  # 50,000 x 50,000, 1-bit: 2.5 Gpx once decoded
    proc = rdfa("search", "--dataset", "synth", str(photo), str(bomb), cwd=root)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # a DecompressionBombError before
    assert f"rdfa search: error: {bomb}: refused, its pixel count is over twice Pillow's limit" in proc.stderr


@pytest.mark.slow
def test_photos_are_decoded_one_at_a_time(tmp_path, monkeypatch):
    """Each photo is decoded when its turn comes, after the one before was searched and let go."""
    import gc
    import weakref

    from rdfa import cli
    from rdfa.io import images

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"p{i}.png")
        Image.fromarray(np.full((40, 50, 3), i, np.uint8)).save(paths[-1])
    decoded = []
    real = images.load_rgb
    monkeypatch.setattr(images, "load_rgb", lambda p: decoded.append(p) or real(p))
    cli.check_photos([str(p) for p in paths])
    assert decoded == []  # the headers only
    alive = []
    n = 0
    for _, image in cli.stream_photos([str(p) for p in paths]):  # (not enumerate: it keeps its last item)
        n += 1
        assert len(decoded) == n and int(image[0, 0, 0]) == n - 1
        alive.append(weakref.ref(image))
        del image
        gc.collect()
        assert sum(ref() is not None for ref in alive) == 0  # nothing holds the photos searched before
