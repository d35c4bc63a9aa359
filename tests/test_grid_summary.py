"""bench/grid_summary.py: each method at its best D, nulls skipped, cropped and uncropped apart."""
import json

import pytest
from conftest import load_bench


@pytest.fixture(scope="module")
def grid_summary():
    return load_bench("grid_summary")


GRID = {
    "MAC": {"128": {"mAP": 0.61, "mAP_qe": 0.70}, "256": {"mAP": None, "mAP_qe": None, "reason": "D > n"}},
    "MAC_full": {"128": {"mAP": 0.90, "mAP_qe": 0.91}},
    "R-MAC": {"128": {"mAP": 0.68, "mAP_qe": 0.60}, "256": {"mAP": 0.69, "mAP_qe": 0.65}},
    "O1_R": {"128": {"mAP": 0.72, "mAP_qe": 0.50}},
    "O2_R": {"128": {"mAP": 0.84, "mAP_qe": 0.88}, "256": {"mAP": 0.78, "mAP_qe": 0.84}},
    "O2_R_full": {"128": {"mAP": 0.50, "mAP_qe": 0.52}},
}


def test_best_rival_at_its_own_best_d(grid_summary):
    s = grid_summary.summary(GRID, full=False, qe=False)
    assert s["best"] == (0.84, "128")
    assert s["rival"] == ((0.72, "128"), "O1_R")  # a variant of the paper's: best of all others
    assert s["baseline"] == ((0.69, "256"), "R-MAC")  # MAC_full's 0.90 is an uncropped figure: not compared
    s = grid_summary.summary(GRID, full=False, qe=True)
    assert s["rival"] == s["baseline"] == ((0.70, "128"), "MAC")


def test_uncropped_compares_full_variants_only(grid_summary):
    s = grid_summary.summary(GRID, full=True, qe=False)
    assert s["best"] == (0.50, "128") and s["rival"] == ((0.90, "128"), "MAC")


def test_prints_a_row_per_run_and_dataset(grid_summary, tmp_path, capsys):
    (tmp_path / "synth_methods.json").write_text(json.dumps({"methods": GRID}))
    (tmp_path / "synth+extra_methods.json").write_text(json.dumps({"methods": {"O2_R": {"128": {"mAP": None}}}}))
    assert grid_summary.main([f"run={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "| run | synth | 0.840 | 0.780 | 0.840 | 0.690 (R-MAC, 256) | 0.720 (O1_R, 128) |" in out
    assert "| run | synth+extra | n/a | n/a | n/a | n/a | n/a |" in out
