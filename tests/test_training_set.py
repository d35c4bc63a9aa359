"""A dataset without queries (a training set) through the whole pipeline, with DVC itself.

`dvc repro` on tiny generated sets with ``datasets: [synth, synth_train]`` and
``whitening.train_on: {synth: synth_train}``: every stage runs on synth_train and writes its
outputs in their layout, empty of queries; synth learns its K -> K' basis and its whitening on
synth_train's database. Then synth_train changes: DVC re-runs its stages only (it cannot see
across datasets), and the table stage refuses, naming both, until synth is re-run from its pca
stage. The tests share one project and run in order.
"""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from test_pipeline import copy_project, dvc, dvc_json, run_dvc, set_params, stages_run

# (stages_run leaves out the source stage, which runs on every repro by design: checked on its own)
STAGES = {"data", "features", "points", "regions", "pca", "descriptors", "whitening", "ranking", "methods",
          "evaluate", "report", "table"}
# Tiny: 16 training images, a synth of 4 objects and 16 database images (the smallest it allows
# with 4 distractors). One-descriptor methods learn on 16 training vectors: D = 8 only.
TINY = {
    "datasets": ["synth", "synth_train"],
    "data": {"synth": {"seed": 3, "n_objects": 4, "n_db": 16, "n_distractors": 4, "width": 320, "height": 240},
             "synth_train": {"seed": 1, "n_images": 16, "width": 320, "height": 240,
                             "test": {"seed": 3, "n_objects": 4}}},
    "saliency": {"n_max": 1000, "n_min": 100},
    "pca": {"k_prime": 16},
    "whitening": {"D": 32, "train_on": {"synth": "synth_train"}},
    "ranking": {"n_qe": 3},
    "methods": {"D": [8, 32]},
}
DIM = 16 * 17 // 2  # K'(K'+1)/2


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("training_set")
    copy_project(root)
    set_params(root, TINY)
    return root, dvc(root, "repro")


def read(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_every_stage_runs_on_the_training_set_and_writes_its_outputs_empty_of_queries(project):
    root, out = project
    assert stages_run(out) == STAGES
    assert "Running stage 'source@" in out
    assert "synth_train: no queries (a training set)" in out
    work = root / "features" / "synth_train"
    for name in ("descriptors.h5", "whitened.h5"):
        with h5py.File(work / name, "r") as f:
            dim = f["db/desc"].shape[1]
            assert dim == (DIM if name == "descriptors.h5" else 32)
            assert f["db/offsets"][-1] == len(f["db/desc"]) and len(f["db/offsets"]) == 17
            for group in ("query", "full"):
                assert f[f"{group}/desc"].shape == (0, dim) and f[f"{group}/offsets"][()].tolist() == [0]
            assert f["query/all_regions"].shape == (0,)
    assert read(work / "ranks.json") == [] and read(work / "ranks_qe.json") == []
    with h5py.File(work / "matches.h5", "r") as f:
        assert f["best_region"].shape == f["best_region_qe"].shape == (0, 16)
    assert "no queries" in read(work / "search_info.json")["note"]
    methods = read(work / "methods.json")
    assert methods["methods"] == {} and methods["info"]["queries"] == 0 and "training set" in methods["info"]["note"]
    for name in ("map_vs_d.json", "map_vs_d_qe.json", "pr.json"):
        assert read(root / "plots" / "synth_train" / name) == []
    for name in ("map_vs_d.png", "pr.png", "figure2.png"):
        assert (root / "plots" / "synth_train" / name).stat().st_size > 1000
    assert read(work / "per_query_ap.json") == []
    # The metrics: numbers only, no mAP made up; the results say why.
    assert read(root / "metrics" / "synth_train.json") == {"mAP": None, "mAP_qe": None, "n_images": 16,
                                                           "n_queries": 0, "n_scored": 0}
    assert read(root / "metrics" / "synth_train_methods.json") == {"methods": {}}
    results = read(root / "results" / "synth_train.json")
    assert results["protocol"] is None and "training set" in results["note"] and results["methods"] == {}
    page = (root / "reports" / "synth_train" / "index.html").read_text()
    assert "no queries" in page and "training set" in page
    # synth is evaluated as usual.
    assert read(root / "metrics" / "synth.json")["n_queries"] == 4


@pytest.mark.slow
def test_the_table_gives_the_training_set_a_line_and_no_column(project):
    root, _ = project
    table = (root / "metrics" / "table.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| Method"))
    assert "| synth |" in header and "synth_train" not in header
    assert "- synth_train: no queries, a training set (no column): its database learns the whitening of synth." \
        in table
    assert "- synth: whitening learned on the database of synth_train" in table


@pytest.mark.slow
def test_synth_learns_its_basis_and_whitening_on_the_training_set(project):
    root, _ = project
    ours, theirs = root / "features" / "synth", root / "features" / "synth_train"
    with h5py.File(ours / "pca.h5", "r") as a, h5py.File(theirs / "pca.h5", "r") as b:
        assert a.attrs["learned_on"] == "synth_train" and a.attrs["n_train"] == b.attrs["n_train"]
        np.testing.assert_array_equal(a["components"][()], b["components"][()])  # the same basis, bit for bit
    with h5py.File(ours / "whitened.h5", "r") as w, h5py.File(theirs / "descriptors.h5", "r") as d:
        assert w.attrs["learned_on"] == "synth_train"
        assert w.attrs["n_train"] == d["db/offsets"][-1] == len(d["db/desc"])  # synth_train's database regions
        assert w.attrs["train_digest"] == d.attrs["db_digest"]
    results = read(root / "results" / "synth.json")
    assert results["info"]["whitening_learned_on"] == results["methods_info"]["whitening_learned_on"] == "synth_train"
    assert results["methods_info"]["whitening_on_test_database"] is False


@pytest.mark.slow
def test_dvc_shows_the_metrics_and_plots_of_both_datasets(project):
    root, _ = project
    files = next(iter(dvc_json(root, "metrics", "show").values()))["data"]
    assert {"metrics/synth.json", "metrics/synth_train.json"} <= set(files)
    assert files["metrics/synth_train.json"]["data"]["n_queries"] == 0
    shown = dvc_json(root, "plots", "show")
    assert not shown.get("errors"), shown.get("errors")
    assert "plots/synth_train/figure2.png" in shown["data"]


@pytest.mark.slow
def test_a_changed_training_set_is_refused_until_the_dataset_learning_on_it_is_rerun(project):
    """DVC re-runs synth_train's stages, not synth's (whitening.train_on crosses datasets): the table
    stage refuses synth's stale whitening, naming both; the remedy it gives re-learns it."""
    root, _ = project
    set_params(root, {"data": {"synth_train": {"seed": 2}}})
    env = dict(os.environ, TQDM_DISABLE="1", PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Running stage 'pca@synth_train'" in out and "Running stage 'pca@synth'" not in out
    assert "synth's whitening was learned on synth_train's descriptors" in out, out
    assert "dvc repro -s -f pca@synth" in out
    out = dvc(root, "repro", "-s", "-f", "pca@synth") + dvc(root, "repro")
    assert {"pca", "descriptors", "whitening", "ranking", "table"} <= stages_run(out)
    with h5py.File(root / "features" / "synth" / "whitened.h5", "r") as w, \
            h5py.File(root / "features" / "synth_train" / "descriptors.h5", "r") as d:
        assert w.attrs["train_digest"] == d.attrs["db_digest"] and w.attrs["n_train"] == len(d["db/desc"])
    run_dvc(root, "status")


def test_a_whitening_learned_on_training_descriptors_that_changed_since_is_refused_naming_both(tmp_path):
    """check_training_source (every stage after the whitening runs it) on files written here: the
    training set's descriptors as the whitening learned them pass; changed afterwards, refused."""
    from rdfa.io.provenance import array_digest, check_training_source
    from rdfa.io.stage import Paths

    paths, train = Paths(tmp_path, "synth"), Paths(tmp_path, "synth_train")
    for p in (paths, train):
        p.work.mkdir(parents=True)
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    with h5py.File(train.descriptors, "w") as f:
        f["db/desc"] = rows
    with h5py.File(paths.whitened, "w") as f:
        f.attrs["learned_on"], f.attrs["train_digest"] = "synth_train", array_digest(rows)
    check_training_source(paths, "synth")
    with h5py.File(train.descriptors, "a") as f:
        f["db/desc"][0, 0] = 99
    with pytest.raises(ValueError, match=r"whitened\.h5: synth's whitening was learned on synth_train's descriptors "
                       r"as they were .*synth_train/descriptors\.h5"):
        check_training_source(paths, "synth")
