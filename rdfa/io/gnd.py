"""The canonical dataset folder: ``images/<file>`` plus ``gnd.json``.

``gnd.json`` = ``{"imlist": [...], "qimlist": [...], "gnd": [{"ok": [...],
"junk": [...], "bbx": [x1, y1, x2, y2] or null}, ...]}`` where ``ok``/``junk``
index ``imlist``. Revisited datasets hold ``easy``/``hard``/``junk`` instead
of (or beside) ``ok``.
"""
from __future__ import annotations

import json
from pathlib import Path


class DatasetError(ValueError):
    """A dataset folder or ground-truth file is malformed; the message names it."""


def validate_gnd(gnd: dict, source: str = "gnd.json", images_dir: Path | None = None) -> dict:
    """Check the canonical ground truth; raise ``DatasetError`` naming ``source``.

    With ``images_dir``, also check that every listed image file exists.
    Returns ``gnd`` unchanged so calls can be chained.
    """
    for key in ("imlist", "qimlist", "gnd"):
        if key not in gnd:
            raise DatasetError(f"{source}: missing key '{key}'")
        if not isinstance(gnd[key], list):
            raise DatasetError(f"{source}: '{key}' must be a list")
    imlist, qimlist, entries = gnd["imlist"], gnd["qimlist"], gnd["gnd"]
    if not imlist:
        raise DatasetError(f"{source}: 'imlist' is empty")
    if len(set(imlist)) != len(imlist):
        raise DatasetError(f"{source}: 'imlist' names an image twice")
    if len(entries) != len(qimlist):
        raise DatasetError(
            f"{source}: {len(qimlist)} queries in 'qimlist' but {len(entries)} entries in 'gnd'")
    n = len(imlist)
    for q, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DatasetError(f"{source}: gnd[{q}] must be an object")
        lists = [k for k in ("ok", "easy", "hard", "junk") if k in entry]
        if not any(k in entry for k in ("ok", "easy", "hard")):
            raise DatasetError(f"{source}: gnd[{q}] ({qimlist[q]}) has no 'ok' (or 'easy'/'hard') list")
        for key in lists:
            for idx in entry[key]:
                if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < n:
                    raise DatasetError(
                        f"{source}: gnd[{q}] ({qimlist[q]}) '{key}' holds index {idx!r}, "
                        f"outside the {n} database images")
        bbx = entry.get("bbx")
        if bbx is not None:
            if (not isinstance(bbx, (list, tuple)) or len(bbx) != 4
                    or not all(isinstance(v, (int, float)) for v in bbx)):
                raise DatasetError(f"{source}: gnd[{q}] ({qimlist[q]}) 'bbx' must be [x1, y1, x2, y2] or null")
            if not (bbx[2] > bbx[0] and bbx[3] > bbx[1]):
                raise DatasetError(f"{source}: gnd[{q}] ({qimlist[q]}) 'bbx' {bbx} is empty (need x2 > x1, y2 > y1)")
    if images_dir is not None:
        missing = [name for name in list(imlist) + list(qimlist) if not (images_dir / name).is_file()]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise DatasetError(
                f"{source}: names {len(missing)} image(s) missing from {images_dir}: "
                f"{', '.join(missing[:5])}{more}")
    return gnd


def load_gnd(dataset_dir: str | Path, *, check_files: bool = False) -> dict:
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
    return validate_gnd(gnd, str(path), path.parent / "images" if check_files else None)
