"""DVC plot data (rdfa.io.plots) and dvc.yaml's plot declarations: every dataset of `datasets` gets its plots."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rdfa.io import plots

REPO = Path(__file__).resolve().parents[1]
GRID = {
    "MAC": {"128": {"mAP": 0.4, "mAP_qe": 0.45}, "256": {"mAP": None, "mAP_qe": None, "reason": "too large"}},
    "R-MAC+G": {"128": {"mAP": 0.5, "mAP_qe": 0.55}, "256": {"mAP": 0.52, "mAP_qe": 0.6}},
}
#: What dvc.yaml's methods stage declares per dataset: data files drawn by a template, and figures.
PLOT_FILES = ["map_vs_d.json", "map_vs_d_qe.json", "pr.json", "map_vs_d.png", "pr.png", "figure2.png"]


def test_map_vs_d_records_are_long_and_skip_missing_cells():
    assert plots.map_vs_d_records(GRID, [128, 256]) == [
        {"method": "MAC", "D": 128, "mAP": 0.4},
        {"method": "R-MAC+G", "D": 128, "mAP": 0.5}, {"method": "R-MAC+G", "D": 256, "mAP": 0.52}]
    assert plots.map_vs_d_records(GRID, [256], "mAP_qe") == [{"method": "R-MAC+G", "D": 256, "mAP_qe": 0.6}]


def test_by_method_records_turn_fields_into_methods():
    wide = [{"recall": 0.0, "precision": 1.0, "precision_qe": 0.9}, {"recall": 1.0, "precision": 0.5,
                                                                     "precision_qe": 0.6}]
    assert plots.by_method_records(wide, "recall", {"precision": "O2_R", "precision_qe": "O2_R + QE"},
                                   "precision") == [
        {"method": "O2_R", "recall": 0.0, "precision": 1.0}, {"method": "O2_R", "recall": 1.0, "precision": 0.5},
        {"method": "O2_R + QE", "recall": 0.0, "precision": 0.9},
        {"method": "O2_R + QE", "recall": 1.0, "precision": 0.6}]


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_plots_are_declared_for_every_dataset(tmp_path):
    # dvc.yaml and params.yaml as they are, with two datasets: no pipeline run needed to see the declarations
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    datasets = ["synth", "coil100"]
    params["datasets"] = datasets
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    # no top-level plots naming fixed datasets: the foreach stages declare them
    assert "plots" not in yaml.safe_load((REPO / "dvc.yaml").read_text())
    for ds in datasets:
        out = tmp_path / "plots" / ds
        out.mkdir(parents=True)
        (out / "map_vs_d.json").write_text(json.dumps(plots.map_vs_d_records(GRID, [128, 256])))
        (out / "map_vs_d_qe.json").write_text(json.dumps(plots.map_vs_d_records(GRID, [128, 256], "mAP_qe")))
        (out / "pr.json").write_text(json.dumps(plots.by_method_records(
            [{"recall": 0.0, "p": 1.0}, {"recall": 1.0, "p": 0.5}], "recall", {"p": "O2_R"}, "precision")))
    proc = dvc(tmp_path, "plots", "show", "--json")
    shown = json.loads(proc.stdout)["data"]
    assert set(shown) == {f"plots/{ds}/{name}" for ds in datasets for name in PLOT_FILES}
    for ds in datasets:
        for name, y in (("map_vs_d.json", "mAP"), ("map_vs_d_qe.json", "mAP_qe"), ("pr.json", "precision")):
            spec = shown[f"plots/{ds}/{name}"][0]["content"]
            # the by_method template: a line per method, whatever the method names
            assert spec["encoding"]["color"]["field"] == "method", (ds, name)
            assert spec["encoding"]["y"]["field"] == y and spec["title"].startswith(f"{ds}: ")
            assert {row["method"] for row in spec["data"]["values"]} >= ({"O2_R"} if name == "pr.json"
                                                                         else set(GRID))
