"""The Ray executor (``runtime.executor: ray``): ``worker_map`` on a local Ray, and the reduced synth's
per-image stages run through Ray giving the local executor's results.

One local Ray (2 CPUs) for the module; the stage scripts connect to it by its address.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # a local Ray cluster and the session's dvc repro of the reduced synth

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
pytest.importorskip("ray.data", reason="Ray Data is part of the extra: pip install -e '.[ray]'")

from test_pipeline import set_params  # noqa: E402

from rdfa.io.stage import JobError, worker_map  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray started for these tests (address "local": never a cluster RAY_ADDRESS may name); its address."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


class _Sleeper:
    """Per-actor state, as a stage's: set by the initializer, read by the jobs (one class in the actor)."""

    offset = None
    folder = None

    @classmethod
    def start(cls, offset: int, folder: Path) -> None:
        cls.offset, cls.folder = offset, folder

    @classmethod
    def work(cls, job: tuple[int, float]):
        index, seconds = job
        time.sleep(seconds)
        if index == 7 and cls.offset < 0:
            raise ValueError("seven is refused")
        return index + cls.offset, str(cls.folder), os.getpid()


def test_ray_worker_map_returns_results_in_job_order(ray_cluster):
    # The first jobs of each batch are slow, so later jobs finish first on the other actor.
    jobs = [(i, 0.4 if i % 6 == 0 else 0.01) for i in range(24)]
    with worker_map(2, _Sleeper.start, (100, Path("relative")), executor="ray", ray_address=ray_cluster) as run:
        results = list(run(_Sleeper.work, jobs, 2))
    assert [r[0] for r in results] == [100 + i for i in range(24)]
    # A relative Path given to the workers arrives absolute (their working directory is not ours).
    assert {r[1] for r in results} == {str(Path("relative").absolute())}
    # All results came back; and an empty job list gives nothing.
    with worker_map(0, _Sleeper.start, (0, Path(".")), executor="ray", ray_address=ray_cluster) as run:
        assert list(run(_Sleeper.work, [])) == []
        assert [r[0] for r in run(_Sleeper.work, [(3, 0.0), (1, 0.0)])] == [3, 1]


def test_ray_worker_map_names_the_job_that_failed(ray_cluster):
    jobs = [(i, 0.01) for i in range(12)]
    with worker_map(2, _Sleeper.start, (-1, Path(".")), executor="ray", ray_address=ray_cluster) as run:
        results = run(_Sleeper.work, jobs, 3)
        with pytest.raises(JobError, match=r"job 7 \(\(7, 0\.01\)\) failed on a Ray worker: ValueError: seven is "
                                           r"refused") as caught:
            for _ in results:
                pass
    assert "_Sleeper.work" in str(caught.value) or "in work" in str(caught.value)  # the remote traceback


def test_without_ray_data_the_error_says_how_to_install_it(monkeypatch):
    from rdfa.io.stage import ray_connect

    monkeypatch.setitem(sys.modules, "ray.data", None)  # import ray.data now raises ImportError
    with pytest.raises(RuntimeError, match=r"runtime\.executor is ray but Ray Data cannot be imported .*"
                                           r"pip install -e '\.\[ray\]'"):
        ray_connect(None)


# The per-image stages, then what turns their output into the headline (methods.json is the local run's).
STAGES = ["features", "points", "regions", "pca", "descriptors", "whitening", "ranking"]
PER_IMAGE = {"features", "points", "regions", "pca", "descriptors"}
EVALUATE = ["stages/evaluate.py", "--gnd", "data/synth/gnd.json", "--ranks", "features/synth/ranks.json",
            "--ranks-qe", "features/synth/ranks_qe.json", "--out", "metrics/synth.json",
            "--methods", "features/synth/methods.json", "--methods-out", "metrics/synth_methods.json",
            "--results", "results/synth.json", "--per-query-out", "features/synth/per_query_ap.json",
            "--info", "features/synth/search_info.json"]


def datasets(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def attributes(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, dict(obj.attrs)))
        out[""] = dict(f.attrs)
    return out


def test_the_synth_pipeline_on_ray_gives_the_local_executors_results(synth_run, ray_cluster, tmp_path):
    from rdfa.search import search_all

    _, _, reference = synth_run  # the local executor's run (tests/conftest.py)
    root = tmp_path / "project"
    shutil.copytree(reference, root, symlinks=True)
    work, ref = root / "features" / "synth", reference / "features" / "synth"
    for name in ("features.h5", "points.h5", "regions.h5", "pca.h5", "descriptors.h5", "whitened.h5",
                 "ranks.json", "ranks_qe.json", "matches.h5", "search_info.json"):
        (work / name).unlink()
    (root / "metrics" / "synth.json").unlink()
    set_params(root, {"runtime": {"executor": "ray", "ray_address": ray_cluster}})
    env = dict(os.environ, TQDM_DISABLE="1")
    seconds = {}
    for stage in STAGES:
        start = time.time()
        proc = subprocess.run([sys.executable, f"stages/{stage}.py", "--dataset", "synth"], cwd=root, env=env,
                              capture_output=True, text=True, timeout=600)
        seconds[stage] = round(time.time() - start, 1)
        assert proc.returncode == 0, f"{stage}:\n{proc.stderr}"
        if stage in PER_IMAGE:
            assert f"ray: connected to the Ray cluster at {ray_cluster}" in proc.stderr, proc.stderr
            assert "actor(s) of 1 CPU" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, *EVALUATE], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    print("seconds per stage on Ray:", seconds)

    # The headline
    mine_map = json.loads((root / "metrics" / "synth.json").read_text())
    ref_map = json.loads((reference / "metrics" / "synth.json").read_text())
    assert mine_map["mAP"] == pytest.approx(ref_map["mAP"], abs=0.002)
    assert mine_map["mAP_qe"] == pytest.approx(ref_map["mAP_qe"], abs=0.002)

    # The feature file: the same entries, attributes and (within a float16 step) maps.
    mine, theirs = datasets(work / "features.h5"), datasets(ref / "features.h5")
    assert mine.keys() == theirs.keys()
    changed = sum(int((mine[key] != theirs[key]).sum()) for key in mine)
    for key in mine:
        np.testing.assert_allclose(mine[key].astype(np.float32), theirs[key].astype(np.float32),
                                   rtol=4e-3, atol=1e-3, err_msg=key)
    mine, theirs = attributes(work / "features.h5"), attributes(ref / "features.h5")
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert mine[key].keys() == theirs[key].keys(), key
        for name in mine[key]:
            np.testing.assert_array_equal(mine[key][name], theirs[key][name], err_msg=f"{key}: {name}")

    # The whitened database descriptors: within 1e-4 of their norm (rows are unit vectors).
    mine, theirs = datasets(work / "whitened.h5"), datasets(ref / "whitened.h5")
    assert mine.keys() == theirs.keys()
    for group in ("db", "query", "full"):
        np.testing.assert_array_equal(mine[f"{group}/offsets"], theirs[f"{group}/offsets"])
    error = np.linalg.norm(mine["db/desc"] - theirs["db/desc"], axis=1) / np.linalg.norm(theirs["db/desc"], axis=1)
    assert error.max() <= 1e-4, error.max()
    print(f"ray against local: mAP {mine_map['mAP']:.4f} / {ref_map['mAP']:.4f}, mAP_qe {mine_map['mAP_qe']:.4f} / "
          f"{ref_map['mAP_qe']:.4f}; {changed} of {sum(v.size for v in datasets(ref / 'features.h5').values())} "
          f"stored map values differ; whitened db rows within {error.max():.2e} relative")
    np.testing.assert_allclose(mine["query/desc"], theirs["query/desc"], rtol=1e-4, atol=1e-4)

    # The same ranks, but where two images score alike (a tie within float noise) and may swap.
    _, _, sim, _, _, sim_qe = search_all(theirs["query/desc"], theirs["query/offsets"], theirs["db/desc"],
                                         theirs["db/offsets"], int(json.loads(
                                             (ref / "search_info.json").read_text())["n_qe"]))
    for name, scores in (("ranks.json", sim), ("ranks_qe.json", sim_qe)):
        mine, theirs = (json.loads((folder / name).read_text()) for folder in (work, ref))
        assert len(mine) == len(theirs)
        for q, (a, b) in enumerate(zip(mine, theirs)):
            assert sorted(a) == sorted(b)
            for position, (i, j) in enumerate(zip(a, b)):
                assert i == j or abs(scores[q, i] - scores[q, j]) < 1e-4, (name, q, position, i, j)


def test_a_distractor_set_on_ray_gives_the_local_executors_shards(synth_run, ray_cluster, tmp_path):
    """The distractor path (stage distractors) on Ray actors against the local processes: same shards,
    and the same metrics with them."""
    _, _, reference = synth_run
    root = tmp_path / "project"
    shutil.copytree(reference, root, symlinks=True)
    set_params(root, {"distractors": {"synth": "synth_distractors"},
                      "data": {"synth_distractors": {"n_images": 20, "width": 320, "height": 240, "max_images": 6,
                                                     "test": {"seed": 3, "n_objects": 6}}},
                      "runtime": {"shard_images": 4}})
    env = dict(os.environ, TQDM_DISABLE="1")
    work = root / "features" / "synth+synth_distractors"
    results = {}
    for executor in ("local", "ray"):
        set_params(root, {"runtime": {"executor": executor, "ray_address": ray_cluster if executor == "ray" else None}})
        for script in ("distractors.py", "ranking_distractors.py"):
            proc = subprocess.run([sys.executable, f"stages/{script}", "--dataset", "synth", "--set",
                                   "synth_distractors"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"{executor} {script}:\n{proc.stderr}"
            if script == "distractors.py" and executor == "ray":
                assert f"ray: connected to the Ray cluster at {ray_cluster}" in proc.stderr, proc.stderr
        shards = {p.name: datasets(p) for p in sorted((work / "shards").glob("shard_*.h5"))}
        results[executor] = (shards, json.loads((work / "methods.json").read_text())["methods"]["O2_R"])
        shutil.rmtree(work)
    (local, local_cells), (remote, remote_cells) = results["local"], results["ray"]
    assert local.keys() == remote.keys() == {"shard_00000.h5", "shard_00001.h5"}
    for name in local:
        assert local[name].keys() == remote[name].keys()
        for key in local[name]:
            if key == "desc":  # float16 rows: within a float16 step or two
                np.testing.assert_allclose(remote[name][key].astype(np.float32), local[name][key].astype(np.float32),
                                           atol=2e-3, err_msg=f"{name}: {key}")
            else:
                np.testing.assert_array_equal(remote[name][key], local[name][key], err_msg=f"{name}: {key}")
    for d, cell in local_cells.items():
        assert remote_cells[d]["mAP"] == pytest.approx(cell["mAP"], abs=0.002)
        assert remote_cells[d]["mAP_qe"] == pytest.approx(cell["mAP_qe"], abs=0.002)
