"""End to end with DVC itself: `dvc repro` on a reduced synth, and what a parameter change re-runs.

These run the real stage scripts in a throw-away copy of the project.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", "stages", "rdfa", "pyproject.toml"]

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


def stages_run(output: str) -> set[str]:
    return {m.split("@")[0] for m in re.findall(r"Running stage '([^']+)'", output)}


def set_params(project: Path, changes: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(deep_update(params, changes), sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    set_params(root, REDUCED)
    out = dvc(root, "repro")
    return root, out


def test_repro_runs_every_stage_and_writes_metrics(project):
    root, out = project
    assert stages_run(out) == {"data", "features", "points", "regions", "pca", "descriptors",
                               "whitening", "ranking", "methods", "evaluate", "table"}
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


# What follows every search: the Table 1 comparison, the metrics and the table.
EVALUATION = {"methods", "evaluate", "table"}


PER_IMAGE = {"features", "points", "regions", "pca", "descriptors", "whitening", "ranking"}


@pytest.mark.parametrize("change, expected", [
    ({"whitening": {"D": 40}}, {"whitening", "ranking"} | EVALUATION),
    ({"ranking": {"n_qe": 5}}, {"ranking"} | EVALUATION),
    ({"pca": {"k_prime": 20}}, {"pca", "descriptors", "whitening", "ranking"} | EVALUATION),
    ({"descriptors": {"log_eps": 1e-2}}, {"descriptors", "whitening", "ranking"} | EVALUATION),
    ({"regions": {"L": 2}}, {"regions", "pca", "descriptors", "whitening", "ranking"} | EVALUATION),
    ({"saliency": {"n_max": 300}}, PER_IMAGE - {"features"} | EVALUATION),
    ({"features": {"size": {"synth": {"max_side": 300}}}}, PER_IMAGE | EVALUATION),
    # Another dataset's size policy, and the runtime group, change nothing here.
    ({"features": {"size": {"coil100": {"min_side": 1024}}}}, set()),
    ({"runtime": {"threads": 1, "blas_threads": 2}}, set()),
], ids=["D", "n_qe", "k_prime", "log_eps", "L", "n_max", "size", "other-size", "runtime"])
def test_a_parameter_change_reruns_exactly_what_depends_on_it(project, change, expected):
    root, _ = project
    set_params(root, change)
    assert stages_run(dvc(root, "repro")) == expected
