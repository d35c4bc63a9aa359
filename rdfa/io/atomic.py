"""Atomic outputs: write to a temporary sibling, then rename over the target.

An interrupted stage therefore never leaves a half-written file or folder that
a later run (or DVC) could take as complete. JSON is written here and read back
by :func:`read_json`, whose errors name the file.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; move it onto ``target`` on success.

    With ``directory=True`` the temporary path is an empty folder. On any
    exception the temporary path is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{target.name}-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            if target.exists() or target.is_symlink():
                # Move the old folder aside first so the swap is two renames.
                old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
                old.rmdir()
                target.rename(old)
                tmp.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(target)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def write_json(target: str | os.PathLike, obj, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``target`` atomically."""
    with atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")


class InputFileError(ValueError):
    """An input file is missing or is not valid JSON; the message names it."""


def read_json(path: str | os.PathLike, what: str, hint: str = ""):
    """The parsed JSON file ``path`` (``what`` it holds, for the messages); :class:`InputFileError`
    naming it when it is missing (``hint``, e.g. which stage makes it, appended) or not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: {what} file not found{hint}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputFileError(f"{path}: {what} file is not valid JSON ({err})") from None


def stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """The temporaries that a killed writer of ``target`` can have left beside it.

    Exactly the names :func:`atomic_path` makes (``.tmp-<name>-XXXXXXXX``, the
    folder swap's ``.old-<name>-XXXXXXXX``) and the data stage's work folder
    (``.tmp-<name>-work-XXXXXXXX``), where XXXXXXXX is ``tempfile``'s 8
    random characters: nothing else beside ``target`` matches.
    """
    target = Path(target)
    name = re.escape(target.name)
    pattern = re.compile(rf"\.tmp-{name}-(work-)?[a-z0-9_]{{8}}|\.old-{name}-[a-z0-9_]{{8}}")
    if not target.parent.is_dir():
        return []
    return sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name))


def remove_stale_temporaries(targets: Iterable[str | os.PathLike]) -> list[Path]:
    """Remove what :func:`stale_temporaries` finds for each of ``targets``; return the removed paths.

    Ctrl+C or a kill skips ``atomic_path``'s cleanup, and the leftovers
    (possibly gigabytes of half-written features) would pile up with every
    interrupted run. Only call this for outputs the caller owns, when no
    other process is writing them.
    """
    removed = []
    for target in targets:
        for path in stale_temporaries(target):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
