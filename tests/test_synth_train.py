"""The training split ``synth_train``: independent of synth's test split, canonical layout, determinism.

Runs at a reduced size (12 training images, 256x192, next to a synth test
split of 6 objects and 30 database images) so the whole file stays fast.
"""
import hashlib
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from rdfa.io.gnd import DatasetError, load_gnd
from rdfa.io.synth import (
    CATALOGUE,
    TEST_DEFAULTS,
    TRAIN_OPTIONS,
    make_synth,
    make_synth_train,
    picked_objects,
    plan_synth,
    plan_synth_train,
)

REPO = Path(__file__).resolve().parents[1]
TEST = dict(seed=0, n_objects=6, n_db=30, n_distractors=6, width=256, height=192)
# Same seed as the test split on purpose: the two must still share nothing.
TRAIN = dict(seed=0, n_images=12, width=256, height=192, test={"seed": 0, "n_objects": 6})
W, H = TRAIN["width"], TRAIN["height"]


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "synth"
    return out, make_synth(out, **TEST)


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_train") / "synth_train"
    return out, make_synth_train(out, **TRAIN)


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _pixels(folder, names):
    return [np.asarray(Image.open(folder / "images" / n).convert("L"), np.float32) for n in names]


def _touches(obj, picked):
    """Whether the box of ``obj`` (a catalogue entry or a crop) overlaps a picked entry's box in its photo."""
    x1, y1, x2, y2 = obj.box
    return any(CATALOGUE[p].source == obj.source and x1 < CATALOGUE[p].box[2] and CATALOGUE[p].box[0] < x2
               and y1 < CATALOGUE[p].box[3] and CATALOGUE[p].box[1] < y2 for p in picked)


def test_layout_and_empty_queries(train):
    out, gnd = train
    assert sorted(p.name for p in out.iterdir()) == ["gnd.json", "images"]
    assert json.loads((out / "gnd.json").read_text()) == gnd
    assert load_gnd(out, check_files=True, need_queries=False) == gnd
    assert gnd["qimlist"] == [] and gnd["gnd"] == []
    assert len(gnd["imlist"]) == TRAIN["n_images"]
    assert all(re.fullmatch(r"train_\d{4}\.jpg", n) for n in gnd["imlist"])
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(gnd["imlist"])
    with Image.open(out / "images" / gnd["imlist"][0]) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (W, H))
    # A dataset that is evaluated needs queries: reading it as one is refused, not silently empty.
    with pytest.raises(DatasetError, match="qimlist"):
        load_gnd(out)


def test_shares_no_file_and_no_pixels_with_the_test_split(train, test_split):
    (out, gnd), (t_out, t_gnd) = train, test_split
    t_names = t_gnd["imlist"] + t_gnd["qimlist"]
    assert not set(gnd["imlist"]) & set(t_names)
    assert not set(_digests(out).values()) & set(_digests(t_out).values())
    ours, theirs = _pixels(out, gnd["imlist"]), _pixels(t_out, t_names)
    closest = min(float(np.abs(a - b).mean()) for a in ours for b in theirs)
    assert closest > 10, closest  # grey levels: no image is a copy of (or close to) a test image


@pytest.mark.parametrize("test", [TRAIN["test"], None])
def test_plan_never_places_a_picked_object(test):
    """The test split's query objects are out of every scene, as objects and as crops (checked on the plan)."""
    plan = plan_synth_train(**{**TRAIN, "test": test})
    t = {**TEST_DEFAULTS, **(test or {})}
    picked = plan_synth(seed=t["seed"], n_objects=t["n_objects"], n_db=3 * t["n_objects"], n_distractors=0,
                        width=W, height=H).objects
    assert plan.picked == picked
    spare = {CATALOGUE[i] for i in range(len(CATALOGUE)) if i not in picked}
    assert spare <= set(plan.objects)  # every spare entry is a training object ...
    assert len(plan.objects) == max(t["n_objects"], len(spare))  # ... and crops make up the rest
    assert not any(_touches(obj, picked) for obj in plan.objects)
    placed = [plan.object_of(inst.query) for scene in plan.db for inst in scene.instances]
    assert placed and not any(_touches(obj, picked) for obj in placed)
    if test is None:  # synth's defaults: 24 picked, 6 spare, 18 crops
        assert any(obj not in spare for obj in placed)


def test_picked_objects_depend_only_on_seed_and_n_objects():
    for n_db, n_distractors, size in ((60, 0, (256, 192)), (80, 20, (320, 320))):
        plan = plan_synth(seed=3, n_objects=8, n_db=n_db, n_distractors=n_distractors, width=size[0], height=size[1])
        assert plan.objects == picked_objects(3, 8)
    defaults = inspect.signature(plan_synth).parameters
    assert TEST_DEFAULTS == {key: defaults[key].default for key in TEST_DEFAULTS}


def test_scenes_resemble_the_test_database():
    """Same mix as synth's database: a sixth without objects, a third of the others with 2-3, 5-50% each."""
    plan = plan_synth_train(**{**TRAIN, "n_images": 48})
    empty = [s for s in plan.db if not s.instances]
    assert len(empty) == 8 and all(s.kind == "distractor" for s in empty)
    ok = [[i for i in s.instances if i.role == "ok"] for s in plan.db if s.instances]
    assert 0.2 * len(ok) <= sum(len(o) >= 2 for o in ok) <= 0.5 * len(ok)
    assert all(0.05 <= i.area_frac <= 0.5 for o in ok for i in o)


def test_deterministic(train, tmp_path):
    out, gnd = train
    assert make_synth_train(tmp_path / "again", **TRAIN) == gnd
    assert _digests(tmp_path / "again") == _digests(out)
    make_synth_train(tmp_path / "other", **{**TRAIN, "seed": 1})
    other = _digests(tmp_path / "other")
    assert all(other[k] != v for k, v in _digests(out).items() if k.startswith("images/"))


@pytest.mark.parametrize("bad, name", [
    (dict(n_images=0), "data.synth_train.n_images"),
    (dict(n_images=1.5), "data.synth_train.n_images"),
    (dict(seed=-1), "data.synth_train.seed"),
    (dict(width=10), "data.synth_train.width"),
    (dict(quality=0), "data.synth_train.quality"),
    (dict(n_objects=6), "data.synth_train.n_objects"),
    (dict(test=5), "data.synth_train.test"),
    (dict(test={"n_objects": 1}), "data.synth_train.test.n_objects"),
    (dict(test={"n_objects": len(CATALOGUE) + 1}), "data.synth_train.test.n_objects"),
    (dict(test={"seed": "0"}), "data.synth_train.test.seed"),
    (dict(test={"sed": 0}), "data.synth_train.test.sed"),
])
def test_bad_options_name_the_parameter(tmp_path, bad, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        make_synth_train(tmp_path / "x", **{**TRAIN, **bad})
    assert not (tmp_path / "x").exists()


def _stage(tmp_path, options, synth=None):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["synth_train"] = options
    if synth is not None:
        params["data"]["synth"] = synth
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(REPO / "stages" / "data.py"), "--dataset", "synth_train",
                           "--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)


def test_params_yaml_block_is_complete():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["sources"]["synth_train"] == "generated"
    assert set(params["data"]["synth_train"]) <= set(TRAIN_OPTIONS)
    assert "synth_train" not in params["datasets"]
    assert params["data"]["synth_train"]["test"] == {k: params["data"]["synth"][k] for k in TEST_DEFAULTS}


@pytest.mark.slow
def test_stage_writes_the_split_and_warns_on_another_test_split(tmp_path, train):
    out, gnd = train
    proc = _stage(tmp_path, TRAIN, synth={**TEST, "seed": 2})
    assert proc.returncode == 0, proc.stderr
    assert _digests(tmp_path / "data" / "synth_train") == _digests(out)
    assert "data.synth_train.test" in proc.stderr and "another test split" in proc.stderr


@pytest.mark.slow
def test_stage_refuses_an_unknown_option(tmp_path):
    proc = _stage(tmp_path, {**TRAIN, "n_imgs": 12})
    assert proc.returncode != 0
    assert "data.synth_train.n_imgs" in proc.stderr
    assert not (tmp_path / "data" / "synth_train").exists()
