"""`rdfa search` during a running `dvc repro`: it says a DVC process holds the lock (wait), and advises
removing .dvc/tmp/rwlock only when no live process holds it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rdfa.io import index
from rdfa.io.dvclock import explain, repo_lock_held, rwlock_holders

# What DVC 3 prints when the rwlock is held (dvc/rwlock.py), whether or not the process still runs.
DVC_BUSY = ("ERROR: '/p/data/synth' is busy, it is being blocked by:\n  (PID {pid}): dvc repro\n\nIf there are no "
            "processes with such PIDs, you can manually remove '.dvc/tmp/rwlock' and try again.")


def _rwlock(root, pid: int) -> None:
    (root / ".dvc" / "tmp").mkdir(parents=True, exist_ok=True)
    (root / ".dvc" / "tmp" / "rwlock").write_text(json.dumps(
        {"read": {}, "write": {str(root / "data" / "synth"): {"pid": pid, "cmd": "dvc repro"}}}))


@pytest.fixture
def running():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_holder_is_named_and_the_lock_left_alone(tmp_path, running):
    _rwlock(tmp_path, running)
    assert rwlock_holders(tmp_path) == [(running, "dvc repro")]
    advice = explain(tmp_path, DVC_BUSY.format(pid=running))
    assert f"held by PID {running} (dvc repro), still running" in advice
    assert "wait until it ends" in advice and "do not remove .dvc/tmp/rwlock while it runs" in advice


def test_a_stale_lock_may_be_removed(tmp_path):
    pid = _dead_pid()
    _rwlock(tmp_path, pid)
    assert rwlock_holders(tmp_path) == []
    advice = explain(tmp_path, DVC_BUSY.format(pid=pid))
    assert "names no running process" in advice and "remove .dvc/tmp/rwlock" in advice


def test_the_repository_lock_held_by_a_process(tmp_path):
    lock = tmp_path / ".dvc" / "tmp" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    assert not repo_lock_held(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", f"import fcntl, sys, time; f = open({str(lock)!r}); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert repo_lock_held(tmp_path)
        advice = explain(tmp_path, "ERROR: Unable to acquire lock. Most likely another DVC process is running")
        assert "held by a DVC process, still running" in advice
    finally:
        holder.kill()
        holder.wait()
    assert explain(tmp_path, "ERROR: unexpected error") is None


def test_search_check_says_to_wait_while_dvc_runs(tmp_path, running, monkeypatch):
    _rwlock(tmp_path, running)
    answer = subprocess.CompletedProcess([], 255, "", DVC_BUSY.format(pid=running))
    monkeypatch.setattr(index.subprocess, "run", lambda *a, **k: answer)
    with pytest.raises(index.SearchError) as err:
        index.check_up_to_date(tmp_path, "synth")
    assert f"DVC's lock is held by PID {running} (dvc repro)" in str(err.value)
    assert "manually remove" not in str(err.value)
