"""Bad input to the stage scripts: a clear error naming the file or parameter, and no output."""
import io
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def run_stage(stage: str, root: Path, params: dict, dataset: str = "toy"):
    params_path = root / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), "--dataset", dataset,
                           "--params", str(params_path), "--root", str(root)],
                          capture_output=True, text=True, timeout=300)


def base_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["features"]["size"]["toy"] = {"max_side": None, "min_side": None, "max_pixels": 16777216}
    return params


def make_dataset(root: Path, gnd: dict, images: dict) -> Path:
    folder = root / "data" / "toy"
    (folder / "images").mkdir(parents=True)
    for name, content in images.items():
        if isinstance(content, bytes):
            (folder / "images" / name).write_bytes(content)
        else:
            Image.fromarray(content).save(folder / "images" / name)
    (folder / "gnd.json").write_text(json.dumps(gnd))
    return folder


def photo(seed: int, h: int = 96, w: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)


@pytest.mark.slow
def test_L_zero_is_refused_naming_the_parameter(tmp_path):
    params = base_params()
    params["regions"]["L"] = 0
    proc = run_stage("regions", tmp_path, params)
    assert proc.returncode != 0
    assert "'regions.L' must be an integer >= 1 (got 0)" in proc.stderr  # rdfa.settings' wording
    assert not (tmp_path / "features" / "toy" / "regions.h5").exists()


@pytest.mark.slow
def test_D_larger_than_training_descriptors_is_refused(tmp_path):
    work = tmp_path / "features" / "toy"
    work.mkdir(parents=True)
    with h5py.File(work / "descriptors.h5", "w") as f:
        f["db/desc"] = np.random.default_rng(0).normal(size=(30, 64)).astype(np.float32)
        f["db/offsets"] = np.arange(0, 31, 3)
        f["query/desc"] = np.random.default_rng(1).normal(size=(2, 64)).astype(np.float32)
        f["query/offsets"] = np.arange(3)
        f["query/all_regions"] = np.zeros(2, np.int8)
        f["full/desc"] = f["query/desc"][()]
        f["full/offsets"] = np.arange(3)
    params = base_params()
    params["whitening"]["D"] = 512
    proc = run_stage("whitening", tmp_path, params)
    assert proc.returncode != 0
    assert "whitening.D=512 is larger than the 29 principal axes that 30 training descriptors" in proc.stderr
    assert not (work / "whitened.h5").exists()
    # close to the limit it works, but says that whitening is poorly conditioned
    params["whitening"]["D"] = 20
    proc = run_stage("whitening", tmp_path, params)
    assert proc.returncode == 0, proc.stderr
    assert "D=20 learned on only 30 descriptors" in proc.stderr
    with h5py.File(work / "whitened.h5") as f:
        assert "D=20" in f.attrs["note"]


@pytest.mark.slow
def test_corrupt_image_stops_features_naming_it_and_writes_nothing(tmp_path):
    gnd = {"imlist": ["a.png", "b.jpg"], "qimlist": ["a.png"], "gnd": [{"ok": [1], "junk": [], "bbx": None}]}
    make_dataset(tmp_path, gnd, {"a.png": photo(0), "b.jpg": b"\xff\xd8\xff garbage"})
    proc = run_stage("features", tmp_path, base_params())
    assert proc.returncode != 0
    assert "b.jpg: cannot decode image" in proc.stderr
    assert not (tmp_path / "features" / "toy" / "features.h5").exists()


@pytest.mark.slow
def test_gnd_naming_a_missing_file_or_bad_index(tmp_path):
    gnd = {"imlist": ["a.png", "gone.png"], "qimlist": ["a.png"], "gnd": [{"ok": [1], "junk": [], "bbx": None}]}
    folder = make_dataset(tmp_path, gnd, {"a.png": photo(0)})
    proc = run_stage("features", tmp_path, base_params())
    assert proc.returncode != 0 and "gone.png" in proc.stderr and "gnd.json" in proc.stderr
    gnd = {"imlist": ["a.png"], "qimlist": ["a.png"], "gnd": [{"ok": [7], "junk": [], "bbx": None}]}
    (folder / "gnd.json").write_text(json.dumps(gnd))
    proc = run_stage("features", tmp_path, base_params())
    assert proc.returncode != 0 and "index 7, outside the 1 database images" in proc.stderr


@pytest.mark.slow
def test_tiny_image_without_upsampling_is_named(tmp_path):
    gnd = {"imlist": ["small.png"], "qimlist": ["small.png"], "gnd": [{"ok": [0], "junk": [], "bbx": None}]}
    make_dataset(tmp_path, gnd, {"small.png": photo(0, 16, 16)})
    params = base_params()
    proc = run_stage("features", tmp_path, params)
    assert proc.returncode != 0 and "small.png: image is 16x16" in proc.stderr
    params["features"]["size"]["toy"]["min_side"] = 64  # the size policy enlarges it instead
    proc = run_stage("features", tmp_path, params)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "features" / "toy" / "features.h5") as f:
        assert f["db/small.png/fmap"].shape == (2, 2, 1280)


@pytest.mark.slow
@pytest.mark.parametrize("key, value, message", [
    ("saliency.n_min", 0, "'saliency.n_min' must be an integer >= 1 (got 0)"),
    ("saliency.n_min", 5000, "must not exceed 'saliency.n_max'"),
])
def test_nonsensical_saliency_counts(tmp_path, key, value, message):
    params = base_params()
    group, name = key.split(".")
    params[group][name] = value
    proc = run_stage("points", tmp_path, params)
    assert proc.returncode != 0 and message in proc.stderr


@pytest.mark.parametrize("stage", ["ranking", "methods"])
def test_non_boolean_qe_include_query_is_refused(tmp_path, stage):
    # bool("no") is True: the string must be refused, not taken as "yes".
    params = base_params()
    params["ranking"]["qe_include_query"] = "no"
    proc = run_stage(stage, tmp_path, params)
    assert proc.returncode != 0
    assert "'ranking.qe_include_query' must be true or false (got 'no')" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_true_false_settings_refuse_strings_and_numbers():
    from rdfa.settings import ParamError, parse_settings

    assert parse_settings({"methods": {"full_query": False}}).methods.full_query is False
    assert parse_settings({}).methods.full_query is True
    for bad in ("no", "false", 0, 1, None):
        with pytest.raises(ParamError, match=r"'methods\.full_query' must be true or false"):
            parse_settings({"methods": {"full_query": bad}})


def test_L_beyond_what_can_be_afforded_is_refused_at_once(tmp_path):
    params = base_params()
    params["regions"]["L"] = 20
    proc = run_stage("regions", tmp_path, params)  # no input files needed: refused before reading any
    assert proc.returncode != 0
    assert "'regions.L'=20 asks for 2^L = 1048576 regions per image; the limit is L <= 8" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_device_is_named(tmp_path):
    gnd = {"imlist": ["a.png"], "qimlist": ["a.png"], "gnd": [{"ok": [0], "junk": [], "bbx": None}]}
    make_dataset(tmp_path, gnd, {"a.png": photo(0)})
    params = base_params()
    params["runtime"]["device"] = "tpu"
    proc = run_stage("features", tmp_path, params)
    assert proc.returncode != 0 and "'runtime.device' must be auto, cpu, cuda, cuda:N or mps (got 'tpu')" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_huge_image_is_refused_by_the_pixel_limit_naming_it(tmp_path):
    huge = np.zeros((4000, 5000, 3), np.uint8)  # 20 Mpx: passes the data stage, too big for the network
    buf = io.BytesIO()
    Image.fromarray(huge).save(buf, format="JPEG", quality=50)
    gnd = {"imlist": ["ok.png", "huge.jpg"], "qimlist": ["ok.png"], "gnd": [{"ok": [0], "junk": [], "bbx": None}]}
    make_dataset(tmp_path, gnd, {"ok.png": photo(1), "huge.jpg": buf.getvalue()})
    proc = run_stage("features", tmp_path, base_params())
    assert proc.returncode != 0
    assert "huge.jpg: a 5000x4000 image gives a 5000x4000 network input, more than the 16777216 pixels" in proc.stderr
    assert "max_side" in proc.stderr and not (tmp_path / "features" / "toy" / "features.h5").exists()


@pytest.mark.slow
def test_a_dataset_without_a_size_policy_is_named(tmp_path):
    gnd = {"imlist": ["a.png"], "qimlist": ["a.png"], "gnd": [{"ok": [0], "junk": [], "bbx": None}]}
    make_dataset(tmp_path, gnd, {"a.png": photo(0)})
    params = base_params()
    del params["features"]["size"]["toy"]
    proc = run_stage("features", tmp_path, params)
    assert proc.returncode != 0 and "no 'features.size.toy'" in proc.stderr


def test_runtime_executor_and_ray_address_are_checked_naming_the_key():
    import os

    from rdfa.settings import ParamError, parse_settings

    def runtime(group):
        return parse_settings({"runtime": group}).runtime

    assert runtime({}).executor_options() == {"executor": "local", "ray_address": None}
    assert runtime({"executor": "ray", "ray_address": "ray://head:10001"}).executor_options() == \
        {"executor": "ray", "ray_address": "ray://head:10001"}
    # runtime.workers 0: this machine's cores locally; on Ray, 0 (one actor per CPU of the cluster)
    assert runtime({}).worker_count() == (os.cpu_count() or 1)
    assert runtime({"executor": "ray"}).worker_count() == 0
    assert runtime({"executor": "ray", "workers": 3}).worker_count() == 3
    with pytest.raises(ParamError, match=r"'runtime\.executor' must be one of local, ray \(got 'dask'\)"):
        runtime({"executor": "dask"})
    for bad in ("", "two words", 6379):
        with pytest.raises(ParamError, match=r"'runtime\.ray_address' must be a Ray cluster address"):
            runtime({"executor": "ray", "ray_address": bad})


def test_unknown_synth_option_is_named(tmp_path):
    # `data.synth.foo: 1` was a TypeError traceback from make_synth().
    params = base_params()
    params["data"]["synth"]["foo"] = 1
    proc = run_stage("data", tmp_path, params, dataset="synth")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "unknown option(s) data.synth.foo (known: seed, n_objects" in proc.stderr
    assert not (tmp_path / "data" / "synth").exists()
