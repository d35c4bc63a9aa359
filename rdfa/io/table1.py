"""What the Table 1 stage reads: every method's rows pooled from the stored maps (or the stored
descriptors), the whitening stage's fit, the ranking stage's ranks, Figure 2's panels.

Groups of entries (``rdfa.io.keys``): ``db`` (the database), ``query`` (the queries as the
pipeline describes them: a boxed query by its crop, R_M) and ``full`` (the boxed queries
uncropped; a query without a box is its own uncropped variant, described once, under ``query``).
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from ..methods import Image, Method, MethodSettings, get, load_plugins, names
from ..methods.table1 import Rows, StoredWhitening, boxed_queries, describe, figure_picks, stack
from ..regions import rescale_points
from ..whitening import Whitening, max_components
from .hulls import RegionHulls
from .images import load_rgb, thumbnail
from .keys import masks_for, query_keys, read_array
from .provenance import load_whitening
from .stage import Paths, blas_threads, worker_map

#: Entries per job of the pooling workers.
CHUNK_IMAGES = 32
#: Height of Figure 2's thumbnails, in pixels.
FIGURE_HEIGHT = 200


def group_keys(gnd: dict, group: str) -> list[str]:
    """The entries of ``group`` (``db``, ``query`` or ``full``: the boxed queries, in order)."""
    if group == "db":
        return [f"db/{name}" for name in gnd["imlist"]]
    return query_keys(gnd) if group == "query" else [f"full/{i}" for i in boxed_queries(gnd)]


# --- methods of the feature maps, pooled by worker processes ----------------------------------

_worker: dict = {}


def _open(paths: Paths, settings: MethodSettings, wanted: list[str], plugins: Path | None) -> None:
    """A pooling worker's start: its own HDF5 handles (one must not cross a fork), the basis when a
    method needs it, the plugins when this process has not registered them (a Ray actor)."""
    if plugins is not None and not set(wanted) <= set(names()):
        load_plugins(plugins)
    methods = [get(name) for name in wanted]
    basis = None
    if any("basis" in m.needs for m in methods):
        with h5py.File(paths.pca, "r") as f:
            basis = f["components"][()]
    _worker.update(paths=paths, settings=settings, methods=methods, basis=basis,
                   features=h5py.File(paths.features, "r"), regions=h5py.File(paths.regions, "r"))


def _pool(keys: list[str]) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Every method of the worker on ``keys``: ``{name: (rows, rows per entry)}``."""
    w = _worker
    parts: dict[str, list] = {m.name: [] for m in w["methods"]}
    with blas_threads(1):  # many small steps: the parallelism is the worker processes'
        for key in keys:
            try:  # (a membership test first would cost HDF5 a second lookup of the key)
                fmap = read_array(w["features"], f"{key}/fmap")
            except KeyError:
                raise ValueError(f"{w['paths'].features}: no entry '{key}/fmap' (is it up to date with data/ "
                                 "and the stages before?)") from None
            masks = masks_for(key, fmap.shape, w["regions"], w["paths"].regions)
            image = Image(key, fmap, masks, w["settings"], basis=w["basis"])
            for method in w["methods"]:
                parts[method.name].append(describe(method, image))
    return {name: (np.concatenate(rows), [len(r) for r in rows]) for name, rows in parts.items()}


def pool_maps(paths: Paths, groups: dict[str, list[str]], methods: list[Method], settings: MethodSettings,
              workers: int, plugins: Path | None = None, executor_options: dict | None = None,
              desc: str = "methods") -> dict[str, dict[str, Rows]]:
    """The rows of every method of the feature maps (not ``stored=``), for each group of entries:
    ``{group: {name: Rows}}``, in ``workers`` processes (:func:`rdfa.io.stage.worker_map`). The rows
    do not depend on the number of workers."""
    wanted = [m.name for m in methods if m.stored is None]
    jobs = [(group, keys[i:i + CHUNK_IMAGES]) for group, keys in groups.items()
            for i in range(0, len(keys), CHUNK_IMAGES)]
    collected: dict = {group: {name: ([], []) for name in wanted} for group in groups}
    if wanted and jobs:
        with worker_map(workers, _open, (paths, settings, wanted, plugins), **(executor_options or {})) as run, \
                tqdm(total=sum(len(k) for k in groups.values()), desc=desc, unit="img") as progress:
            for (group, keys), done in zip(jobs, run(_pool, [keys for _, keys in jobs], 1)):
                for name, (rows, counts) in done.items():
                    collected[group][name][0].append(rows)
                    collected[group][name][1].extend(counts)
                progress.update(len(keys))
    return {group: {name: Rows(np.concatenate(rows), np.concatenate(([0], np.cumsum(counts))).astype(np.int64))
                    for name, (rows, counts) in by_name.items()} for group, by_name in collected.items()}


# --- methods of the stored descriptors --------------------------------------------------------

def pool_stored(path: Path, group: str, keys: list[str], methods: list[Method], settings: MethodSettings,
                subset: np.ndarray | None = None) -> dict[str, Rows]:
    """The rows of every method with ``stored="descriptors"`` for one group of descriptors.h5 (``subset``:
    the indices of ``keys`` among the group's entries, for ``full``, which holds every query)."""
    stored = [m for m in methods if m.stored == "descriptors"]
    if not stored:
        return {}
    with h5py.File(path, "r") as f:
        if f"{group}/desc" not in f:
            raise ValueError(f"{path}: no entry '{group}/desc' (re-run the descriptors stage)")
        rows, offsets = f[f"{group}/desc"][()], f[f"{group}/offsets"][()]
    entries = np.arange(len(offsets) - 1) if subset is None else subset
    if len(entries) != len(keys):
        raise ValueError(f"{path}: '{group}' has {len(entries)} entries, the dataset {len(keys)}; re-run the "
                         "descriptors stage")
    parts = {method.name: [describe(method, Image(key, settings=settings, descriptors=rows[offsets[i]:offsets[i + 1]]))
                           for key, i in zip(keys, entries)] for method in stored}
    del rows  # (1.9 GB on COIL-100: freed before the parts are stacked)
    return {method.name: stack(parts.pop(method.name), method) for method in stored}


def descriptor_shape(path: Path) -> tuple[int, int]:
    """The shape of descriptors.h5's database rows (the whitening stage's training rows)."""
    with h5py.File(path, "r") as f:
        return f["db/desc"].shape


def stored_whitening(path: Path, source: str, train_shape: tuple[int, int], dims: tuple[int, ...],
                     whitening: Whitening) -> StoredWhitening | None:
    """The whitening stage's fit when it is the fit the pipeline method would make, else None.

    It is when it was learned on ``source``'s database region descriptors (``train_shape``: the
    same number of rows and dimension) in the same mode, at a D at least the largest of ``dims``
    that they can span: the method's whitening at every D is then its leading axes, the numbers
    :func:`rdfa.methods.table1.whitenings` computes after its own fit.
    """
    if not path.is_file() or whitening.mode == "none":
        return None
    with h5py.File(path, "r") as f:
        if "transform" not in f:  # written before the transform was kept
            return None
        valid = [d for d in dims if d <= max_components(*train_shape)]
        if (str(f.attrs["learned_on"]) != source or int(f.attrs["n_train"]) != train_shape[0]
                or not valid or int(f.attrs["D"]) < max(valid)
                or f["transform/components"].shape[0] != train_shape[1]):
            return None
        vectors = {group: Rows(f[f"{group}/desc"][()], f[f"{group}/offsets"][()]) for group in ("db", "query", "full")}
    pca, stored_mode = load_whitening(path)
    if stored_mode.record() != whitening.record():  # the settings of the mode in use only
        return None
    return StoredWhitening(pca, int(pca.components.shape[1]), vectors)


# --- figures ----------------------------------------------------------------------------------

def read_ranks(path: Path) -> np.ndarray:
    """A ranks file of the ranking stage, ``(n_queries, n_images)``."""
    if not path.is_file():
        raise ValueError(f"{path}: ranks file not found (run the ranking stage)")
    return np.asarray(json.loads(path.read_text()), dtype=np.int64)


def figure_rows(paths: Paths, gnd: dict, ranks: np.ndarray, n_queries: int, top_k: int) -> list[dict]:
    """Figure 2's panels (:func:`rdfa.io.plots.plot_retrieval_examples`): evenly spaced queries, their
    top results, the best-matched region of each (matches.h5)."""
    from ..evaluation import is_revisited, positives_and_junk, relevance

    revisited = is_revisited(gnd["gnd"])
    rows = []
    with h5py.File(paths.matches, "r") as m, RegionHulls(paths) as hulls:
        best = m["best_region"]
        db_offsets = m["db_offsets"][()]
        for q in figure_picks(len(gnd["qimlist"]), n_queries):
            name, entry = gnd["qimlist"][q], gnd["gnd"][q]
            image, sx, sy = thumbnail(load_rgb(paths.images / name), FIGURE_HEIGHT)
            box = entry.get("bbx")
            query = {"image": image, "name": name,
                     "box": None if box is None else [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]}
            pos, junk = positives_and_junk(entry, revisited)
            results = []
            for i in ranks[q][:top_k]:
                db_name = gnd["imlist"][i]
                image, sx, sy = thumbnail(load_rgb(paths.images / db_name), FIGURE_HEIGHT)
                polygon, _ = hulls.polygon(db_name, int(best[q, i]) - int(db_offsets[i]))
                results.append({"image": image, "name": db_name, "status": relevance(i, pos, junk),
                                "polygon": rescale_points(polygon, (sx, sy))})
            rows.append({"query": query, "results": results})
    return rows


# --- the comparisons, in worker processes ----------------------------------------------------

_compare: dict = {}


def _share(state: dict) -> None:
    _compare.update(state)


def _compare_one(name: str):
    from ..methods.table1 import compare

    s = _compare
    with blas_threads(s["threads"]):
        return compare(get(name), s["test"][name], s["train"][name], s["gnd"], s["conf"], s["stored"])


def compare_all(methods: list[Method], test: dict, train: dict, gnd: dict, conf, stored: StoredWhitening | None,
                workers: int, threads: int) -> dict:
    """:func:`rdfa.methods.table1.compare` of every method: ``{name: MethodResult}``, in ``workers``
    local processes forked now (they inherit the rows without a copy), ``threads`` BLAS threads each,
    the costliest fits first. ``test[name]``: ``{group: Rows}``; ``train[name]``: ``Rows``."""
    def cost(m: Method) -> float:
        if m.pipeline and stored is not None:
            return 0.0
        n, d = train[m.name].rows.shape
        return float(min(n, d)) ** 2 * max(n, d)

    order = sorted(methods, key=lambda m: -cost(m))
    state = {"test": test, "train": train, "gnd": gnd, "conf": conf, "stored": stored, "threads": threads}
    with worker_map(min(workers, len(order)), _share, (state,)) as run:
        done = dict(zip([m.name for m in order], run(_compare_one, [m.name for m in order], 1)))
    _compare.clear()
    return done
