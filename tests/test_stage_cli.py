"""Every stage script runs on its own and explains itself."""
import subprocess
import sys
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


@pytest.mark.parametrize("script", STAGES)
def test_help(script):
    proc = subprocess.run([sys.executable, str(REPO / "stages" / script), "--help"],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and len(proc.stdout.splitlines()) > 3
