"""End to end with DVC itself: `dvc repro` on a reduced synth, and what a parameter change re-runs.

These run the real stage scripts in a throw-away copy of the project. The baseline (`dvc repro` of
REDUCED) is built once per session (tests/conftest.py's ``synth_run``) and never changed: a test that
changes parameters or outputs works on its own copy of it (``fresh_project``), so each test starts from
the same state and runs alone (``pytest tests/test_pipeline.py::test_x``) or in any order. Slow tier.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", "stages", "rdfa", "pyproject.toml", "plugins"]

# Small enough for CI, big enough to be a retrieval problem.
REDUCED = {
    "data": {"synth": {"seed": 3, "n_objects": 6, "n_db": 40, "n_distractors": 8, "width": 320, "height": 240}},
    "saliency": {"n_max": 1000, "n_min": 100},
    "pca": {"k_prime": 24},
    "whitening": {"D": 48},
    "ranking": {"n_qe": 3},
    "methods": {"D": [24, 48]},
}


def deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def run_dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TQDM_DISABLE"] = "1"
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def dvc(project: Path, *args: str) -> str:
    proc = run_dvc(project, *args)
    return proc.stdout + proc.stderr


def dvc_json(project: Path, *args: str):
    return json.loads(run_dvc(project, *args, "--json").stdout)


def always_changed() -> set[str]:
    """The stages dvc.yaml marks ``always_changed`` (``source``: a cheap digest run on every repro)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name for name, body in stages.items() if body.get("do", body).get("always_changed")}


def stages_run(output: str) -> set[str]:
    """The stages a `dvc repro` ran because something they depend on changed (stages that run on every
    repro by design, :func:`always_changed`, are left out)."""
    ran = {m.split("@")[0] for m in re.findall(r"Running stage '([^']+)'", output)}
    return ran - always_changed()


def set_params(project: Path, changes: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(deep_update(params, changes), sort_keys=False))


def copy_project(root: Path) -> None:
    """The project's code and DVC setup (no data, no cache) in ``root``, a git repository of its own."""
    for name in PROJECT_FILES:
        src = REPO / name
        if not src.exists() and name == "plugins":
            continue  # checkouts from before plugins/ existed
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)


@pytest.fixture(scope="module")
def project(synth_run):
    """The reduced synth after `dvc repro` (tests/conftest.py's session run, shared with tests/test_ray.py).
    Read only: a test that changes anything in it takes ``fresh_project`` instead."""
    root, out, _ = synth_run
    return root, out


def copy_baseline(root: Path, dest: Path) -> Path:
    """A full copy of the baseline project ``root`` (its DVC cache and git repository included, DVC's
    state database and locks left out) at ``dest``: `dvc status` there says everything is up to date."""
    def ignore(folder, names):
        return ["tmp"] if Path(folder) == root / ".dvc" else ["__pycache__"]

    shutil.copytree(root, dest, symlinks=True, ignore=ignore)
    return dest


@pytest.fixture
def fresh_project(synth_run, tmp_path) -> Path:
    """This test's own copy of the baseline project, to change parameters and re-run in."""
    return copy_baseline(synth_run[0], tmp_path / "project")


def test_repro_runs_every_stage_and_writes_metrics(project):
    root, out = project
    assert stages_run(out) == {"data", "features", "points", "regions", "pca", "descriptors",
                               "whitening", "ranking", "methods", "evaluate", "report", "table"}
    metrics = json.loads((root / "metrics" / "synth.json").read_text())
    gnd = json.loads((root / "data" / "synth" / "gnd.json").read_text())
    assert metrics["n_images"] == 40 and metrics["n_queries"] == len(gnd["qimlist"]) == 6
    assert metrics["n_scored"] == sum(bool(g["ok"]) for g in gnd["gnd"])
    # chance level: a random ranking's AP is about the fraction of positives
    chance = sum(len(g["ok"]) for g in gnd["gnd"]) / len(gnd["gnd"]) / metrics["n_images"]
    assert 0 <= metrics["mAP"] <= 1 and 0 <= metrics["mAP_qe"] <= 1
    assert metrics["mAP"] > 2 * chance, (metrics, chance)
    # a second repro with nothing changed runs nothing
    assert stages_run(dvc(root, "repro")) == set()


def test_table_1_comparison_is_in_the_metrics_and_the_table(project):
    root, _ = project
    metrics = json.loads((root / "metrics" / "synth.json").read_text())
    grid = json.loads((root / "metrics" / "synth_methods.json").read_text())["methods"]
    results = json.loads((root / "results" / "synth.json").read_text())
    names = ["MAC", "SPoC", "CroW", "R-MAC", "R-MAC+G", "GeM", "O1_W", "O1_R", "O2_W", "O2_R"]
    assert set(names) <= set(grid)
    assert all(set(cell) == {"mAP", "mAP_qe"} for cells in grid.values() for cell in cells.values())
    # the proposed method at the configured D is the pipeline's own result
    assert grid["O2_R"]["48"]["mAP"] == pytest.approx(metrics["mAP"], abs=1e-6)
    assert grid["O2_R"]["48"]["mAP_qe"] == pytest.approx(metrics["mAP_qe"], abs=1e-6)
    # 40 database images cannot span 48 whitened dimensions for one-descriptor methods: said, not hidden,
    # in the results (the metrics hold the null)
    assert grid["MAC"]["48"]["mAP"] is None and results["methods"]["MAC"]["48"]["reason"]
    assert results["protocol"] == "original" and results["methods_info"]["whitening_learned_on"] == "synth"
    assert {k: results[k] for k in metrics} == metrics
    table = (root / "metrics" / "table.md").read_text()
    for name in names:
        assert name in table
    assert "n/a MAC at D = 48:" in table          # the reason, read from results/
    assert (root / "plots" / "synth" / "figure2.png").stat().st_size > 10_000


def leaves(tree, prefix=""):
    """``(dotted key, value)`` of every leaf of a JSON tree (lists count as leaves)."""
    if isinstance(tree, dict):
        return [leaf for key, value in tree.items() for leaf in leaves(value, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), tree)]


def test_metrics_are_numbers_and_dvc_shows_them_in_short_lines(project):
    root, _ = project
    paths = sorted((root / "metrics").glob("*.json"))
    assert [p.name for p in paths] == ["synth.json", "synth_methods.json"]
    for path in paths:
        bad = [(key, value) for key, value in leaves(json.loads(path.read_text()))
               if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)))]
        assert not bad, f"{path.name}: not a number: {bad[:5]}"
    shown = run_dvc(root, "metrics", "show", "metrics/synth.json").stdout
    lines = shown.splitlines()
    assert lines and lines[0].split()[:3] == ["Path", "mAP", "mAP_qe"], shown
    assert max(len(line) for line in lines) < 300, shown
    # the grid is a DVC metric too: `dvc metrics show --json` reads both files
    data = dvc_json(root, "metrics", "show")
    files = next(iter(data.values()))["data"]
    assert set(files) == {"metrics/synth.json", "metrics/synth_methods.json"}


def test_dvc_plots_show_renders_the_plots_of_the_dataset(project):
    root, _ = project
    shown = dvc_json(root, "plots", "show")
    assert not shown.get("errors"), shown.get("errors")
    data = shown["data"]
    for name in ("map_vs_d.json", "map_vs_d_qe.json", "pr.json"):
        values = data[f"plots/synth/{name}"][0]["content"]["data"]["values"]
        assert {"O2_R"} <= {row["method"] for row in values}, name
    for name in ("map_vs_d.png", "pr.png", "figure2.png"):
        assert f"plots/synth/{name}" in data


def test_the_whitening_transform_is_kept_and_gives_the_stored_vectors(project):
    import h5py

    from rdfa.io.provenance import load_whitening
    from rdfa.whitening import whitened

    root, _ = project
    work = root / "features" / "synth"
    pca, mode = load_whitening(work / "whitened.h5")
    assert mode.mode == "pca" and pca.components.shape == (24 * 25 // 2, 48)
    with h5py.File(work / "whitened.h5", "r") as w, h5py.File(work / "descriptors.h5", "r") as d:
        assert w.attrs["D"] == 48 and w.attrs["learned_on"] == "synth"
        for group in ("db", "query", "full"):
            # float32 products: the stage's blocks of rows and one product of all round alike to ~1e-7.
            np.testing.assert_allclose(whitened(d[f"{group}/desc"][()], pca), w[f"{group}/desc"][()],
                                       rtol=1e-5, atol=1e-6)


#: How far Table 1's cells may move with the runtime settings: the whitening fits' eigensolver
#: (LAPACK in OpenBLAS) sums in an order that depends on its thread count (docs/reproducibility.md).
CELL_TOLERANCE = 1e-4


def assert_same_cells(mine: dict, theirs: dict) -> None:
    """The same methods, D, reasons and warnings; every mAP within :data:`CELL_TOLERANCE`, the
    fits' spectrum figures (variance kept, last axis) within 1e-3 relative."""
    assert mine.keys() == theirs.keys()
    for method, cells in mine.items():
        assert cells.keys() == theirs[method].keys(), method
        for dim, cell in cells.items():
            other = theirs[method][dim]
            assert cell.keys() == other.keys(), (method, dim)
            for key, value in cell.items():
                if isinstance(value, float) and isinstance(other[key], float):
                    tolerance = CELL_TOLERANCE if key.startswith("mAP") else 1e-3 * abs(other[key])
                    assert abs(value - other[key]) <= tolerance, (method, dim, key, value, other[key])
                else:
                    assert value == other[key], (method, dim, key)


def test_the_methods_stage_reuses_the_whitening_fit_for_o2_r_with_the_cells_of_its_own_fit(project, tmp_path):
    """O2_R's whitening in Table 1 is the whitening stage's (whitened.h5); fitting it in the
    methods stage instead (whitened.h5 said to be learned on other rows) gives the same cells, and so
    does pooling the maps in one process instead of several."""
    import h5py

    root, _ = project
    reused = json.loads((root / "features" / "synth" / "methods.json").read_text())
    assert reused["info"]["O2_R_whitening"] == "the whitening stage's (whitened.h5, D=48)"
    assert reused["info"]["O2_R_matches_ranking_stage"] is True
    other = tmp_path / "project"
    (other / "data").mkdir(parents=True)
    (other / "data" / "synth").symlink_to(root / "data" / "synth")
    work = other / "features" / "synth"
    work.mkdir(parents=True)
    for path in (root / "features" / "synth").iterdir():
        if path.name not in ("whitened.h5", "methods.json"):
            (work / path.name).symlink_to(path)
    shutil.copy(root / "features" / "synth" / "whitened.h5", work / "whitened.h5")
    with h5py.File(work / "whitened.h5", "a") as f:
        f.attrs["n_train"] = int(f.attrs["n_train"]) - 1
    if (root / "plugins").is_dir():
        (other / "plugins").symlink_to(root / "plugins")
    # One pooling process (the repro used runtime.workers 0, all cores): the rows do not depend on it.
    shutil.copy(root / "params.yaml", other / "params.yaml")
    set_params(other, {"runtime": {"workers": 1}})
    proc = subprocess.run([sys.executable, str(root / "stages" / "methods.py"), "--dataset", "synth",
                           "--root", str(other), "--params", str(other / "params.yaml")],
                          cwd=other, env=dict(os.environ, TQDM_DISABLE="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    fitted = json.loads((work / "methods.json").read_text())
    assert fitted["info"]["O2_R_whitening"] == "fitted here"
    assert fitted["info"]["O2_R_matches_ranking_stage"] is True
    # The same cells, within the stated tolerance of the runtime settings (here one process and two
    # BLAS threads for the fits, against the repro's processes of one thread each).
    assert_same_cells(fitted["methods"], reused["methods"])
    assert fitted["methods"]["O2_R"]["24"]["mAP"] is not None


def test_every_whitening_mode_from_one_methods_run_and_the_goal_check(fresh_project, tmp_path):
    """bench/whitening.py: one run of the methods stage gives every method under pca, shrink, power and
    none (none: the same cell at every D, equal to searching the raw l2 descriptors); the workspace's own
    methods.json is left as it was; the results say which whitening and which D rule applied."""
    root = fresh_project
    before = (root / "features" / "synth" / "methods.json").read_bytes()
    out = tmp_path / "whitening.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "whitening.py"), "synth", "--workspace", str(root),
                           "--setting", "shrink=30,power=0.2", "--recommend", "shrink s=30", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (root / "features" / "synth" / "methods.json").read_bytes() == before
    report = json.loads(out.read_text())
    cells = {(c["method"], c["whitening"], c["D"]): (c["mAP"], c["mAP_qe"]) for c in report["cells"]}
    for method in ("MAC", "R-MAC", "O1_R", "O2_W", "O2_R"):
        assert {w for m, w, _ in cells if m == method} == {"pca", "shrink s=30", "power p=0.2", "none"}
        plain = {cells[(method, "none", d)] for d in (24, 48)}
        assert len(plain) == 1 and None not in next(iter(plain))
    # O2_R at whitening.D with the paper's whitening is the main pipeline's headline.
    metrics = json.loads((root / "metrics" / "synth.json").read_text())
    assert cells[("O2_R", "pca", 48)][0] == pytest.approx(metrics["mAP"], abs=1e-6)
    assert cells[("O2_R", "shrink s=30", 48)] != cells[("O2_R", "pca", 48)]
    goal = report["goal"]
    assert goal["recommended"] == "shrink s=30" and goal["cells_scored"] > 0
    assert goal["best_baseline"] in ("MAC", "SPoC", "CroW", "GeM", "R-MAC", "R-MAC+G")
    results = json.loads((root / "results" / "synth.json").read_text())
    assert results["info"]["whitening"] == "pca" and results["info"]["whitening_D_rule"]["D"] == 48
    assert "n/4" in results["methods_info"]["whitening_D_rule"]


def rdfa_search(root: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed `rdfa search`, run in the project as a user would."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run([str(Path(sys.executable).parent / "rdfa"), "search", "--dataset", "synth", *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)


def test_a_database_image_searched_without_a_box_finds_itself_first(project):
    from PIL import Image

    root, _ = project
    gnd = json.loads((root / "data" / "synth" / "gnd.json").read_text())
    names = gnd["imlist"][:3]
    proc = rdfa_search(root, *[f"data/synth/images/{n}" for n in names], "--top", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    # the index and the network loaded once for the three photos, one line per photo
    assert len(answers) == 3 and proc.stderr.count("loaded in") == 1, proc.stderr
    for name, answer in zip(names, answers):
        assert answer["query"] == f"data/synth/images/{name}" and answer["box"] is None
        results = answer["results"]
        assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
        assert results[0]["name"] == name and results[0]["score"] == pytest.approx(1.0, abs=1e-5), results[0]
        assert all(a["score"] >= b["score"] for a, b in zip(results, results[1:]))
        for r in results:
            width, height = Image.open(root / "data" / "synth" / "images" / r["name"]).size
            x1, y1, x2, y2 = r["region"]
            assert 0 <= x1 < x2 <= width - 1 and 0 <= y1 < y2 <= height - 1, (r, width, height)
        assert isinstance(answer["seconds"], float) and answer["seconds"] >= 0  # reported, not bounded
    print("rdfa search, seconds per photo:", [a["seconds"] for a in answers])


def test_a_query_with_its_box_ranks_as_the_pipeline_ranked_it(project, tmp_path):
    root, _ = project
    gnd = json.loads((root / "data" / "synth" / "gnd.json").read_text())
    ranks = json.loads((root / "features" / "synth" / "ranks.json").read_text())
    ranks_qe = json.loads((root / "features" / "synth" / "ranks_qe.json").read_text())
    q = next(i for i, entry in enumerate(gnd["gnd"]) if entry["bbx"] is not None)
    photo = f"data/synth/images/{gnd['qimlist'][q]}"
    box = [str(v) for v in gnd["gnd"][q]["bbx"]]
    for extra, expected in (([], ranks[q]), (["--qe"], ranks_qe[q])):
        proc = rdfa_search(root, photo, "--box", *box, "--top", "8", "--json", "--no-check", *extra)
        assert proc.returncode == 0, proc.stderr
        answer = json.loads(proc.stdout)
        assert [r["name"] for r in answer["results"]] == [gnd["imlist"][i] for i in expected[:8]], extra
    # The readable table and the picture
    picture = tmp_path / "search.png"
    proc = rdfa_search(root, photo, "--box", *box, "--top", "4", "--show", str(picture))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{photo}: 1 region, ") and lines[1].split()[:2] == ["rank", "score"]
    assert len(lines) == 6 and lines[2].split()[0] == "1" and lines[2].split()[-1] == gnd["imlist"][ranks[q][0]]
    assert picture.stat().st_size > 10_000


def test_search_refuses_outputs_that_are_out_of_date(fresh_project):
    root = fresh_project
    set_params(root, {"regions": {"L": 2}})
    proc = rdfa_search(root, "data/synth/images/" + json.loads(
        (root / "data" / "synth" / "gnd.json").read_text())["imlist"][0])
    assert proc.returncode == 2, proc.stdout
    assert "dataset 'synth': the pipeline's outputs are out of date (`dvc status`: regions@synth" in proc.stderr
    assert "run `dvc repro` first, or pass --no-check" in proc.stderr


def test_the_report_lists_every_query_and_a_browser_loads_it_cleanly(project, browser, tmp_path):
    root, _ = project
    gnd = json.loads((root / "data" / "synth" / "gnd.json").read_text())
    report = root / "reports" / "synth"
    page = report / "index.html"
    # light: thumbnails, not the images
    thumbs = list((report / "thumbs").iterdir())
    assert thumbs and max(p.stat().st_size for p in thumbs) < 30_000
    assert page.stat().st_size + sum(p.stat().st_size for p in thumbs) < 3_000_000
    browser.open(page)
    assert browser.console_errors() == []
    shown = browser.evaluate("Array.from(document.querySelectorAll('#queries td.q figcaption'))"
                             ".map(e => e.textContent)")
    assert shown == gnd["qimlist"]
    # every query row shows its top results, each marked
    marks = browser.evaluate("Array.from(document.querySelectorAll('#queries .hits.plain'))"
                             ".map(h => Array.from(h.children).map(f => f.className))")
    assert len(marks) == len(gnd["qimlist"]) and all(len(m) == 10 for m in marks)
    assert {c for m in marks for c in m} <= {"relevant", "irrelevant", "junk"} and any("relevant" in m for m in marks)
    assert browser.evaluate("document.querySelectorAll('table.grid tbody tr').length") >= 10
    browser.screenshot(tmp_path / "report.png")


# What follows every search: the Table 1 comparison, the metrics, the report and the table.
EVALUATION = {"methods", "evaluate", "report", "table"}


PER_IMAGE = {"features", "points", "regions", "pca", "descriptors", "whitening", "ranking"}


@pytest.mark.parametrize("change, expected", [
    ({"whitening": {"D": 40}}, {"whitening", "ranking"} | EVALUATION),
    ({"ranking": {"n_qe": 5}}, {"ranking"} | EVALUATION),
    ({"pca": {"k_prime": 20}}, {"pca", "descriptors", "whitening", "ranking"} | EVALUATION),
    ({"descriptors": {"log_eps": 3e-2}}, {"descriptors", "whitening", "ranking"} | EVALUATION),
    ({"regions": {"L": 2}}, {"regions", "pca", "descriptors", "whitening", "ranking"} | EVALUATION),
    ({"saliency": {"n_max": 300}}, PER_IMAGE - {"features"} | EVALUATION),
    ({"features": {"size": {"synth": {"max_side": 300}}}}, PER_IMAGE | EVALUATION),
    # Another dataset's size policy, and the runtime group, change nothing here.
    ({"features": {"size": {"coil100": {"min_side": 1024}}}}, set()),
    ({"runtime": {"threads": 1, "blas_threads": 2, "workers": 1, "batch_size": 3, "chunk_rows": 100}}, set()),
], ids=["D", "n_qe", "k_prime", "log_eps", "L", "n_max", "size", "other-size", "runtime"])
def test_a_parameter_change_reruns_exactly_what_depends_on_it(fresh_project, change, expected):
    """Each change made alone to the baseline (its own copy): what DVC re-runs."""
    root = fresh_project
    set_params(root, change)
    assert stages_run(dvc(root, "repro")) == expected


def test_runtime_settings_do_not_change_results(project, tmp_path):
    """Another worker count, batch size and chunk size (the `runtime:` group) give the same files:
    points, regions and descriptors bit for bit, feature maps and whitened vectors within the stated
    tolerance, and the same Table 1 cells (the methods stage pooled in one process, not in workers
    writing into shared memory)."""
    import h5py

    import rdfa.io  # noqa: F401  (registers the filter features.h5 is compressed with)

    root, _ = project
    copy = tmp_path / "project"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".dvc", ".git", "reports"))
    set_params(copy, {"runtime": {"threads": 1, "workers": 1, "batch_size": 1, "chunk_rows": 7}})
    work, ref = copy / "features" / "synth", root / "features" / "synth"
    env = dict(os.environ, TQDM_DISABLE="1")
    for stage in ("points", "regions", "descriptors", "whitening", "ranking", "methods", "features"):
        proc = subprocess.run([sys.executable, f"stages/{stage}.py", "--dataset", "synth"], cwd=copy, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr

    def datasets(path):
        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out

    for name in ("points.h5", "regions.h5", "descriptors.h5"):  # one process vs all cores: identical
        mine, theirs = datasets(work / name), datasets(ref / name)
        assert mine.keys() == theirs.keys() and mine
        for key in mine:
            np.testing.assert_array_equal(mine[key], theirs[key], err_msg=f"{name}: {key}")
    # Whitening learned in blocks of 7 rows instead of 16384: float32 block products round differently.
    mine, theirs = datasets(work / "whitened.h5"), datasets(ref / "whitened.h5")
    for key in ("db/desc", "query/desc", "full/desc"):
        np.testing.assert_allclose(mine[key], theirs[key], atol=1e-4, err_msg=key)
    assert json.loads((work / "ranks.json").read_text()) == json.loads((ref / "ranks.json").read_text())
    cells = json.loads((work / "methods.json").read_text())["methods"]
    assert_same_cells(cells, json.loads((ref / "methods.json").read_text())["methods"])
    assert cells["O1_R"]["24"]["mAP"]
    # One image per forward instead of a batch: within a float16 step or two of the stored maps.
    mine, theirs = datasets(work / "features.h5"), datasets(ref / "features.h5")
    assert mine.keys() == theirs.keys()
    for key in mine:
        np.testing.assert_allclose(mine[key].astype(np.float32), theirs[key].astype(np.float32),
                                   rtol=4e-3, atol=1e-3, err_msg=key)

