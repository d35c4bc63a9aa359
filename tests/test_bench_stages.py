"""bench/stages.py and bench/scaling.py: the stage list, the per-child measurements, the records and tables,
the bare-forward measurement and the replicated sets, on fake stages and a five-image dataset (no pipeline run,
nothing timed)."""
import json
import sys

import numpy as np
import pytest
from conftest import load_bench


def load(repo_dir, name):
    return load_bench(name)


@pytest.fixture(scope="module")
def stages(repo_dir):
    return load(repo_dir, "stages")


def test_stage_commands_follow_dvc_yaml(stages, repo_dir):
    import yaml

    commands = stages.stage_commands(repo_dir, "coil100")
    # Every stage of a dataset, in dvc.yaml's order; the distractor stages (one per `distractors` entry) are not.
    declared = yaml.safe_load((repo_dir / "dvc.yaml").read_text())["stages"]
    assert [name for name, _ in commands] == [name for name, stage in declared.items()
                                              if stage.get("foreach", "${datasets}") == "${datasets}"]
    assert "distractors" in declared and "distractors" not in dict(commands)
    argv = dict(commands)
    assert argv["features"] == [sys.executable, "stages/features.py", "--dataset", "coil100"]
    evaluate = argv["evaluate"]  # its own arguments, ${item} substituted
    assert evaluate[:4] == [sys.executable, "stages/evaluate.py", "--gnd", "data/coil100/gnd.json"]
    assert "metrics/coil100.json" in evaluate and not any("${" in a for a in evaluate)
    assert argv["table"][1] == "stages/table.py"


def fake_stages(tmp_path):
    py = sys.executable
    return [("small", [py, "-c", "print('small')"]),
            ("big", [py, "-c", "b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096])"]),
            ("fails", [py, "-c", "import sys; print('boom'); sys.exit(3)"]),
            ("never", [py, "-c", "pass"])]


@pytest.mark.slow
def test_run_stages_measures_each_child_and_stops_at_a_failure(stages, repo_dir, tmp_path):
    # From a small Python process, as bench/stages.py runs: Linux carries a parent's peak RSS into a child
    # across fork and exec, so inside this (large) pytest process every child would report at least its size.
    import subprocess

    script = (f"import importlib.util, json, sys\n"
              f"spec = importlib.util.spec_from_file_location('s', {str(repo_dir / 'bench' / 'stages.py')!r})\n"
              "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
              "from pathlib import Path\n"
              "said = []\n"
              f"runs = m.run_stages(json.loads(sys.argv[1]), Path({str(tmp_path)!r}), Path({str(tmp_path / 'logs')!r}),"
              " gpu_memory=False, echo=said.append)\n"
              "print(json.dumps({'runs': runs, 'said': said}))\n")
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(fake_stages(tmp_path))], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    runs, said = result["runs"], result["said"]
    assert [r["stage"] for r in runs] == ["small", "big", "fails"]
    small, big, fails = runs
    assert big["peak_rss_mb"] > 300 > small["peak_rss_mb"]  # per child, not the running maximum
    assert fails["returncode"] == 3 and (tmp_path / "logs" / "fails.log").read_text().strip() == "boom"
    assert any("fails failed (exit status 3)" in s and "boom" in s for s in said)
    recs = stages.records(runs, 50)
    assert set(recs[0]) == {"stage", "seconds", "images", "images_per_s", "peak_rss_mb", "share"}
    assert sum(r["share"] for r in recs) == pytest.approx(1, abs=1e-3)
    assert recs[-1]["failed"] is True and "gpu_peak_mb" not in recs[0]
    table = stages.markdown(recs, "fake")
    assert "| fails FAILED |" in table and "| **total** |" in table


def test_records_and_table_with_the_bare_forward(stages):
    runs = [{"stage": "data", "seconds": 1.0, "peak_rss_mb": 50.0, "returncode": 0},
            {"stage": "features", "seconds": 8.0, "peak_rss_mb": 900.0, "returncode": 0, "gpu_peak_mb": 1200.0},
            {"stage": "points", "seconds": 1.0, "peak_rss_mb": 300.0, "returncode": 0}]
    forward = {"seconds": 6.0, "peak_rss_mb": 800.0, "network_inputs": 120, "precision": "bf16", "batch_size": 8,
               "device": "cpu", "note": None}
    recs = stages.records(runs, 100, forward)
    fwd = recs[-1]
    assert fwd["stage"] == stages.FORWARD and fwd["forward_over_features"] == 0.75
    assert fwd["share"] == 0.6 and fwd["images_per_s"] == pytest.approx(100 / 6, rel=1e-3)
    assert sum(r["share"] for r in recs[:-1]) == pytest.approx(1)  # the forward lies inside features' share
    assert recs[1]["gpu_peak_mb"] == 1200.0
    table = stages.markdown(recs, "fake")
    assert "throughput = 75 % of the bare forward's" in table
    assert "| **total** | 10.0 | 10 |" in table  # the forward is not added to the total
    json.dumps(recs)


def test_gpu_wrapper_runs_the_script_as_python_would(stages, tmp_path):
    script = tmp_path / "stage.py"
    script.write_text("import sys\nprint(sys.argv[1:], sys.path[0])\nsys.exit(int(sys.argv[1]))\n")
    run = stages.run_child([sys.executable, str(script), "4", "--x"], tmp_path, stages.child_env(tmp_path),
                           tmp_path / "log", gpu_memory=True)
    assert run["returncode"] == 4 and "gpu_peak_mb" not in run  # no CUDA used: nothing reported
    assert (tmp_path / "log").read_text().strip() == f"['4', '--x'] {tmp_path}"


@pytest.fixture(scope="module")
def tiny_workspace(tmp_path_factory, repo_dir):
    """A workspace with a five-image dataset of two sizes and one boxed query; no outputs."""
    import yaml
    from PIL import Image

    ws = tmp_path_factory.mktemp("ws")
    images = ws / "data" / "tiny" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = []
    for i, (h, w) in enumerate([(64, 64), (64, 64), (64, 96), (64, 64), (64, 64)]):
        names.append(f"im{i}.png")
        Image.fromarray(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)).save(images / names[-1])
    gnd = {"imlist": names[:4], "qimlist": [names[4]], "gnd": [{"ok": [0], "junk": [], "bbx": [0, 0, 40, 40]}]}
    (ws / "data" / "tiny" / "gnd.json").write_text(json.dumps(gnd))
    params = yaml.safe_load((repo_dir / "params.yaml").read_text())
    params["features"]["size"]["tiny"] = {"max_side": None, "min_side": None, "max_pixels": 16777216}
    params["runtime"] = {"device": "cpu", "threads": 1, "batch_size": 2}  # params.yaml: bf16
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    return ws


def test_forward_only_covers_every_network_input_in_same_size_batches(stages, tiny_workspace, tmp_path):
    out = tmp_path / "forward.json"
    assert stages.main(["tiny", "--workspace", str(tiny_workspace), "--forward-only", str(out)]) == 0
    result = json.loads(out.read_text())
    # 4 database images, the boxed query's crop and its uncropped image (full/0)
    assert result["network_inputs"] == 6 and result["seconds"] > 0 and result["device"] == "cpu"
    assert result["precision"] == "bf16" and result["batch_size"] == 2 and result["note"] is None
    batches = list(stages.same_size_batches([np.zeros(s) for s in [(2,), (2,), (2,), (3,), (2,)]], 2))
    assert [len(b) for b in batches] == [2, 1, 1, 1]


def test_scaling_replicates_the_database_and_keeps_the_queries(repo_dir, tiny_workspace, tmp_path):
    scaling = load(repo_dir, "scaling")
    images, gnd = scaling.source_set(tiny_workspace / "data" / "tiny", base=3, n_queries=5)
    assert gnd["imlist"] == ["im0.png", "im1.png", "im2.png"] and gnd["qimlist"] == ["im4.png"]
    new = scaling.replicate(images, gnd, 3, tmp_path / "set")
    assert len(new["imlist"]) == 9 and new["imlist"][3] == "c01_im0.png" and new["qimlist"] == ["im4.png"]
    assert new["gnd"] == [{"ok": [0, 3, 6], "junk": [], "bbx": [0, 0, 40, 40]}]
    assert sorted(p.name for p in (tmp_path / "set" / "images").iterdir()) == sorted(new["imlist"] + ["im4.png"])
    assert json.loads((tmp_path / "set" / "gnd.json").read_text()) == new
    # a bare folder of images: each query is its own positive, in every copy
    images, gnd = scaling.source_set(tiny_workspace / "data" / "tiny" / "images", base=None, n_queries=2)
    new = scaling.replicate(images, gnd, 2, tmp_path / "bare")
    assert new["qimlist"] == ["c00_im0.png", "c00_im1.png"] and new["gnd"][1]["ok"] == [1, 6]
    recs = [{"stage": s, "copies": k, "images": n, "seconds": 0, "ms_per_image": ms, "peak_rss_mb": 1}
            for k, n, s, ms in [(1, 10, "data", 2.0), (1, 10, "features", 10.0), (4, 40, "data", 2.0),
                                (4, 40, "features", 12.0)]]
    assert "| total | 12.0 | 14.0 | 1.17 |" in scaling.table(recs, [1, 4])
    params = {"whitening": {"D": 512}}
    scaling.set_param(params, "whitening.D=64")
    scaling.set_param(params, "methods.D=[32, 64]")
    assert params == {"whitening": {"D": 64}, "methods": {"D": [32, 64]}}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        scaling.set_param(params, "whitening.D")
