"""bench/kernels.py pool runs on a pipeline's outputs and reports both ways of taking the maxima equal."""
import re
import shutil
import subprocess
import sys


def test_pool_kernels_on_the_synth_outputs(synth_run, repo_dir, tmp_path):
    _, _, pristine = synth_run  # the reduced synth's outputs (tests/conftest.py)
    root = tmp_path / "project"
    shutil.copytree(pristine, root, symlinks=True)
    out = subprocess.run([sys.executable, str(repo_dir / "bench" / "kernels.py"), "pool", "--dataset", "synth",
                          "--maps", "6"], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = dict(re.findall(r"^\| ([^|]+?) \| ([0-9.]+) \|$", out.stdout, flags=re.M))
    assert {"read a map and its masks, h5py objects", "read a map and its masks, rdfa.io.keys.read_array",
            "MAC and R-MAC maxima, float64 copy", "MAC and R-MAC maxima, float16 bits (rdfa.baselines)",
            "the pooling worker's loop (_Pooler.pool)"} <= set(rows), out.stdout
    assert all(float(ms) > 0 for ms in rows.values())
    assert "maxima that differ between the two ways: 0 of 6 maps" in out.stdout
