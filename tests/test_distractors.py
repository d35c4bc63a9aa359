"""Distractor sets: the one-pass path gives the pipeline's descriptors, and `dvc repro` evaluates with them.

The pipeline runs on a reduced synth (as tests/test_pipeline.py) with a small
generated distractor set; R1M's download is tested against a loopback server.
"""
import functools
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from test_pipeline import REDUCED, copy_project, dvc, set_params, stages_run

from rdfa.distractor_search import search_with_qe, truncated
from rdfa.evaluation import headline_score, mean_average_precision, revisited_map
from rdfa.io.collection import Collection
from rdfa.io.method_vectors import group_name, read_vectors

N_DISTRACTORS = 12
DISTRACTED = {"distractors": {"synth": "synth_distractors"},
              "data": {"synth_distractors": {"n_images": 40, "width": 320, "height": 240, "max_images": N_DISTRACTORS,
                                             "test": {"seed": 3, "n_objects": 6}}},
              "runtime": {"shard_images": 5}}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("distracted")
    copy_project(root)
    set_params(root, REDUCED)
    set_params(root, DISTRACTED)
    out = dvc(root, "repro")
    return root, out


def run_stage(root: Path, script: str, *args: str, params: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TQDM_DISABLE="1")
    extra = ["--params", str(params)] if params else []
    return subprocess.run([sys.executable, f"stages/{script}", *args, *extra], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_repro_evaluates_with_distractors_in_the_datasets_metrics_layout(project):
    root, out = project
    assert {"distractors", "ranking_distractors", "evaluate_distractors"} <= stages_run(out)
    plain = json.loads((root / "metrics" / "synth.json").read_text())
    distracted = json.loads((root / "metrics" / "synth+synth_distractors.json").read_text())
    assert set(distracted) == set(plain) | {"n_distractors"}
    assert distracted["n_distractors"] == N_DISTRACTORS
    assert distracted["n_images"] == plain["n_images"] + N_DISTRACTORS
    # The database's own images keep their order among themselves: distractors can only push
    # positives down, so the mAP without QE cannot rise.
    assert distracted["mAP"] <= plain["mAP"] + 1e-9
    grid = json.loads((root / "metrics" / "synth+synth_distractors_methods.json").read_text())["methods"]
    plain_grid = json.loads((root / "metrics" / "synth_methods.json").read_text())["methods"]
    assert set(grid) == set(plain_grid) and all(set(grid[m]) == set(plain_grid[m]) for m in grid)
    assert grid["O2_R"]["48"] == {"mAP": distracted["mAP"], "mAP_qe": distracted["mAP_qe"]}
    # Every method's cells with distractors (methods.distractor_methods: all of Table 1's), none above
    # its mAP without them; where the methods stage could not whiten (48 > the 39 axes of 40 images), null.
    for name, cells in plain_grid.items():
        for d, cell in cells.items():
            if cell["mAP"] is None:
                assert grid[name][d] == {"mAP": None, "mAP_qe": None}, (name, d)
            else:
                assert grid[name][d]["mAP"] <= cell["mAP"] + 1e-9, (name, d)
    assert grid["MAC"]["48"] == {"mAP": None, "mAP_qe": None} and grid["MAC"]["24"]["mAP"] is not None
    index = json.loads((root / "features" / "synth+synth_distractors" / "shards" / "index.json").read_text())
    assert index["n_images"] == N_DISTRACTORS and [s["n_images"] for s in index["shards"]] == [5, 5, 2]
    results = json.loads((root / "results" / "synth+synth_distractors.json").read_text())
    assert "principal axes" in results["methods"]["MAC"]["48"]["reason"]
    assert index["methods"].keys() == set(plain_grid) - {"O2_R"} - {n for n in plain_grid if n.endswith("_full")}
    # Nothing changed: nothing runs (but the source stage, always run: a cheap digest of sources.<dataset>);
    # a search setting re-runs the search, not the distractor pass.
    assert stages_run(dvc(root, "repro")) - {"source"} == set()
    set_params(root, {"ranking": {"n_qe": 2}})
    assert "distractors" not in stages_run(dvc(root, "repro"))
    # Neither does a setting that changes the methods stage's vectors, not its fits (method_fits.h5).
    set_params(root, {"methods": {"full_query": False}})
    run = stages_run(dvc(root, "repro"))
    assert {"methods", "ranking_distractors"} <= run and "distractors" not in run
    set_params(root, {"ranking": {"n_qe": 3}, "methods": {"full_query": True}})
    dvc(root, "repro")


def shard_rows(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for path in sorted(folder.glob("shard_*.h5")):
        with h5py.File(path, "r") as f:
            offsets, desc, boxes = f["offsets"][()], f["desc"][()], f["boxes"][()]
            for i, name in enumerate(f["names"][()]):
                out[name.decode()] = (desc[offsets[i]:offsets[i + 1]], boxes[offsets[i]:offsets[i + 1]])
    return out


@pytest.mark.slow
def test_the_one_pass_path_gives_the_pipelines_descriptors(project, tmp_path):
    """synth's own database images as a folder distractor set: the stages' whitened rows and region boxes."""
    from rdfa.io.hulls import RegionHulls
    from rdfa.io.stage import Paths
    from rdfa.regions import bounding_box

    root, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["sources"]["own"] = str(root / "data" / "synth" / "images")
    params["data"]["own"] = {"max_images": 9}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    proc = run_stage(root, "distractors.py", "--dataset", "synth", "--set", "own", params=path)
    assert proc.returncode == 0, proc.stderr
    got = shard_rows(root / "features" / "synth+own" / "shards")
    gnd = json.loads((root / "data" / "synth" / "gnd.json").read_text())
    assert sorted(got) == sorted(gnd["imlist"])[:9]
    with h5py.File(root / "features" / "synth" / "whitened.h5", "r") as f:
        db, offsets = f["db/desc"][()], f["db/offsets"][()]
    with RegionHulls(Paths(root, "synth")) as hulls:
        for name, (rows, boxes) in got.items():
            i = gnd["imlist"].index(name)
            expected = db[offsets[i]:offsets[i + 1]]
            assert rows.dtype == np.float16 and rows.shape == expected.shape
            np.testing.assert_allclose(rows.astype(np.float32), expected, atol=2e-3, err_msg=name)
            for r, box in enumerate(boxes):
                polygon, image_hw = hulls.polygon(name, r)
                np.testing.assert_allclose(box, bounding_box(polygon, image_hw), atol=0.01)
    # Table 1's other methods: each image's vectors are the methods stage's of the same database image.
    index = json.loads((root / "features" / "synth+own" / "shards" / "index.json").read_text())
    vectors = root / "features" / "synth" / "method_vectors.h5"
    for method, meta in index["methods"].items():
        for key in set(meta["keys"].values()):
            db, db_offsets, _ = read_vectors(vectors, method, "db", key)
            for path in sorted((root / "features" / "synth+own" / "shards").glob("shard_*.h5")):
                with h5py.File(path, "r") as f:
                    stored, offsets = f[f"methods/{group_name(method)}/{key}"][()], f[f"methods/{group_name(method)}/offsets"][()]
                    for j, name in enumerate(f["names"][()]):
                        i = gnd["imlist"].index(name.decode())
                        np.testing.assert_allclose(stored[offsets[j]:offsets[j + 1]].astype(np.float32),
                                                   db[db_offsets[i]:db_offsets[i + 1]], atol=2e-3,
                                                   err_msg=f"{method} {key} {name}")


@pytest.mark.slow
def test_a_collection_fit_whitens_database_queries_and_distractors_with_one_pca(project, tmp_path):
    """whitening.distractors.fit collection, synth's own database images as the set: the fit is the PCA of
    the database rows and the first fit_images images' rows (here, rows of descriptors.h5 again), by a
    direct eigendecomposition; the distractors and the dataset's rows are whitened by eq. 6 with it."""
    root, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["sources"]["mine"] = str(root / "data" / "synth" / "images")
    params["data"]["mine"] = {"max_images": 7}
    params["whitening"]["distractors"] = {"fit": "collection", "fit_images": 5}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    proc = run_stage(root, "distractors.py", "--dataset", "synth", "--set", "mine", params=path)
    assert proc.returncode == 0, proc.stderr
    assert "collection whitening learned on" in proc.stderr
    shards = root / "features" / "synth+mine" / "shards"
    gnd = json.loads((root / "data" / "synth" / "gnd.json").read_text())
    names = sorted(gnd["imlist"])
    with h5py.File(root / "features" / "synth" / "descriptors.h5", "r") as f:
        stored = {g: (f[f"{g}/desc"][()], f[f"{g}/offsets"][()]) for g in ("db", "query")}
    db, offsets = stored["db"]
    rows_of = {name: db[offsets[i]:offsets[i + 1]] for i, name in enumerate(gnd["imlist"])}
    sample = np.vstack([rows_of[name] for name in names[:5]])
    everything = np.vstack([db, sample]).astype(np.float64)
    values, vectors = np.linalg.eigh(np.cov(everything, rowvar=False))
    with h5py.File(shards / "whitened.h5", "r") as f:
        dim = int(f.attrs["D"])
        assert f.attrs["n_train"] == len(everything) and f.attrs["sample_images"] == 5
        mean, axes, variances = (f[f"transform/{k}"][()] for k in ("mean", "components", "eigenvalues"))
        rows = {g: f[f"{g}/desc"][()] for g in ("db", "query")}
    order = np.argsort(values)[::-1][:dim]
    np.testing.assert_allclose(mean, everything.mean(0), atol=1e-6)
    np.testing.assert_allclose(variances[:10], values[order][:10], rtol=1e-3)
    assert np.abs(np.sum(axes[:, :10] * vectors[:, order[:10]], axis=0)).min() > 0.999

    def by_hand(x):  # eq. 6 with the fit, l2-normalised
        y = (x.astype(np.float64) - mean) @ axes / np.sqrt(variances)
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    for group in ("db", "query"):
        np.testing.assert_allclose(rows[group], by_hand(stored[group][0]), atol=1e-4)
    got = shard_rows(shards)
    assert sorted(got) == names[:7]
    for name, (desc, _) in got.items():
        np.testing.assert_allclose(desc.astype(np.float32), by_hand(rows_of[name]), atol=2e-3, err_msg=name)
    with pytest.raises(AssertionError):  # not the database's fit
        with h5py.File(root / "features" / "synth" / "whitened.h5", "r") as f:
            np.testing.assert_allclose(rows["db"], f["db/desc"][()], atol=1e-3)
    proc = run_stage(root, "ranking_distractors.py", "--dataset", "synth", "--set", "mine", params=path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((root / "features" / "synth+mine" / "methods.json").read_text())["info"]
    assert info["whitening_fit"] == "collection" and info["collection_fit"]["sample_rows"] == len(sample)


@pytest.mark.slow
def test_without_distractors_the_search_is_the_ranking_stages(project):
    root, _ = project
    with h5py.File(root / "features" / "synth" / "whitened.h5", "r") as f:
        db, offsets = f["db/desc"][()], f["db/offsets"][()]
        queries, q_offsets = f["query/desc"][()], f["query/offsets"][()]
    collection = Collection(db, offsets, [], db.shape[1])
    ranks, ranks_qe = search_with_qe(queries, q_offsets, collection, 3, True, 16384)
    assert ranks.tolist() == json.loads((root / "features" / "synth" / "ranks.json").read_text())
    assert ranks_qe.tolist() == json.loads((root / "features" / "synth" / "ranks_qe.json").read_text())


@pytest.mark.slow
def test_at_a_smaller_d_the_search_uses_the_leading_columns_l2_normalised(project):
    """Table 1's smaller D: database and queries cut to their first d columns and normalised again,
    as the methods stage does for O2_R (computed here directly with rdfa.search)."""
    from rdfa.search import search_all

    root, _ = project
    with h5py.File(root / "features" / "synth" / "whitened.h5", "r") as f:
        db, offsets = f["db/desc"][()], f["db/offsets"][()]
        queries, q_offsets = f["query/desc"][()], f["query/offsets"][()]
    d = 24

    def cut(rows):
        rows = rows[:, :d].astype(np.float64)
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    collection = Collection(db, offsets, [], d)
    q = cut(queries)
    ranks, ranks_qe = search_with_qe(q, q_offsets, collection, 3, True, 16384)
    expected, _, _, expected_qe, _, _ = search_all(q, q_offsets, cut(db), offsets, 3, True)
    np.testing.assert_array_equal(ranks, expected)
    np.testing.assert_array_equal(ranks_qe, expected_qe)
    grid = json.loads((root / "metrics" / "synth_methods.json").read_text())["methods"]["O2_R"]
    gnd = json.loads((root / "data" / "synth" / "gnd.json").read_text())
    assert headline_score(list(ranks), gnd["gnd"]) == pytest.approx(grid[str(d)]["mAP"], abs=2e-6)


@pytest.mark.slow
def test_a_faiss_index_searches_the_distractors_too(project, tmp_path):
    """index.type flat with a shortlist covering every region gives the exact search's cells (its
    candidates are every image, re-ranked by exact eq. 7); IVF-PQ gives a valid grid."""
    root, _ = project
    work = root / "features" / "synth+synth_distractors"
    exact = json.loads((work / "methods.json").read_text())["methods"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    saved = {name: (work / name).read_bytes() for name in ("methods.json", "ranks.json", "ranks_qe.json",
                                                          "search_info.json")}
    try:
        for index, check in (({"type": "flat", "shortlist": 100000}, "equal"),
                             ({"type": "ivfpq", "nlist": 4, "nprobe": 2, "m": 8, "nbits": 6, "shortlist": 50},
                              "valid")):
            params["index"] = index
            path = tmp_path / "params.yaml"
            path.write_text(yaml.safe_dump(params))
            proc = run_stage(root, "ranking_distractors.py", "--dataset", "synth", "--set", "synth_distractors",
                             params=path)
            assert proc.returncode == 0, proc.stderr
            assert "FAISS" in proc.stderr
            got = json.loads((work / "methods.json").read_text())["methods"]
            for name in ("O2_R", "O2_R_full"):
                for d, cell in exact[name].items():
                    for key in ("mAP", "mAP_qe"):
                        if check == "equal":
                            assert got[name][d][key] == pytest.approx(cell[key], abs=1e-3), (name, d, key)
                        else:
                            assert 0 <= got[name][d][key] <= 1
            info = json.loads((work / "search_info.json").read_text())
            assert info["index"]["type"] == index["type"]
    finally:
        for name, data in saved.items():
            (work / name).write_bytes(data)


@pytest.mark.slow
def test_an_interrupted_run_keeps_its_complete_shards(project, tmp_path):
    root, _ = project
    work = root / "features" / "synth+synth_distractors"
    before = shard_rows(work / "shards")
    partial = work / "shards.partial"
    (work / "shards").rename(partial)  # as if the run had stopped before renaming the folder
    (partial / "shard_00002.h5").unlink()
    (partial / "index.json").unlink()
    try:
        proc = run_stage(root, "distractors.py", "--dataset", "synth", "--set", "synth_distractors")
        assert proc.returncode == 0, proc.stderr
        assert "resumed: 2 shard(s) kept" in proc.stderr
        after = shard_rows(work / "shards")
        assert after.keys() == before.keys()
        for name in before:
            np.testing.assert_array_equal(after[name][0], before[name][0])
    finally:
        if not (work / "shards").exists():
            partial.rename(work / "shards")


@pytest.mark.slow
def test_a_changed_parameter_discards_the_old_shards(project, tmp_path):
    root, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["synth_distractors"]["max_images"] = 3
    params["saliency"]["n_max"] = 500
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    work = root / "features" / "synth+synth_distractors"
    partial = work / "shards.partial"
    import shutil

    shutil.copytree(work / "shards", partial)
    proc = run_stage(root, "distractors.py", "--dataset", "synth", "--set", "synth_distractors", params=path)
    assert proc.returncode == 0, proc.stderr
    assert "resumed" not in proc.stderr
    index = json.loads((work / "shards" / "index.json").read_text())
    assert index["n_images"] == 3 and sorted(p.name for p in (work / "shards").glob("shard_*")) == ["shard_00000.h5"]
    dvc(root, "repro")  # back to the project's own parameters
    assert json.loads((work / "shards" / "index.json").read_text())["n_images"] == N_DISTRACTORS


@pytest.mark.slow
def test_bad_distractor_options_are_refused_naming_the_key(project, tmp_path):
    root, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["synth_distractors"]["colour"] = "red"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    proc = run_stage(root, "distractors.py", "--dataset", "synth", "--set", "synth_distractors", params=path)
    assert proc.returncode != 0 and "data.synth_distractors.colour" in proc.stderr
    params["data"]["synth_distractors"].pop("colour")
    params["data"]["synth_distractors"]["max_images"] = 0
    path.write_text(yaml.safe_dump(params))
    proc = run_stage(root, "distractors.py", "--dataset", "synth", "--set", "synth_distractors", params=path)
    assert proc.returncode != 0 and "data.synth_distractors.max_images" in proc.stderr


# --------------------------------------------------------------------------- evaluation with distractors

def test_a_ranking_cut_after_the_last_listed_image_scores_as_the_whole_ranking():
    rng = np.random.default_rng(0)
    n = 300
    gnd = {"imlist": [f"{i}" for i in range(40)], "gnd": []}
    for _ in range(6):
        picked = rng.choice(40, 12, replace=False)
        gnd["gnd"].append({"easy": picked[:3].tolist(), "hard": picked[3:6].tolist(), "junk": picked[6:8].tolist(),
                           "ok": picked[:6].tolist()})
    ranks = np.array([rng.permutation(n) for _ in range(6)])
    cut = truncated(ranks, gnd)
    full = revisited_map(list(ranks), gnd["gnd"])
    short = revisited_map([np.array(c) for c in cut], gnd["gnd"])
    for setup in ("easy", "medium", "hard"):
        assert short[setup]["mAP"] == pytest.approx(full[setup]["mAP"], abs=1e-12)
        assert short[setup]["mP@k"] == full[setup]["mP@k"]
    assert mean_average_precision([np.array(c) for c in cut], gnd["gnd"])[0] == pytest.approx(
        mean_average_precision(list(ranks), gnd["gnd"])[0], abs=1e-12)


def test_ap_with_distractors_ahead_of_the_positives_by_hand():
    """One query, positives 0 and 1 of a 3-image database, two distractors (3, 4) ranked between them."""
    gnd = {"gnd": [{"ok": [0, 1], "junk": []}]}
    # ranking 0, 3, 4, 1: the Oxford AP averages, over each recall step of 1/2, the precision
    # just before and at the positive: (1 + 1/1) / 2 at rank 1, then (1/3 + 2/4) / 2 at rank 4.
    ap = mean_average_precision([np.array([0, 3, 4, 1])], gnd["gnd"])[0]
    assert ap == pytest.approx(0.5 * (1 + 1) / 2 + 0.5 * (1 / 3 + 2 / 4) / 2)
    assert mean_average_precision([np.array([0, 1, 3, 4])], gnd["gnd"])[0] == pytest.approx(1.0)


# --------------------------------------------------------------------------- R1M download (loopback)

def jpeg_bytes(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def make_archive(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def r1m_server(tmp_path):
    """A loopback copy of the revisitop1m layout: the list and two archives of three images each."""
    served = tmp_path / "served"
    (served / "jpg").mkdir(parents=True)
    names = [f"{k:02x}/{k:04d}.jpg" for k in range(6)]
    images = {name: jpeg_bytes(k) for k, name in enumerate(names)}
    (served / "revisitop1m.txt").write_text("\n".join(names) + "\n")
    make_archive(served / "jpg" / "revisitop1m.1.tar.gz", {f"jpg/{n}": images[n] for n in names[:3]})
    make_archive(served / "jpg" / "revisitop1m.2.tar.gz", {f"jpg/{n}": images[n] for n in names[3:]})
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{srv.server_address[1]}/"
    urls = {"revisitop1m.txt": base + "revisitop1m.txt",
            **{f"revisitop1m.{i}.tar.gz": f"{base}jpg/revisitop1m.{i}.tar.gz" for i in range(1, 101)}}
    yield urls, names, images
    srv.shutdown()
    srv.server_close()


def test_r1m_is_downloaded_archive_by_archive_and_read_without_extracting(r1m_server, tmp_path):
    from rdfa.io.distractors import R1M_ARCHIVES, R1M_LIST, DistractorSet, load_job
    from rdfa.io.images import decode_rgb

    urls, names, images = r1m_server
    assert R1M_LIST.url == "http://ptak.felk.cvut.cz/revisitop/revisitop1m/revisitop1m.txt"
    assert R1M_ARCHIVES[99].url == "http://ptak.felk.cvut.cz/revisitop/revisitop1m/jpg/revisitop1m.100.tar.gz"
    ddir = tmp_path / "downloads"
    first = DistractorSet("r1m", "download", {"max_images": 2, "urls": urls, "download_dir": str(ddir)}, tmp_path)
    assert first.names == names[:2]
    jobs = list(first.jobs(0, 2))
    assert [j.name for j in jobs] == names[:2]
    # Only what is needed (each download with its <file>.source.json record, rdfa.io.download).
    downloaded = sorted(p.name for p in ddir.iterdir() if not p.name.endswith(".source.json"))
    assert downloaded == ["revisitop1m.1.tar.gz", "revisitop1m.txt"]
    np.testing.assert_array_equal(load_job(jobs[1]), decode_rgb(images[names[1]], names[1]))
    whole = DistractorSet("r1m", "download", {"urls": urls, "download_dir": str(ddir)}, tmp_path)
    assert [j.name for j in whole.jobs(2, 5)] == names[2:5]  # across the two archives, in list order
    assert "revisitop1m.2.tar.gz" in {p.name for p in ddir.iterdir()}
    # The same files in a folder (downloaded by hand) are read the same way.
    (ddir / "revisitop1m.txt").write_text("\n".join(names + ["ff/missing.jpg"]) + "\n")
    local = DistractorSet("r1m", str(ddir), {}, tmp_path)
    assert [j.name for j in local.jobs(0, 6)] == names
    with pytest.raises(ValueError, match="1 listed image.*ff/missing.jpg"):
        list(local.jobs(0, 7))
