"""Every stage script runs on its own and explains itself."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = sorted(p.name for p in (REPO / "stages").glob("*.py"))


def test_every_dvc_stage_has_a_script():
    import yaml

    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for name, stage in dvc["stages"].items():
        cmd = stage.get("do", stage)["cmd"]
        script = cmd.split()[1]
        assert (REPO / script).is_file(), f"stage {name} runs {script}, which does not exist"


@pytest.mark.slow
@pytest.mark.parametrize("script", STAGES)
def test_help(script):
    proc = subprocess.run([sys.executable, str(REPO / "stages" / script), "--help"],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and len(proc.stdout.splitlines()) > 3


def test_blas_threads_reaches_scipys_openblas_loaded_later():
    """A one-thread block must hold scipy's eigendecompositions too: scipy ships its own OpenBLAS,
    loaded at its first import, which a limit set before that load would miss (the methods stage's
    O2_W fit ran on every core beside the pooling processes). Checked in a fresh interpreter, where
    scipy.linalg is not loaded yet."""
    code = textwrap.dedent("""
        import json, sys
        import numpy
        assert "scipy.linalg" not in sys.modules
        from threadpoolctl import threadpool_info
        from rdfa.io.stage import blas_threads
        with blas_threads(1):
            from scipy.linalg import eigh  # the lazy import inside rdfa.whitening.top_eigenvectors
            inside = [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
        print(json.dumps(inside))
    """)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=REPO, check=True).stdout
    libraries = json.loads(out)
    assert len({path for path, _ in libraries}) >= 2, libraries  # numpy's and scipy's OpenBLAS
    assert all(threads == 1 for _, threads in libraries), libraries
