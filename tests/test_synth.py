"""The embedded ``synth`` dataset: layout, ground truth, determinism, atomicity.

Runs at a reduced size (6 objects, 30 database images, 256x192) so the whole
file stays fast.
"""
import hashlib
import json
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from rdfa.io import synth
from rdfa.io.gnd import load_gnd
from rdfa.io.synth import CATALOGUE, load_photo, make_synth, plan_synth, render_scene

SMALL = dict(seed=0, n_objects=6, n_db=30, n_distractors=6, width=256, height=192)
W, H = SMALL["width"], SMALL["height"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "synth"
    gnd = make_synth(out, **SMALL)
    return out, gnd


@pytest.fixture(scope="module")
def plan():
    return plan_synth(**SMALL)


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _ncc(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-9))


def _rectify(img, quad, obj):
    """The catalogue patch of ``obj`` and the image warped back onto it (grey, borders cut)."""
    x1, y1, x2, y2 = CATALOGUE[obj].box
    pw, ph = x2 - x1, y2 - y1
    patch = load_photo(CATALOGUE[obj].source)[y1:y2, x1:x2].astype(np.float32).mean(2)
    src = np.float32([[-.5, -.5], [pw - .5, -.5], [pw - .5, ph - .5], [-.5, ph - .5]])
    m = cv2.getPerspectiveTransform(src, (quad - 0.5).astype(np.float32))
    back = cv2.warpPerspective(img.astype(np.float32).mean(2), m, (pw, ph),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    mx, my = pw // 8, ph // 8
    blur = lambda x: cv2.GaussianBlur(x[my:ph - my, mx:pw - mx], (0, 0), 2)  # noqa: E731
    return blur(patch), blur(back)


def test_layout_and_gnd(small):
    out, gnd = small
    assert sorted(p.name for p in out.iterdir()) == ["gnd.json", "images"]
    assert json.loads((out / "gnd.json").read_text()) == gnd
    assert load_gnd(out, check_files=True) == gnd
    assert len(gnd["imlist"]) == SMALL["n_db"] and len(gnd["qimlist"]) == SMALL["n_objects"]
    assert all(re.fullmatch(r"db_\d{4}\.jpg", n) for n in gnd["imlist"])
    assert all(re.fullmatch(r"q_\d{2}\.jpg", n) for n in gnd["qimlist"])
    files = sorted(p.name for p in (out / "images").iterdir())
    assert files == sorted(gnd["imlist"] + gnd["qimlist"])
    for name in (gnd["imlist"][0], gnd["qimlist"][0]):
        with Image.open(out / "images" / name) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (W, H))


def test_written_gnd_matches_plan(small, plan):
    _, gnd = small
    assert plan.gnd() == gnd
    assert len(set(plan.objects)) == SMALL["n_objects"]
    assert all(0 <= o < len(CATALOGUE) for o in plan.objects)


@pytest.mark.slow
def test_deterministic(small, tmp_path):
    out, gnd = small
    again = make_synth(tmp_path / "again", **SMALL)
    assert again == gnd
    assert _digests(tmp_path / "again") == _digests(out)
    other = make_synth(tmp_path / "other", **{**SMALL, "seed": 1})
    d_other = _digests(tmp_path / "other")
    assert other != gnd
    assert all(d_other[k] != v for k, v in _digests(out).items() if k.startswith("images/"))


def test_positives_and_junk(small):
    _, gnd = small
    for entry in gnd["gnd"]:
        assert len(entry["ok"]) >= 2
        assert len(set(entry["ok"])) == len(entry["ok"])
        assert not set(entry["ok"]) & set(entry["junk"])


def test_query_bbx_covers_object(small, plan):
    _, gnd = small
    img_area = W * H
    for q, (entry, scene) in enumerate(zip(gnd["gnd"], plan.queries)):
        x1, y1, x2, y2 = entry["bbx"]
        assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
        inst = scene.instances[0]
        box_area = (x2 - x1) * (y2 - y1)
        # The box holds the whole object, and is not much larger than it.
        assert inst.area_frac * img_area <= box_area <= 3 * inst.area_frac * img_area
        _, (alpha,) = render_scene(plan, scene)
        ys, xs = np.nonzero(alpha > 0.01)
        assert xs.min() >= x1 and xs.max() < x2 and ys.min() >= y1 and ys.max() < y2
        assert alpha.sum() == pytest.approx(inst.area_frac * img_area, rel=0.03)
        assert 0.05 <= alpha.sum() / img_area <= 0.5


def test_object_area_fractions_and_scenes(plan):
    img_area = W * H
    n_multi = 0
    for scene in plan.db:
        ok = [i for i in scene.instances if i.role == "ok"]
        n_multi += len(ok) >= 2
        assert len(ok) <= 3
        for inst in ok:
            assert 0.05 <= inst.area_frac <= 0.5
            assert inst.visible >= 0.1
        for inst in scene.instances:
            if inst.role == "junk":
                assert inst.area_frac < 0.05
    n_scenes = SMALL["n_db"] - SMALL["n_distractors"]
    assert 0.2 * n_scenes <= n_multi <= 0.5 * n_scenes
    # The planned areas are what the renderer paints (occlusion included).
    for scene in plan.db[:8]:
        _, alphas = render_scene(plan, scene)
        for inst, alpha in zip(scene.instances, alphas):
            assert alpha.sum() / img_area == pytest.approx(inst.area_frac, rel=0.05)


def test_images_show_the_planned_objects(small, plan):
    """Warping the written JPEG back along the planned outline gives the object patch."""
    out, _ = small
    checked = 0
    for scene in plan.queries + plan.db:
        img = np.asarray(Image.open(out / "images" / scene.name).convert("RGB"))
        for inst in scene.instances:
            if inst.role != "ok" or inst.visible < 0.95:
                continue
            obj = plan.objects[inst.query]
            assert _ncc(*_rectify(img, inst.quad, obj)) > 0.75, (scene.name, CATALOGUE[obj].label)
            # ... and not some other object's patch.
            other = plan.objects[(inst.query + 1) % len(plan.objects)]
            a, b = _rectify(img, inst.quad, other)
            assert _ncc(cv2.resize(a, (64, 64)), cv2.resize(b, (64, 64))) < 0.75
            checked += 1
    assert checked >= 10


def test_distractors_hold_no_query_object(small, plan):
    _, gnd = small
    distractors = {s.index for s in plan.db if s.kind == "distractor"}
    assert len(distractors) == SMALL["n_distractors"]
    assert all(not s.instances for s in plan.db if s.index in distractors)
    for entry in gnd["gnd"]:
        assert not distractors & (set(entry["ok"]) | set(entry["junk"]))
    # Every other database scene holds at least one query object.
    relevant = set().union(*(set(e["ok"]) for e in gnd["gnd"]))
    assert relevant == set(range(SMALL["n_db"])) - distractors


@pytest.mark.parametrize("bad, name", [
    (dict(n_objects=1), "n_objects"),
    (dict(n_objects=len(CATALOGUE) + 1, n_db=400), "n_objects"),
    (dict(n_db=5, n_distractors=6), "n_db"),
    (dict(n_db=12, n_distractors=6), "n_db"),
    (dict(n_distractors=-1), "n_distractors"),
    (dict(width=10), "width"),
    (dict(height=0), "height"),
    (dict(quality=0), "quality"),
    (dict(quality=101), "quality"),
    (dict(seed=-3), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(foo=1), r"unknown option\(s\) data\.synth\.foo \(known: seed, n_objects"),  # a TypeError before
])
def test_bad_parameters(tmp_path, bad, name):
    with pytest.raises(ValueError, match=name):
        make_synth(tmp_path / "x", **{**SMALL, **bad})
    assert not (tmp_path / "x").exists()


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    save = synth._save_jpeg

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt("injected")
        return save(*args, **kwargs)

    monkeypatch.setattr(synth, "_save_jpeg", failing)
    with pytest.raises(KeyboardInterrupt):
        make_synth(tmp_path / "out", **SMALL)
    assert calls["n"] == 10
    assert list(tmp_path.iterdir()) == []


def test_interrupted_run_keeps_previous_output(small, tmp_path, monkeypatch):
    out = tmp_path / "out"
    make_synth(out, **SMALL)
    before = _digests(out)

    def failing(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_save_jpeg", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        make_synth(out, **{**SMALL, "seed": 5})
    assert _digests(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
