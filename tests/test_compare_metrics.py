"""bench/compare_metrics.py: the check behind "metrics equal within a tolerance" between two runs."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(a, b, *extra):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "compare_metrics.py"), str(a), str(b), *extra],
                          capture_output=True, text=True)


def project(path: Path, methods: dict, headline: float) -> Path:
    (path / "metrics").mkdir(parents=True)
    (path / "metrics" / "x.json").write_text(json.dumps({"mAP": headline, "n_queries": 4}))
    (path / "metrics" / "x_methods.json").write_text(json.dumps({"methods": methods}))
    return path


def test_equal_within_tolerance_and_differences_named(tmp_path):
    cells = {"MAC": {"128": {"mAP": 0.5, "mAP_qe": None}}}
    a = project(tmp_path / "a", cells, 0.7)
    b = project(tmp_path / "b", cells, 0.7 + 5e-7)
    ok = run(a, b)
    assert ok.returncode == 0 and "equal within 1e-06" in ok.stdout
    c = project(tmp_path / "c", {"MAC": {"128": {"mAP": 0.5 + 3e-3, "mAP_qe": 0.1}}}, 0.7)
    bad = run(a, c)
    assert bad.returncode == 1
    assert "methods.MAC.128.mAP: 0.5 vs 0.503" in bad.stdout
    assert "methods.MAC.128.mAP_qe: None vs 0.1" in bad.stdout  # null against a number is a difference
    assert run(a, c, "--tol", "0.01").returncode == 1  # the null cell still differs
