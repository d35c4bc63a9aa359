"""Parsers from the official ground-truth formats into the canonical gnd dict.

The canonical layout is described in :mod:`rdfa.io.gnd`: ``{"imlist": [...],
"qimlist": [...], "gnd": [{"ok" | "easy"/"hard", "junk", "bbx"}, ...]}`` with
file names that include their extension and lists of indices into
``imlist``. Every parser validates its result with
:func:`rdfa.io.gnd.validate_gnd` and raises :class:`DatasetError` naming the
file (or source) and what is wrong.
"""
from __future__ import annotations

import functools
import importlib
import os
import pickle
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from rdfa.io.gnd import DatasetError, box_problem, validate_gnd

#: Prefix of the image names on the Oxford query lines (``oxc1_all_souls_000013``).
OXFORD_QUERY_PREFIX = "oxc1_"

#: Angles (degrees) of the COIL-100 views used as queries.
COIL100_QUERY_ANGLES = (0, 90, 180, 270)

_COIL_NAME = re.compile(r"obj(\d+)__(\d+)\.png")
_HOLIDAYS_NAME = re.compile(r"(\d{4})\d*\.\w+")


# --------------------------------------------------------------------------- names

def read_name_list(path: str | os.PathLike) -> list[str]:
    """Read one image name per line (``imlist.txt``, ``holidays_images.dat``).

    Surrounding whitespace and blank lines are dropped. Raises
    ``DatasetError`` naming the file when it is missing, empty, or names an
    image twice.
    """
    path = Path(path)
    names = _read_lines(path)
    if not names:
        raise DatasetError(f"{path}: no image names in the file")
    seen: set[str] = set()
    for lineno, name in enumerate(names, 1):
        if name in seen:
            raise DatasetError(f"{path}: image name {name!r} is listed twice (second time at entry {lineno})")
        seen.add(name)
    return names


def _read_lines(path: Path) -> list[str]:
    """The stripped, non-blank lines of a text file; ``DatasetError`` if unreadable."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read the file ({err})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def with_extension(name: str, ext: str) -> str:
    """``name`` with ``ext`` appended unless it already ends with it."""
    return name if name.endswith(ext) else name + ext


def _index_names(names: Sequence[str], source: str) -> dict[str, int]:
    """Map each name to its position; ``DatasetError`` naming ``source`` on a repeat."""
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in index:
            raise DatasetError(f"{source}: image name {name!r} is listed twice")
        index[name] = i
    return index


def _unique(values: Iterable) -> list:
    """``values`` without repeats, first occurrence kept, order preserved."""
    return list(dict.fromkeys(values))


# --------------------------------------------------------------------------- Oxford / Paris

def oxford_query_prefixes(gt_dir: str | os.PathLike) -> list[str]:
    """The ground-truth query prefixes (``all_souls_1``, ...) of a gt folder, sorted.

    The sorted order is the standard query order of Oxford5k / Paris6k, the
    order of :func:`parse_oxford_style`'s ``qimlist``.
    """
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise DatasetError(f"{gt_dir}: ground-truth folder not found")
    prefixes = sorted(p.name[: -len("_query.txt")] for p in gt_dir.glob("*_query.txt"))
    if not prefixes:
        raise DatasetError(f"{gt_dir}: no '<query>_query.txt' files in the ground-truth folder")
    return prefixes


def parse_query_line(path: Path) -> tuple[str, list[float]]:
    """Parse a ``<q>_query.txt`` file: ``(image name, [x1, y1, x2, y2])``.

    The Oxford ``oxc1_`` prefix is removed from the name. Raises
    ``DatasetError`` naming the file when it does not hold exactly one line
    of a name and four numbers.
    """
    lines = _read_lines(path)
    if len(lines) != 1:
        raise DatasetError(f"{path}: expected one line 'name x1 y1 x2 y2', found {len(lines)} lines")
    fields = lines[0].split()
    if len(fields) != 5:
        raise DatasetError(f"{path}: expected 'name x1 y1 x2 y2', found {len(fields)} fields: {lines[0]!r}")
    try:
        box = [float(v) for v in fields[1:]]
    except ValueError:
        raise DatasetError(f"{path}: the box {fields[1:]} is not four numbers") from None
    why = box_problem(box)  # float() also reads 'inf' and 'nan'
    if why:
        raise DatasetError(f"{path}: the box {box} {why}")
    name = fields[0]
    if name.startswith(OXFORD_QUERY_PREFIX):
        name = name[len(OXFORD_QUERY_PREFIX):]
    return name, box


def _lookup(names: Iterable[str], index: dict[str, int], path: Path) -> list[int]:
    """Indices of ``names`` in the image list; ``DatasetError`` naming ``path`` for an unknown one."""
    out = []
    for name in names:
        if name not in index:
            raise DatasetError(f"{path}: image {name!r} is not in the image list")
        out.append(index[name])
    return out


def parse_oxford_style(gt_dir: str | os.PathLike, imlist_names: Sequence[str],
                       ext: str = ".jpg") -> dict:
    """Parse an Oxford5k / Paris6k ground-truth folder into the canonical gnd.

    ``imlist_names`` are the database names as in ``imlist.txt`` (with or
    without ``ext``). Queries follow :func:`oxford_query_prefixes`; for each,
    ``ok`` = ``_good.txt`` + ``_ok.txt``, ``junk`` = ``_junk.txt`` (each
    without repeats: the official ``compute_ap`` reads them into sets, so the
    name listed twice in ``all_souls_1_good.txt`` counts once) and ``bbx``
    comes from ``_query.txt``.
    """
    gt_dir = Path(gt_dir)
    imlist = [with_extension(n, ext) for n in imlist_names]
    index = _index_names([n[: -len(ext)] if ext else n for n in imlist], f"{gt_dir} (image list)")
    qimlist, entries = [], []
    for prefix in oxford_query_prefixes(gt_dir):
        qpath = gt_dir / f"{prefix}_query.txt"
        qname, box = parse_query_line(qpath)
        _lookup([qname], index, qpath)
        lists = {}
        for kind in ("good", "ok", "junk"):
            path = gt_dir / f"{prefix}_{kind}.txt"
            if not path.is_file():
                raise DatasetError(f"{path}: file not found (every query needs _good, _ok and _junk files)")
            lists[kind] = _lookup(_read_lines(path), index, path)
        qimlist.append(with_extension(qname, ext))
        entries.append({"ok": _unique(lists["good"] + lists["ok"]),
                        "junk": _unique(lists["junk"]), "bbx": box})
    return validate_gnd({"imlist": imlist, "qimlist": qimlist, "gnd": entries}, str(gt_dir))


# --------------------------------------------------------------------------- Holidays

def parse_holidays(names: Sequence[str], source: str = "holidays_images.dat") -> dict:
    """INRIA Holidays ground truth from its image names (``holidays_images.dat``).

    Images are grouped by the first four digits; the first name of each group
    (in sorted order, ``XXXX00.jpg``) is the query, the rest of the group are
    its positives. The query is also a database image and is put in its own
    ``junk`` so it is excluded from its ranking. Queries are ordered by group.
    """
    names = list(names)
    _index_names(names, source)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(names):
        match = _HOLIDAYS_NAME.fullmatch(name)
        if match is None:
            raise DatasetError(f"{source}: image name {name!r} does not start with a 4-digit group number")
        groups[match.group(1)].append(i)
    qimlist, entries = [], []
    for group in sorted(groups):
        members = sorted(groups[group], key=lambda i: names[i])
        query = members[0]
        qimlist.append(names[query])
        entries.append({"ok": members[1:], "junk": [query], "bbx": None})
    return validate_gnd({"imlist": names, "qimlist": qimlist, "gnd": entries}, source)


# --------------------------------------------------------------------------- COIL-100

def parse_coil100_name(name: str, source: str = "COIL-100") -> tuple[int, int]:
    """``objN__A.png`` -> ``(N, A)``; ``DatasetError`` naming ``source`` otherwise."""
    match = _COIL_NAME.fullmatch(name)
    if match is None:
        raise DatasetError(f"{source}: image name {name!r} is not of the form 'objN__A.png'")
    return int(match.group(1)), int(match.group(2))


def coil100_gnd(names: Sequence[str], source: str = "COIL-100",
                query_angles: Sequence[int] = COIL100_QUERY_ANGLES) -> dict:
    """COIL-100 ground truth: queries are the views at ``query_angles`` of each object.

    Every other view of the same object is a positive and the query itself
    is junk; queries stay in the database (``imlist`` is ``names`` in the
    given order). Queries are ordered by object number, then angle; a missing
    query view simply gives no query.
    """
    names = list(names)
    _index_names(names, source)
    parsed = [parse_coil100_name(n, source) for n in names]
    by_object: dict[int, list[int]] = defaultdict(list)
    for i, (obj, _) in enumerate(parsed):
        by_object[obj].append(i)
    wanted = set(query_angles)
    queries = sorted((parsed[i], i) for i in range(len(names)) if parsed[i][1] in wanted)
    qimlist, entries = [], []
    for (obj, _), q in queries:
        qimlist.append(names[q])
        entries.append({"ok": [i for i in by_object[obj] if i != q], "junk": [q], "bbx": None})
    if not entries:
        raise DatasetError(f"{source}: no query views (angles {sorted(wanted)}) among {len(names)} images")
    return validate_gnd({"imlist": names, "qimlist": qimlist, "gnd": entries}, source)


# --------------------------------------------------------------------------- revisitop pickles

#: Builtins a plain-data pickle may name (protocol 0-2 spell ``builtins`` as ``__builtin__``).
_SAFE_BUILTINS = frozenset({"set", "frozenset", "bytes", "bytearray", "complex"})

#: NumPy globals needed to rebuild arrays, dtypes and scalars: (submodule, name).
_NUMPY_CORE_GLOBALS = frozenset({
    ("multiarray", "_reconstruct"),
    ("multiarray", "scalar"),
    ("numeric", "_frombuffer"),
})


def _numpy_core_object(submodule: str, name: str):
    """``numpy._core.<submodule>.<name>`` (NumPy 2), else ``numpy.core.<submodule>.<name>`` (1.x)."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"NumPy has no {submodule}.{name} to rebuild arrays with")


#: The most bytes one array or byte string of a ground-truth pickle may ask for.
#: A pickle can request any size in a few bytes (an array's shape,
#: ``bytearray(n)``), so requests are checked before anything is allocated: a
#: named error instead of a MemoryError (or swapping). The revisitop files hold
#: a few MB.
MAX_PICKLE_ALLOCATION = 1 << 28  # 256 MiB


def _check_allocation(nbytes: int, what: str) -> None:
    if nbytes > MAX_PICKLE_ALLOCATION:
        raise pickle.UnpicklingError(
            f"{what} would allocate {nbytes} bytes, more than the {MAX_PICKLE_ALLOCATION} allowed "
            f"for ground truth (MAX_PICKLE_ALLOCATION)")


def _array_nbytes(shape, dtype) -> int:
    """Bytes of an array of ``shape`` and ``dtype``, computed with Python integers (no overflow)."""
    import numpy

    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
    count = 1
    for d in dims:
        count *= d
    return count * numpy.dtype(dtype).itemsize


@functools.lru_cache(maxsize=None)
def _bounded_array_class():
    """``numpy.ndarray`` subclass whose construction and ``__setstate__`` check sizes first."""
    import numpy

    class BoundedArray(numpy.ndarray):
        def __new__(cls, shape, dtype=float, *args, **kwargs):
            _check_allocation(_array_nbytes(shape, dtype), f"numpy.ndarray{(shape,)}")
            return super().__new__(cls, shape, dtype, *args, **kwargs)

        def __setstate__(self, state):
            # (version, shape, dtype, is_fortran, data), or the same without version.
            if isinstance(state, tuple) and len(state) in (4, 5):
                shape, dtype = state[-4], state[-3]
                _check_allocation(_array_nbytes(shape, dtype), f"an array of shape {shape!r}")
            super().__setstate__(state)

    return BoundedArray


def _bounded_reconstruct(subtype, shape, dtype):
    """NumPy's ``_reconstruct``, for plain arrays only, with the size checked first."""
    import numpy

    bounded = _bounded_array_class()
    if subtype not in (numpy.ndarray, bounded):
        raise pickle.UnpicklingError(f"refuses to rebuild an array of type {subtype!r}")
    _check_allocation(_array_nbytes(shape, dtype), f"an array of shape {shape!r}")
    return _numpy_core_object("multiarray", "_reconstruct")(bounded, shape, dtype)


def _bounded_bytes(kind):
    """``bytes`` / ``bytearray``, refusing ``kind(n)`` (n zero bytes) for a large n."""
    def build(*args):
        if args and isinstance(args[0], int):
            _check_allocation(args[0], f"{kind.__name__}({args[0]})")
        return kind(*args)
    return build


def resolve_safe_global(module: str, name: str):
    """The object for an allowed pickle global, or ``pickle.UnpicklingError``.

    Admitted: a few container builtins, ``_codecs.encode`` (how protocol 2
    stores bytes), ``numpy.ndarray``, ``numpy.dtype`` and NumPy's array /
    scalar reconstruction functions under both the 1.x ``numpy.core`` and
    2.x ``numpy._core`` names. Nothing else is imported or called. Arrays
    and byte strings are size-checked (:data:`MAX_PICKLE_ALLOCATION`) before
    they are allocated.
    """
    if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
        import builtins
        if name in ("bytes", "bytearray"):
            return _bounded_bytes(getattr(builtins, name))
        return getattr(builtins, name)
    if (module, name) == ("_codecs", "encode"):
        import codecs
        return codecs.encode
    if module == "numpy" and name == "ndarray":
        return _bounded_array_class()
    if module == "numpy" and name == "dtype":
        import numpy
        return numpy.dtype
    for package in ("numpy.core.", "numpy._core."):
        if module.startswith(package) and (module[len(package):], name) in _NUMPY_CORE_GLOBALS:
            if (module[len(package):], name) == ("multiarray", "_reconstruct"):
                return _bounded_reconstruct
            return _numpy_core_object(module[len(package):], name)
    raise pickle.UnpicklingError(
        f"refuses global '{module}.{name}': only plain containers and NumPy arrays are allowed")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals :func:`resolve_safe_global` admits."""

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle hook
        return resolve_safe_global(module, name)


def _plain_list(values, what: str, path: Path) -> list:
    """Convert an array/list/tuple to a Python list of Python scalars."""
    if values is None:
        return []
    if hasattr(values, "tolist"):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise DatasetError(f"{path}: {what} must be a list or array, got {type(values).__name__}")
    return list(values)


def _revisited_entry(entry, q: int, path: Path) -> dict:
    """One revisitop gnd entry as canonical ``easy``/``hard``/``junk``/``bbx``."""
    if not isinstance(entry, dict):
        raise DatasetError(f"{path}: gnd[{q}] must be a dict, got {type(entry).__name__}")
    out = {}
    for key in ("easy", "hard", "junk"):
        if key not in entry:
            raise DatasetError(f"{path}: gnd[{q}] has no '{key}' list")
        values = _plain_list(entry[key], f"gnd[{q}]['{key}']", path)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise DatasetError(f"{path}: gnd[{q}]['{key}'] must hold integer indices")
        out[key] = values
    bbx = entry.get("bbx")
    out["bbx"] = None if bbx is None else [float(v) for v in _plain_list(bbx, f"gnd[{q}]['bbx']", path)]
    return out


def load_revisited_pickle(path: str | os.PathLike, ext: str = ".jpg") -> dict:
    """Load revisitop's ``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl`` safely.

    The pickle is read with :class:`RestrictedUnpickler`, which never imports
    or calls anything beyond containers and NumPy array reconstruction; any
    other global raises ``DatasetError`` naming the file. The result is the
    canonical revisited gnd with ``ext`` appended to the image names.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            cfg = RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as err:
        raise DatasetError(f"{path}: unsafe or malformed pickle: {err}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DatasetError(f"{path}: malformed pickle ({type(err).__name__}: {err})") from None
    except MemoryError:  # a request the size checks above do not cover
        raise DatasetError(f"{path}: the pickle asks for more memory than is available; "
                           f"not a ground-truth file") from None
    if not isinstance(cfg, dict):
        raise DatasetError(f"{path}: expected a dict with 'imlist', 'qimlist' and 'gnd', got {type(cfg).__name__}")
    for key in ("imlist", "qimlist", "gnd"):
        if key not in cfg:
            raise DatasetError(f"{path}: missing key '{key}'")
    names = {}
    for key in ("imlist", "qimlist"):
        values = _plain_list(cfg[key], f"'{key}'", path)
        if not all(isinstance(v, str) for v in values):
            raise DatasetError(f"{path}: '{key}' must hold image names (strings)")
        names[key] = [with_extension(v, ext) for v in values]
    entries = [_revisited_entry(e, q, path) for q, e in enumerate(_plain_list(cfg["gnd"], "'gnd'", path))]
    return validate_gnd({"imlist": names["imlist"], "qimlist": names["qimlist"], "gnd": entries}, str(path))
