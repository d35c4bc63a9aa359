"""bench/describe.py: per-image cost of each step of describing an image (issue 25).

Not a timing test: it checks what the script reports (every step, the CPU, the image count, a table)
on a reduced synth run, and its pure helpers against hand-made inputs.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import load_bench

STEPS = ("decode", "network", "points", "regions", "descriptors", "whitening")


@pytest.fixture(scope="module")
def bench():
    return load_bench("describe")


def test_cpu_description_names_the_model_and_the_bf16_flags(bench):
    info = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
            "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert bench.cpu_description(info) == "Intel(R) Xeon(R) Platinum 8480+ (avx2 avx512f avx512_bf16 amx_tile amx_bf16)"
    info = "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f\n"
    assert bench.cpu_description(info) == "AMD EPYC (avx2 avx512f; no avx512_bf16 amx_tile amx_bf16)"


def test_table_gives_every_step_its_share_and_the_points_regions_ratio(bench):
    ms = dict(zip(STEPS, (5.0, 40.0, 30.0, 10.0, 10.0, 5.0)))
    text = bench.table({"ms_per_image": ms, "dataset": "synth", "n_images": 7})
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines()[2:]}
    assert [rows[s] for s in STEPS] == ["5.0", "40.0", "30.0", "10.0", "10.0", "5.0"]
    assert rows["**total**"] == "**100.0**" and rows["points + regions / network"] == "1.00x"
    assert "| network | 40.0 | 40 % |" in text


def test_grid_cells_follow_the_pixel_centre_convention(bench):
    # a 64x128 image on a 2x4 grid: 32-pixel cells; pixel x covers [x - 0.5, x + 0.5]
    points = np.array([[0.0, 0.0], [31.4, 31.4], [31.6, 0.0], [127.0, 63.0], [-0.4, 40.0]])
    assert bench.grid_cells(points, (64, 128), (2, 4)) == {(0, 0), (0, 1), (1, 3), (1, 0)}


@pytest.mark.slow
def test_describe_bench_on_a_synth_run(synth_run, repo_dir, tmp_path):
    root, _, _ = synth_run
    out = tmp_path / "describe.json"
    proc = subprocess.run([sys.executable, str(repo_dir / "bench" / "describe.py"), "--root", str(root),
                           "--dataset", "synth", "--images", "3", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert sorted(result["ms_per_image"]) == sorted(STEPS)
    assert all(v > 0 for v in result["ms_per_image"].values())
    assert result["n_images"] == 3 and result["cpu"] and result["settings"]["n_max"] == 1000
    assert result["median_regions"] >= 1
    for step in STEPS:
        assert f"| {step} | {result['ms_per_image'][step]:.1f} |" in proc.stdout

    out = tmp_path / "detectors.json"
    proc = subprocess.run([sys.executable, str(repo_dir / "bench" / "describe.py"), "--root", str(root),
                           "--dataset", "synth", "--images", "2", "--detectors", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["detectors"]
    assert {"today", "no affine adaptation", "shrunk 2x", "shrunk 4x, N_min / 16", "N_max 500"} <= set(rows)
    # today's points against themselves: every cell and every region agrees
    assert rows["today"]["cells_jaccard"] == 1.0 and rows["today"]["same_regions_share"] == 1.0
    assert rows["N_max 500"]["median_kept"] <= 500
    assert all(0.0 <= r["cells_jaccard"] <= 1.0 and r["points_ms"] > 0 for r in rows.values())
