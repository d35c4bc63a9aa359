"""bench/kernels.py pool runs on a pipeline's outputs and times every built-in method of the maps."""
import re
import shutil
import subprocess
import sys

import pytest


@pytest.mark.slow  # the session's dvc repro of the reduced synth
def test_pool_kernels_on_the_synth_outputs(synth_run, repo_dir, tmp_path):
    _, _, pristine = synth_run  # the reduced synth's outputs (tests/conftest.py)
    root = tmp_path / "project"
    shutil.copytree(pristine, root, symlinks=True)
    out = subprocess.run([sys.executable, str(repo_dir / "bench" / "kernels.py"), "pool", "--dataset", "synth",
                          "--maps", "6"], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = dict(re.findall(r"^\| ([^|]+?) \| ([0-9.]+) \|$", out.stdout, flags=re.M))
    methods = ["MAC", "SPoC", "CroW", "R-MAC", "R-MAC+G", "GeM", "O1_W", "O1_R"]
    assert {"read a map and its masks, h5py objects", "read a map and its masks, rdfa.io.keys.read_array",
            "the pooling worker's loop (rdfa.io.table1)"} | {f"{m} (rdfa.methods.table1.describe)"
                                                              for m in methods} <= set(rows), out.stdout
    assert all(float(ms) > 0 for ms in rows.values())
