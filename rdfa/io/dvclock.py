"""Whether a DVC process holds this project's locks, for messages that advise removing one.

DVC keeps two locks in ``.dvc/tmp``: ``lock`` (held with ``flock`` by the DVC
command running in the repository) and ``rwlock`` (JSON naming, per output,
the PID and command that read or write it). When ``dvc status`` fails on
them, its message ends with "you can manually remove '.dvc/tmp/rwlock'"; the
docs (pipeline.md) say never to do so while a DVC command runs. :func:`explain` says
which it is: the live process holding the lock (wait for it), or a stale
lock (no live process: removing it is then safe).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

#: What DVC says when a lock is held (rwlock: "is busy, it is being blocked by"; lock: "Unable to acquire lock").
LOCK_MESSAGES = ("rwlock", "Unable to acquire lock", "is being blocked by")


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def rwlock_holders(root: str | Path) -> list[tuple[int, str]]:
    """``(pid, command)`` of the live processes that ``.dvc/tmp/rwlock`` names (sorted, each once)."""
    try:
        lock = json.loads((Path(root) / ".dvc" / "tmp" / "rwlock").read_text())
    except (OSError, ValueError):
        return []
    infos = []
    if isinstance(lock, dict):
        for mode in ("read", "write"):
            for value in (lock.get(mode) or {}).values():
                infos += value if isinstance(value, list) else [value]
    holders = {(info.get("pid"), str(info.get("cmd", "?"))) for info in infos if isinstance(info, dict)}
    return sorted((pid, cmd) for pid, cmd in holders if pid_alive(pid))


def repo_lock_held(root: str | Path) -> bool:
    """Whether a process holds ``.dvc/tmp/lock`` (DVC's repository lock, an ``flock``); False where it cannot
    be told (no such file, no ``fcntl``)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(Path(root) / ".dvc" / "tmp" / "lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def explain(root: str | Path, dvc_message: str) -> str | None:
    """What to do about DVC's lock message ``dvc_message`` in project ``root``, or None when it is not
    about a lock. Advises removing ``.dvc/tmp/rwlock`` only when no live process holds a lock."""
    if not any(text in dvc_message for text in LOCK_MESSAGES):
        return None
    holders = rwlock_holders(root)
    if holders or repo_lock_held(root):
        who = ", ".join(f"PID {pid} ({cmd})" for pid, cmd in holders) or "a DVC process"
        return (f"DVC's lock is held by {who}, still running in {Path(root).resolve()}: wait until it ends and "
                "search again (or pass --no-check to search the outputs as they are); do not remove "
                ".dvc/tmp/rwlock while it runs")
    return (f"DVC's lock in {Path(root).resolve()} names no running process (left by an interrupted DVC "
            "command): remove .dvc/tmp/rwlock and search again")
