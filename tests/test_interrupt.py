"""Ctrl+C (SIGINT) during a stage: one line naming the stage, exit status 130, no traceback, no output
written, every time (rdfa.io.stage.run_stage's own handler, not Python's KeyboardInterrupt)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ONE_LINE = "interrupted (Ctrl+C); stopped with exit status 130, the outputs it had not finished are not written"


def _start(args: list[str], root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _interrupt(proc: subprocess.Popen, delay: float) -> tuple[str, float]:
    """Wait for the stage's first log line (its handler is in place then), ``delay`` more seconds, then
    SIGINT; the rest of stderr, and how long the process took to end after the signal."""
    first = proc.stderr.readline()
    time.sleep(delay)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    return first + rest, time.monotonic() - sent


def _check_one_line(err: str, name: str, returncode: int) -> None:
    assert returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Exception ignored" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1] == f"{name}: {ONE_LINE}", err
    assert sum("interrupted" in line for line in lines) == 1, err


# Seconds after the first log line: as the data stage starts generating synth, and further in.
@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.4, 1.0, 2.0])
def test_ctrl_c_during_the_data_stage(tmp_path, delay):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["synth"] = dict(params["data"]["synth"], n_db=400, n_distractors=40)  # a run of several seconds
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = _start([str(REPO / "stages" / "data.py"), "--dataset", "synth", "--params", "params.yaml",
                   "--root", "."], tmp_path)
    err, took = _interrupt(proc, delay)
    _check_one_line(err, "data@synth", proc.returncode)
    assert took < 10
    assert not (tmp_path / "data" / "synth").exists()  # the folder appears only when complete


SPINNER = '''
import logging, sys, time, weakref
from rdfa.io.stage import run_stage


class Thing:
    pass


def busy(_):
    # Nearly all of the time is spent here, in a weakref callback: Python's default handler raises
    # KeyboardInterrupt in it, prints "Exception ignored in" and runs on.
    start = time.monotonic()
    while time.monotonic() - start < 0.05:
        pass


def main(dataset, settings, paths):
    logging.getLogger("rdfa").info("spinning")
    end = time.monotonic() + 60
    refs = []
    while time.monotonic() < end:
        thing = Thing()
        refs.append(weakref.ref(thing, busy))
        del thing
        refs.clear()


sys.exit(run_stage(main, "spin in weakref callbacks"))
'''


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.5])
def test_ctrl_c_inside_a_weakref_callback_is_not_swallowed(tmp_path, delay):
    (tmp_path / "spin.py").write_text(SPINNER)
    proc = _start(["spin.py", "--dataset", "toy", "--params", str(REPO / "params.yaml"), "--root", "."], tmp_path)
    err, took = _interrupt(proc, delay)
    _check_one_line(err, "spin@toy", proc.returncode)
    assert took < 10  # not the 60 s of the loop


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 1.5])
def test_ctrl_c_during_the_features_stage(tmp_path, delay):
    """The issue's case: Ctrl+C some seconds into the features stage (torch at work)."""
    import json

    import numpy as np
    from PIL import Image

    images = tmp_path / "data" / "toy" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"im{i:03d}.png" for i in range(150)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (320, 320, 3), np.uint8)).save(images / name)
    gnd = {"imlist": names[1:], "qimlist": names[:1], "gnd": [{"ok": [0], "junk": [], "bbx": None}]}
    (tmp_path / "data" / "toy" / "gnd.json").write_text(json.dumps(gnd))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["features"]["size"]["toy"] = {"max_side": None, "min_side": None}
    params["runtime"]["workers"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = _start([str(REPO / "stages" / "features.py"), "--dataset", "toy", "--params", "params.yaml",
                   "--root", "."], tmp_path)
    err, took = _interrupt(proc, delay)
    _check_one_line(err, "features@toy", proc.returncode)
    assert took < 20
    assert not (tmp_path / "features" / "toy" / "features.h5").exists()
