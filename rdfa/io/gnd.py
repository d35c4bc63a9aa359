"""The canonical dataset folder: ``images/<file>`` plus ``gnd.json``.

``gnd.json`` = ``{"imlist": [...], "qimlist": [...], "gnd": [{"ok": [...],
"junk": [...], "bbx": [x1, y1, x2, y2] or null}, ...]}`` where ``ok``/``junk``
index ``imlist``. Revisited datasets hold ``easy``/``hard``/``junk`` instead
of (or beside) ``ok``.
"""
from __future__ import annotations

import json
import math
import posixpath
import re
from pathlib import Path


class DatasetError(ValueError):
    """A dataset folder or ground-truth file is malformed; the message names it."""


#: What the stages say of a dataset whose ``qimlist`` is empty: a training set (e.g. synth_train),
#: whose database only learns another dataset's whitening (``whitening.train_on``). The data stage
#: lets only such generated sets through; every later stage writes its outputs empty of queries.
NO_QUERIES = "no queries (a training set)"


def validate_gnd(gnd, source: str = "gnd.json", images_dir: Path | None = None, *,
                 need_queries: bool = True) -> dict:
    """Check the canonical ground truth; raise ``DatasetError`` naming ``source``.

    Everything is checked up front (types, indices, boxes, names), so that a
    malformed file stops the first stage that reads it with a message naming
    the file and the entry, rather than a traceback somewhere downstream.
    With ``images_dir``, also check that every listed image file exists.
    ``need_queries``: an empty ``qimlist`` is an error (a dataset that is
    evaluated needs queries). Returns ``gnd`` unchanged so calls can be chained.
    """
    if not isinstance(gnd, dict):
        raise DatasetError(f"{source}: expected an object with 'imlist', 'qimlist' and 'gnd', "
                           f"got {type(gnd).__name__} {_short(gnd)}")
    for key in ("imlist", "qimlist", "gnd"):
        if key not in gnd:
            raise DatasetError(f"{source}: missing key '{key}'")
        if not isinstance(gnd[key], list):
            raise DatasetError(f"{source}: '{key}' must be a list, got {type(gnd[key]).__name__} "
                               f"{_short(gnd[key])}")
    imlist, qimlist, entries = gnd["imlist"], gnd["qimlist"], gnd["gnd"]
    if not imlist:
        raise DatasetError(f"{source}: 'imlist' is empty")
    if need_queries and not qimlist:
        raise DatasetError(f"{source}: 'qimlist' is empty: a dataset that is evaluated needs at least "
                           f"one query")
    _check_names(imlist, "imlist", source, unique=True)
    _check_names(qimlist, "qimlist", source, unique=False)
    if len(entries) != len(qimlist):
        raise DatasetError(
            f"{source}: {len(qimlist)} queries in 'qimlist' but {len(entries)} entries in 'gnd'")
    for q, entry in enumerate(entries):
        _check_entry(entry, f"{source}: gnd[{q}] ({qimlist[q]})", len(imlist))
    if images_dir is not None:
        missing = [name for name in list(imlist) + list(qimlist) if not (images_dir / name).is_file()]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise DatasetError(
                f"{source}: names {len(missing)} image(s) missing from {images_dir}: "
                f"{', '.join(missing[:5])}{more}")
    return gnd


def _short(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def normalized_name(name: str) -> str:
    """The file an image name refers to below ``images/``: ``./x.jpg`` and ``a//x.jpg`` -> ``x.jpg``, ``a/x.jpg``."""
    return posixpath.normpath(name.replace("\\", "/"))


def _check_names(names: list, key: str, source: str, *, unique: bool) -> None:
    """Every name a relative path below images/ (a str, no '..'); with ``unique``, no file twice."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(f"{source}: '{key}'[{i}] must be an image file name, got {_short(name)}")
        path = name.replace("\\", "/")
        if path.startswith("/") or re.match(r"^[A-Za-z]:", path) or ".." in path.split("/"):
            raise DatasetError(f"{source}: image name {name!r} must be a path relative to images/ "
                               f"without '..'")
        norm = normalized_name(name)
        if norm in ("", "."):
            raise DatasetError(f"{source}: '{key}'[{i}] {name!r} is not a file name")
        if unique:
            if norm in seen:
                first = names[seen[norm]]
                same = f"{first!r} and {name!r} are the same file" if first != name else f"{name!r}"
                raise DatasetError(f"{source}: '{key}' names an image twice: {same} "
                                   f"('{key}'[{seen[norm]}] and '{key}'[{i}])")
            seen[norm] = i


def _check_entry(entry, where: str, n_images: int) -> None:
    """One query's entry: index lists into imlist, and an optional box."""
    if not isinstance(entry, dict):
        raise DatasetError(f"{where} must be an object, got {type(entry).__name__} {_short(entry)}")
    if not any(k in entry for k in ("ok", "easy", "hard")):
        raise DatasetError(f"{where} has no 'ok' (or 'easy'/'hard') list")
    for key in ("ok", "easy", "hard", "junk"):
        if key not in entry:
            continue
        values = entry[key]
        if not isinstance(values, (list, tuple)):
            raise DatasetError(f"{where} '{key}' must be a list of indices into 'imlist', "
                               f"got {type(values).__name__} {_short(values)}")
        for idx in values:
            if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < n_images:
                raise DatasetError(f"{where} '{key}' holds index {_short(idx)}, outside the "
                                   f"{n_images} database images")
    junk = set(entry.get("junk") or ())
    for key in ("ok", "easy", "hard"):
        both = sorted(junk.intersection(entry.get(key) or ()))
        if both:
            # An image both relevant and ignored: the evaluation would silently pick one meaning.
            raise DatasetError(f"{where} lists database index {both[0]} in both '{key}' and 'junk'"
                               + (f" (and {len(both) - 1} more: {_short(both[1:])})" if len(both) > 1 else "")
                               + "; an image is either relevant or junk for a query")
    bbx = entry.get("bbx")
    if bbx is not None:
        why = box_problem(bbx)
        if why:
            raise DatasetError(f"{where} 'bbx' {_short(bbx)} {why}")


def box_problem(bbx) -> str | None:
    """Why ``bbx`` is not a usable ``[x1, y1, x2, y2]`` box, or None.

    Four finite numbers (JSON allows ``Infinity`` and ``NaN``, which would
    only fail much later, in the crop), with ``x1 < x2`` and ``y1 < y2``.
    """
    if (not isinstance(bbx, (list, tuple)) or len(bbx) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbx)):
        return "must be [x1, y1, x2, y2] (four numbers) or null"
    if not all(math.isfinite(v) for v in bbx):
        return "must hold four finite numbers (not Infinity or NaN)"
    if not (bbx[2] > bbx[0] and bbx[3] > bbx[1]):
        return "is empty (need x2 > x1, y2 > y1)"
    return None


def load_gnd(dataset_dir: str | Path, *, check_files: bool = False, need_queries: bool = True) -> dict:
    """Read and validate ``<dataset_dir>/gnd.json`` (or a gnd.json path)."""
    path = Path(dataset_dir)
    if path.is_dir():
        path = path / "gnd.json"
    if not path.is_file():
        raise DatasetError(f"{path}: ground-truth file not found")
    try:
        gnd = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None
    return validate_gnd(gnd, str(path), path.parent / "images" if check_files else None,
                        need_queries=need_queries)
