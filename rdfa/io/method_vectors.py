"""``features/<dataset>/method_fits.h5`` and ``method_vectors.h5``: every method's whitening and vectors as the
methods stage searched them.

Written by the methods stage, read by the distractor stages, so that Table 1 is computed with a
distractor set exactly as without it: the distractors stage whitens each distractor image's
vectors of a method with that method's fit (``method_fits.h5``, :func:`read_fits`), and the
ranking_distractors stage searches them with the dataset's own database and query vectors
(``method_vectors.h5``, :func:`read_vectors`). Two files, so that what changes the vectors only
(``methods.full_query``) does not re-run the distractor pass.

Layout of both: attributes ``whitening`` (the main mode's record, JSON), ``learned_on``, ``D``
(``methods.D``); one group per method (the name quoted, ``attrs["name"]`` the name itself) but the
pipeline method (O2_R: its rows are ``whitened.h5``'s), with attributes ``kind``, ``plain`` (mode
``none``) and ``reasons`` (JSON ``{D: why it cannot be learned}``). The fits: ``fit/`` (``mean``,
``components`` at the largest learnable D, in float32, the type the rows are projected in;
``eigenvalues``, attribute ``total_variance``). The vectors: ``db/``, ``query/``, ``full/``
(``full/queries``: the indices of the boxed queries it holds), each with ``offsets`` and the vectors
under :func:`rdfa.methods.table1.storage_keys`' names, float32. Only the main whitening mode:
``methods.compare_whitening``'s variants are not kept. Written without time stamps, so that the
same numbers give the same bytes (DVC does not re-run the distractor pass for nothing).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import h5py
import numpy as np

from ..methods.table1 import Export, MethodFit, stored_vectors
from ..whitening import PCA

#: The groups of vectors.
GROUPS = ("db", "query", "full")


def group_name(name: str) -> str:
    """A method's HDF5 group (and shard group) name: the name with ``/`` and ``%`` quoted."""
    return quote(name, safe=" !#$&'()*+,-.:;<=>?@[]^_`{|}~")


def _put(group, name: str, data) -> None:
    group.create_dataset(name, data=data, track_times=False)


def write_method_files(fits_path: Path, vectors_path: Path, exports: dict[str, Export], whitening_record: dict,
                       learned_on: str, dims, boxed: np.ndarray) -> None:
    """Write ``exports`` (``{method name: Export}``, in order): their fits to ``fits_path``, their vectors
    to ``vectors_path`` (each to a temporary name, then renamed)."""
    for path, part in ((fits_path, "fit"), (vectors_path, "vectors")):
        tmp = path.with_name(path.name + ".tmp")
        with h5py.File(tmp, "w", track_order=True) as f:
            f.attrs.update(whitening=json.dumps(whitening_record, sort_keys=True), learned_on=learned_on,
                           D=np.asarray(list(dims), dtype=np.int64))
            for name, export in exports.items():
                g = f.create_group(group_name(name), track_order=True)
                reasons = {str(d): p for d, p in export.pcas.items() if isinstance(p, str) and not export.plain}
                g.attrs.update(name=name, kind=export.kind, plain=export.plain, reasons=json.dumps(reasons))
                valid = [d for d, p in export.pcas.items() if not isinstance(p, str)]
                if part == "fit":
                    if valid and not export.plain:
                        _write_fit(g.create_group("fit"), export.pcas[max(valid)])
                    continue
                for group, (offsets, vectors) in export.vectors.items():
                    out = g.create_group(group)
                    _put(out, "offsets", np.asarray(offsets, dtype=np.int64))
                    if group == "full":
                        _put(out, "queries", np.asarray(boxed, dtype=np.int64))
                    kept = vectors if export.plain else {d: vectors[d] for d in valid}
                    for key, rows in stored_vectors(export.kind, kept, export.plain).items():
                        _put(out, key, rows)
        os.replace(tmp, path)


def _write_fit(fit, pca: PCA) -> None:
    # float32: the type rdfa.projection projects describe()'s float32 rows in (the same numbers)
    _put(fit, "mean", pca.mean.astype(np.float32))
    _put(fit, "components", pca.components.astype(np.float32))
    _put(fit, "eigenvalues", pca.eigenvalues)
    fit.attrs["total_variance"] = float(pca.total_variance)


def _open(path: Path) -> h5py.File:
    if not Path(path).is_file():
        raise ValueError(f"{path} not found: the methods stage writes it (`dvc repro`)")
    return h5py.File(path, "r")


def _group(f: h5py.File, path: Path, name: str):
    key = group_name(name)
    if key not in f:
        raise ValueError(f"{path}: no method {name!r} (it has {', '.join(f[k].attrs['name'] for k in f)}); "
                         "re-run the methods stage (`dvc repro`)")
    return f[key]


def read_header(path: Path) -> tuple[dict, list[int]]:
    """The main whitening's record and ``methods.D`` the file was written with."""
    with _open(path) as f:
        return json.loads(f.attrs["whitening"]), [int(d) for d in f.attrs["D"]]


def read_fits(path: Path, names: list[str], dims) -> dict[str, MethodFit]:
    """``{name: MethodFit}`` of ``names``, as the methods stage learned them (at ``dims``, its ``methods.D``)."""
    out = {}
    with _open(path) as f:
        stored = [int(d) for d in f.attrs["D"]]
        if stored != list(dims):
            raise ValueError(f"{path}: written with methods.D {stored}, not {list(dims)}; re-run the methods stage")
        for name in names:
            g = _group(f, path, name)
            plain = bool(g.attrs["plain"])
            reasons = {int(d): why for d, why in json.loads(g.attrs["reasons"]).items()}
            pca = None
            if "fit" in g:
                fit = g["fit"]
                pca = PCA(fit["mean"][()], fit["components"][()], fit["eigenvalues"][()],
                          float(fit.attrs["total_variance"]))
            out[name] = MethodFit(str(g.attrs["kind"]), plain, pca, reasons)
    return out


def read_vectors(path: Path, name: str, group: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A method's stored vectors of ``group`` under ``key`` (:func:`storage_keys`), float32, their offsets,
    and for ``full`` the indices of the queries they are (else None); ``(None, None, None)`` when the
    group was not written (no boxed query, or ``methods.full_query`` false)."""
    with _open(path) as f:
        g = _group(f, path, name)
        if group not in g:
            return None, None, None
        out = g[group]
        return out[key][()], out["offsets"][()], (out["queries"][()] if "queries" in out else None)
