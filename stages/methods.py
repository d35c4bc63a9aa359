#!/usr/bin/env python3
"""Stage `methods`: Table 1 and Figure 1 in one run, baselines and the paper's variants side by side.

From the cached feature maps of one dataset, every method below is computed
for each D in ``methods.D``, searched without and with query expansion
(``ranking.n_qe``) and scored with the dataset's protocol (Medium for the
revisited datasets):

* baselines, one descriptor per image, l2 / PCA-whitened to D / l2: MAC,
  SPoC, CroW, GeM (``rdfa.baselines``), and R-MAC (regional MACs l2 /
  whitened / l2, summed, l2); average query expansion;
* the paper's variants (Figure 1): O1_W and O1_R (eq. 9 on the whole image /
  on every candidate region), O2_W and O2_R (eq. 5; O2_R is the main
  pipeline: its descriptors.h5 rows, the same whitening and search code);
  average QE for the whole-image ones, region QE (eq. 8) for the regional ones;
* ``R-MAC+G``: R-MAC with the whole-image MAC added as one more region (as
  cnnimageretrieval-pytorch's ``rmac`` does; Tolias et al.'s grid alone is
  ``R-MAC``);
* with ``methods.full_query`` and queries that have a box, every method again
  with uncropped queries (Table 1's "OF"), named ``<method>_full``.

Queries are described as the main pipeline describes them (the features,
points and regions stages compute every entry): a query with a box by its
cropped map (R_M for the regional methods), a query without one by its whole
map and all its candidate regions; ``<method>_full`` uses ``full/<i>``.

Whitening is learned on the database of ``whitening.train_on[<dataset>]``
(default: the dataset itself, as the paper) with the method's own training
vectors: image descriptors, or region descriptors for R-MAC, O1_R and O2_R;
the axes are scaled as ``whitening.mode`` says (eq. 6 for ``pca``). With
``methods.compare_whitening``, every method again under each mode listed,
named ``<method>_<mode>`` (the same fit and projection; ``none``: the
l2-normalised descriptors at full dimension, the same cell at every D).
A D that those vectors cannot span gives a null cell with the reason; a
poorly conditioned one carries ``whitening_note``'s warning. O2_R's
whitening is the whitening stage's (``whitened.h5``, its transform and
vectors) when that stage learned it on the same descriptors at a D at least
the largest needed here: the numbers a fit here would give, without the
largest fit of the stage.

The work is shared: one pass over the feature maps pools every method; one
fit per method (its largest D), one projection per method and set of
vectors (smaller D are its leading axes, ``rdfa.projection``); every query
searched at once (``rdfa.search.search_all``, ``global_search``, in blocks
of ``runtime.chunk_rows`` database rows); a query without a box is its own
uncropped variant, pooled and searched once.

Writes ``features/<ds>/methods.json``: ``{"methods": {name: {D: {"mAP",
"mAP_qe", ["reason"], ["warning"]}}}, "info": {...}}``. ``evaluate.py
--methods`` turns it into the DVC metrics file ``metrics/<ds>_methods.json``
(the numbers) and puts the rest (reasons, warnings, info) in
``results/<ds>.json``; method names and info keys are free. Under
``plots/<ds>/``: ``map_vs_d.json``, ``map_vs_d_qe.json`` and ``.png`` (mAP
against D per method, without and with QE), ``pr.json``/``.png``
(precision-recall of the proposed method, from ranks.json and ranks_qe.json)
and ``figure2.png`` (queries, their top results and the best-matched
regions, from matches.h5). A dataset without queries (a training set) has
no cells: ``{"methods": {}, "info": {"queries": 0, "note": ...}}``, empty
plot data and figures that say so.
"""
from __future__ import annotations

import json
import logging
import mmap
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from rdfa.baselines import crow, gem, global_search, mac, rmac_region_vectors, rmac_regions, spoc, sum_aggregate
from rdfa.evaluation import (
    headline_score,
    is_revisited,
    positives_and_junk,
    precision_recall_curve,
    relevance,
)
from rdfa.io import plots
from rdfa.io.atomic import write_json
from rdfa.io.gnd import NO_QUERIES, load_gnd
from rdfa.io.hulls import RegionHulls
from rdfa.io.images import load_rgb, thumbnail
from rdfa.io.keys import masks_for, query_keys, read_array
from rdfa.io.params import (
    ParamError,
    get,
    get_bool,
    get_float,
    get_int,
    runtime,
    training_dataset,
    whitening_setting,
)
from rdfa.io.provenance import check_same_basis, check_training_source, load_whitening, require_training_files
from rdfa.io.stage import Paths, blas_threads, numpy_huge_pages, run_stage
from rdfa.pooling import first_order, l2_normalize, live_channels
from rdfa.projection import whitened_variants
from rdfa.regions import rescale_points
from rdfa.search import search_all
from rdfa.weights import channel_sums, response_fractions, sparsity_weights, spatial_weights
from rdfa.whitening import (
    D_RULE,
    PCA,
    WHITENING_MODES,
    StreamingPCA,
    Whitening,
    fit_pca,
    max_components,
    whitening_note,
)

log = logging.getLogger("rdfa.methods")

#: Table 1's methods, in the table's order; the kind says how each is whitened and searched.
METHODS = {
    "MAC": "global", "SPoC": "global", "CroW": "global", "R-MAC": "rmac", "R-MAC+G": "rmac", "GeM": "global",
    "O1_W": "global", "O1_R": "regional", "O2_W": "global", "O2_R": "regional",
}
#: The methods whose descriptors come from descriptors.h5 (eq. 5), not from pooling here.
SECOND_ORDER = ["O2_W", "O2_R"]
#: Suffix of the uncropped-query variants (Table 1's "OF" column, Figure 1's "full").
FULL = "_full"
DIGITS = 6
#: Height of Figure 2's thumbnails, in pixels.
FIGURE_HEIGHT = 200


@dataclass
class Config:
    """What this stage reads from params.yaml (checked, with the key named in errors)."""

    dims: list[int]
    train_on: str
    modes: list  # (name suffix, Whitening): the main mode ("") first, then methods.compare_whitening
    full_query: bool
    n_qe: int
    include_query: bool
    beta_eps: float
    log_eps: float
    gem_p: float
    crow_a: float
    crow_b: float
    rmac_levels: int
    rmac_overlap: float
    main_dim: int
    blas_threads: int
    chunk_rows: int
    workers: int
    figure_queries: int
    figure_top_k: int


def read_config(params: dict, dataset: str) -> Config:
    dims = get(params, "methods.D")
    if (not isinstance(dims, list) or not dims
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims)):
        raise ParamError(f"params.yaml: 'methods.D' must be a non-empty list of positive integers (got {dims!r})")
    if get(params, "methods.whiten_on", None):
        raise ParamError("params.yaml: 'methods.whiten_on' is now 'whitening.train_on' (the main pipeline's "
                         "whitening and every method's learn on the same dataset)")
    main_whitening = whitening_setting(params)
    compare = get(params, "methods.compare_whitening", []) or []
    if not isinstance(compare, list) or not all(m in WHITENING_MODES for m in compare):
        raise ParamError(f"params.yaml: 'methods.compare_whitening' must be a list of modes among "
                         f"{', '.join(WHITENING_MODES)} (got {compare!r})")
    modes = [("", main_whitening)] + [
        (f"_{m}", replace(main_whitening, mode=m)) for m in dict.fromkeys(compare) if m != main_whitening.mode]
    full_query = get_bool(params, "methods.full_query", True)
    overlap = get_float(params, "methods.rmac_overlap", positive=True, default=0.4)
    if overlap >= 1:
        raise ParamError(f"params.yaml: 'methods.rmac_overlap' must be < 1 (got {overlap})")
    return Config(
        dims=sorted(set(dims)), train_on=training_dataset(params, dataset), modes=modes,
        full_query=full_query,
        n_qe=get_int(params, "ranking.n_qe", 0),
        include_query=get_bool(params, "ranking.qe_include_query", True),
        beta_eps=get_float(params, "weights.beta_eps", positive=True),
        log_eps=get_float(params, "descriptors.log_eps", positive=True),
        gem_p=get_float(params, "methods.gem_p", positive=True, default=3.0),
        crow_a=get_float(params, "methods.crow_a", positive=True, default=2.0),
        crow_b=get_float(params, "methods.crow_b", positive=True, default=2.0),
        rmac_levels=get_int(params, "methods.rmac_levels", 1, default=3),
        rmac_overlap=overlap,
        main_dim=get_int(params, "whitening.D", 1),
        blas_threads=runtime(params)["blas_threads"],
        chunk_rows=runtime(params)["chunk_rows"],
        workers=runtime(params)["workers"] or os.cpu_count() or 1,
        figure_queries=get_int(params, "methods.figure_queries", 1, default=4),
        figure_top_k=get_int(params, "methods.figure_top_k", 1, default=6),
    )


# --- raw (unwhitened) descriptors ------------------------------------------------------------

@dataclass
class Rows:
    """Stacked descriptors; image ``i`` owns rows ``offsets[i]:offsets[i + 1]``."""

    rows: np.ndarray
    offsets: np.ndarray

    def whole(self) -> "Rows":
        """The whole-image row of each image (the last region by convention)."""
        return Rows(self.rows[self.offsets[1:] - 1], np.arange(len(self.offsets)))

    def select(self, images: np.ndarray) -> "Rows":
        """The rows of ``images`` (indices), in that order."""
        counts = np.diff(self.offsets)[images]
        picked = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in images]
        index = np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)
        return Rows(self.rows[index], np.concatenate(([0], np.cumsum(counts))).astype(np.int64))


def pool_image(fmap: np.ndarray, masks: np.ndarray, conf: Config) -> dict[str, np.ndarray]:
    """Every method's raw descriptors of one feature map (O2 comes from descriptors.h5).

    Global baselines l2-normalised ``(K,)``; R-MAC's l2 region MACs; ``O1``:
    eq. (9) per region of ``masks``. R-MAC+G's rows are R-MAC's, then MAC's
    (:data:`POOLED`).

    Channels that are zero at every position (ReLU: a third of
    EfficientNet-Lite0's on COIL-100) are pooled by what they give, without
    their columns: 0 for every method but GeM, whose clamp makes each of
    them ``eps``. The others give the same numbers as the whole map, to the
    order of the sums (1e-16; ``tests/test_methods.py``).
    """
    stored = np.asarray(fmap)
    h, w, k = stored.shape
    live = live_channels(stored)
    if len(live) == 0:  # a map without any response: pooled as it is
        live = np.arange(k)
    # (np.take: the same copy as indexing the last axis, three times faster)
    compact = stored if len(live) == k else np.take(stored.reshape(h * w, k), live, axis=1).reshape(h, w, -1)
    fmap = compact.astype(np.float64)
    responding = np.zeros(k)
    responding[live] = response_fractions(compact)
    beta = sparsity_weights(responding, conf.beta_eps)  # eq. 2 over all K channels
    parts = _pool_channels(compact, fmap, masks, conf, beta[live])
    dead = {"GeM": gem(np.zeros((h, w, 1), dtype=stored.dtype), conf.gem_p)[0]}
    out = {}
    for name, values in parts.items():
        full = np.full(values.shape[:-1] + (k,), dead.get(name, 0.0))
        full[..., live] = values
        out[name] = full
    # GeM's dead channels are not 0: the vector is normalised with them (the others' norms do not change).
    out["GeM"] = l2_normalize(out["GeM"])
    return out


def _pool_channels(stored: np.ndarray, fmap: np.ndarray, masks: np.ndarray, conf: Config,
                   beta: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`pool_image`'s methods on the channels of ``stored`` (``fmap``: the same in float64), ``beta``
    their eq. 2 weights (GeM not normalised: its vector is completed first)."""
    summed = channel_sums(fmap)  # eq. 1's and CroW's spatial weights both start from it
    alpha = spatial_weights(fmap, summed)
    return {
        "MAC": l2_normalize(mac(stored)),  # maxima on the stored map: exact (rdfa.baselines.mac)
        "SPoC": l2_normalize(spoc(fmap)),
        "CroW": l2_normalize(crow(fmap, conf.crow_a, conf.crow_b, conf.beta_eps, beta=beta, summed=summed)),
        "GeM": gem(stored, conf.gem_p),  # the stored map: float16 powers are looked up
        "R-MAC": rmac_region_vectors(stored, rmac_regions(*fmap.shape[:2], conf.rmac_levels, conf.rmac_overlap)),
        "O1": first_order(fmap, masks, beta, alpha),
    }


#: What the pooling workers write per entry: kind -> the :func:`pool_image` parts, in order.
#: R-MAC+G is R-MAC's regions, then the whole-map MAC as one more region (l2, like every region).
POOLED = {"MAC": ("MAC",), "SPoC": ("SPoC",), "CroW": ("CroW",), "GeM": ("GeM",), "R-MAC": ("R-MAC",),
          "R-MAC+G": ("R-MAC", "MAC"), "O1": ("O1",)}


def read(f: h5py.File, key: str, path: Path) -> np.ndarray:
    """``f[key][()]``, or a ``ValueError`` naming the file when the entry is missing."""
    try:  # (a membership test first would cost HDF5 a second lookup of the key)
        return read_array(f, key)
    except KeyError:
        raise ValueError(f"{path}: no entry '{key}' (is it up to date with data/ and the stages before?)") from None


def shared_zeros(shape: tuple[int, int], dtype=np.float32) -> np.ndarray:
    """A zeroed array in an anonymous shared mapping: processes forked after it is made write
    into it, and this process sees their writes (no copy through a pipe)."""
    count = int(np.prod(shape))
    buffer = mmap.mmap(-1, max(count * np.dtype(dtype).itemsize, 1))
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


@dataclass
class PoolTarget:
    """Where the pooled rows of one group of entries go (``keys``, in order).

    Per kind of :data:`POOLED`, ``rows[kind]`` (shared with the workers:
    :func:`shared_zeros`) and ``offsets[kind]``: entry ``i`` owns rows
    ``offsets[i]:offsets[i + 1]``. ``region_counts``: the regions each entry
    has in descriptors.h5 (``source``), which the O1 rows must match.
    """

    keys: list[str]
    offsets: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]
    region_counts: np.ndarray
    group: str
    source: Path

    def views(self) -> dict[str, Rows]:
        return {kind: Rows(self.rows[kind], self.offsets[kind]) for kind in POOLED}


def pool_target(paths: Paths, keys: list[str], region_counts: np.ndarray, conf: Config, group: str) -> PoolTarget:
    """The rows :func:`pool_image` will give ``keys``, allocated: their number follows from each
    feature map's shape (R-MAC's grid) and from descriptors.h5's region counts (O1)."""
    grids: dict[tuple[int, int], int] = {}
    n_rmac = np.empty(len(keys), dtype=np.int64)
    channels = 0
    with h5py.File(paths.features, "r") as f:
        for i, key in enumerate(keys):
            try:  # (a membership test first would cost HDF5 a second lookup of the key)
                h, w, channels = f[f"{key}/fmap"].shape
            except KeyError:
                raise ValueError(f"{paths.features}: no entry '{key}/fmap' "
                                 "(is it up to date with data/ and the stages before?)") from None
            if (h, w) not in grids:
                grids[h, w] = len(rmac_regions(h, w, conf.rmac_levels, conf.rmac_overlap))
            n_rmac[i] = grids[h, w]
    ones = np.ones(len(keys), dtype=np.int64)
    per_part = {"MAC": ones, "SPoC": ones, "CroW": ones, "GeM": ones, "R-MAC": n_rmac,
                "O1": np.asarray(region_counts, dtype=np.int64)}
    offsets = {kind: np.concatenate(([0], np.cumsum(sum(per_part[part] for part in parts)))).astype(np.int64)
               for kind, parts in POOLED.items()}
    rows = {kind: shared_zeros((int(o[-1]), channels)) for kind, o in offsets.items()}
    return PoolTarget(keys, offsets, rows, per_part["O1"], group, paths.descriptors)


#: Images per task of a pooling worker process.
CHUNK_IMAGES = 32
#: How much the pooling processes lower their priority (``nice``) beside the second-order process.
POOL_NICENESS = 5


class _Pooler:
    """Per-process state of the pooling workers: the open input files, the settings and the
    targets (set before the fork, so that the workers write into the same shared arrays).

    Each worker opens ``features.h5`` and ``regions.h5`` itself (an HDF5 handle must not
    cross a fork).
    """

    paths: Paths | None = None
    features = regions = None
    conf: Config | None = None
    targets: list[PoolTarget] = []

    @classmethod
    def start(cls, paths: Paths, conf: Config, niceness: int = 0) -> None:
        cls.paths, cls.conf = paths, conf
        cls.features, cls.regions = h5py.File(paths.features, "r"), h5py.File(paths.regions, "r")
        if niceness:
            os.nice(niceness)

    @classmethod
    def stop(cls) -> None:
        for f in (cls.features, cls.regions):
            if f is not None:
                f.close()
        cls.features = cls.regions = None

    @classmethod
    def pool(cls, task: tuple[int, int, int]) -> int:
        """:func:`pool_image` of entries ``start:stop`` of target ``t``, written in place (float32,
        the stored precision); returns their number."""
        t, start, stop = task
        target = cls.targets[t]
        # Many small steps: one BLAS thread (parallelism comes from the worker processes).
        with blas_threads(1):
            for i in range(start, stop):
                key = target.keys[i]
                fmap = read(cls.features, f"{key}/fmap", cls.paths.features)
                masks = masks_for(key, fmap.shape, cls.regions, cls.paths.regions)
                if len(masks) != target.region_counts[i]:
                    raise ValueError(f"{target.source}: {target.group} region counts differ from regions.h5 "
                                     f"('{key}': {target.region_counts[i]} regions, {len(masks)} in "
                                     f"{cls.paths.regions}); re-run the descriptors stage")
                parts = pool_image(fmap, masks, cls.conf)
                for kind, sources in POOLED.items():
                    row = target.offsets[kind][i]
                    for part in sources:
                        value = np.atleast_2d(parts[part])
                        target.rows[kind][row:row + len(value)] = value  # cast as astype(float32) does
                        row += len(value)
        return stop - start


def start_pooling(paths: Paths, targets: list[PoolTarget], conf: Config, desc: str, niceness: int = 0):
    """:func:`pool_image` of every entry of ``targets`` into their arrays, in ``conf.workers``
    processes forked now (one pass for all the groups; their scheduling priority lowered by
    ``niceness``); the returned function waits for the end, showing progress. The rows do not
    depend on the number of workers."""
    tasks = [(t, i, min(i + CHUNK_IMAGES, len(target.keys)))
             for t, target in enumerate(targets) for i in range(0, len(target.keys), CHUNK_IMAGES)]
    workers = min(conf.workers, len(tasks))
    _Pooler.targets = targets
    pool = None
    if workers > 1:
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_Pooler.start,
                                                        initargs=(paths, conf, niceness))
        results = pool.imap_unordered(_Pooler.pool, tasks)
    else:
        results = None

    def wait() -> None:
        total = sum(len(target.keys) for target in targets)
        try:
            with tqdm(total=total, desc=desc, unit="img") as progress:
                if pool is None:
                    _Pooler.start(paths, conf)
                    for task in tasks:
                        progress.update(_Pooler.pool(task))
                else:
                    for done in results:
                        progress.update(done)
        finally:
            if pool is not None:
                pool.terminate()
            else:
                _Pooler.stop()
            _Pooler.targets = []
    return wait


def database_rows(paths: Paths, gnd: dict, conf: Config, desc: str) -> dict[str, Rows]:
    """Raw descriptors of every database image of another dataset (the whitening's), but O2."""
    target = pool_target(paths, group_keys(gnd, "db"), region_counts(paths.descriptors, "db"), conf, "db")
    start_pooling(paths, [target], conf, desc)()
    return target.views()


class UnreadRows:
    """Stands for rows left unread (only their shape is needed): any use of their values raises."""

    def __init__(self, shape: tuple, path: Path):
        self.shape, self.path = tuple(shape), path

    def __len__(self) -> int:
        return self.shape[0]

    def _refuse(self, *args, **kwargs):
        raise RuntimeError(f"{self.path}: rows used that were left unread (a bug: please report it)")

    __array__ = __getitem__ = _refuse


def second_order_views(path: Path, group: str, boxed: np.ndarray | None, read_all: bool,
                       which: tuple[str, ...] = ("O2_W", "O2_R")) -> dict[str, Rows]:
    """O2_W and O2_R (``which`` of them) of one group of descriptors.h5 (``full``: the boxed
    queries ``boxed`` only).

    ``read_all`` False: the database's region rows are not read (O2_R then reuses the whitening
    stage's fit and vectors, which need only their shape), only each image's whole-image row
    (for O2_W: nothing at all without it).
    """
    with h5py.File(path, "r") as f:
        if f"{group}/desc" not in f:
            raise ValueError(f"{path}: no entry '{group}/desc' (re-run the descriptors stage)")
        data, offsets = f[f"{group}/desc"], f[f"{group}/offsets"][()]
        if read_all or group != "db":
            rows = Rows(data[()], offsets)
            if boxed is not None:
                rows = rows.select(boxed)
            return {name: view for name, view in (("O2_W", rows.whole()), ("O2_R", rows)) if name in which}
        regions = Rows(UnreadRows(data.shape, path), offsets)
        if "O2_W" not in which:
            return {"O2_R": regions}
        # Each image's last row, read row by row into place: HDF5 then reads those rows alone
        # (the dataset is not compressed), not the whole file (1.9 GB on COIL-100; 1.7 -> 1.0 s).
        whole = np.empty((len(offsets) - 1, data.shape[1]), dtype=data.dtype)
        for i, row in enumerate(offsets[1:] - 1):
            data.read_direct(whole, np.s_[int(row):int(row) + 1], np.s_[i:i + 1])
        return {name: view for name, view in (("O2_W", Rows(whole, np.arange(len(offsets)))), ("O2_R", regions))
                if name in which}


def boxed_queries(gnd: dict) -> np.ndarray:
    """Indices of the queries that have a box: the only ones whose uncropped variant differs."""
    return np.array([i for i, entry in enumerate(gnd["gnd"]) if entry.get("bbx") is not None], dtype=np.int64)


def group_keys(gnd: dict, group: str) -> list[str]:
    """The entries of a group: the database, the queries as the main pipeline describes them, or
    ``full``, the uncropped variant of the boxed queries.

    A boxed query is described by its crop (R_M), one without a box, and every ``full`` one, by
    its whole map and all its candidate regions (``rdfa.io.keys``). ``full`` holds the boxed
    queries only (:func:`boxed_queries`, in order): a query without a box is its own uncropped
    variant, described and searched once, under ``query``."""
    if group == "db":
        return [f"db/{name}" for name in gnd["imlist"]]
    return query_keys(gnd) if group == "query" else [f"full/{i}" for i in boxed_queries(gnd)]


def region_counts(path: Path, group: str, boxed: np.ndarray | None = None) -> np.ndarray:
    """The regions of each entry of a group of descriptors.h5 (``full``: of the boxed queries ``boxed``)."""
    with h5py.File(path, "r") as f:
        if f"{group}/offsets" not in f:
            raise ValueError(f"{path}: no entry '{group}/offsets' (re-run the descriptors stage)")
        counts = np.diff(f[f"{group}/offsets"][()])
    return counts[boxed] if boxed is not None else counts


def method_views(rows: dict[str, Rows]) -> dict[str, Rows]:
    """What each pooled method of :data:`METHODS` uses from one set of raw descriptors."""
    views = {name: rows[name] for name in ("MAC", "SPoC", "CroW", "GeM", "R-MAC", "R-MAC+G")}
    views.update({"O1_W": rows["O1"].whole(), "O1_R": rows["O1"]})
    return views


# --- whitening, search, scoring --------------------------------------------------------------

def whitenings(train: np.ndarray, dims: list[int], method: str, fitted: PCA | None = None) -> dict[int, PCA | str]:
    """PCA-whitening per D, or the reason it cannot be learned.

    One fit at the largest learnable D; smaller D keep its leading axes
    (the same axes a fit at that D finds). ``fitted``: a fit on ``train``
    already made at that D or more (the whitening stage's, for O2_R),
    used instead of fitting again.
    """
    limit = max_components(*train.shape)
    out: dict[int, PCA | str] = {}
    for dim in dims:
        if dim > limit:
            try:  # raises before fitting anything: only for its message
                fit_pca(train, dim, name=f"methods.D ({method})")
            except ValueError as err:
                out[dim] = str(err)
    valid = [d for d in dims if d not in out]
    if valid:
        pca = fitted if fitted is not None else fit_pca(train, max(valid), name=f"methods.D ({method})")
        for dim in valid:
            out[dim] = PCA(pca.mean, pca.components[:, :dim], pca.eigenvalues[:dim], pca.total_variance)
    return out


@dataclass
class StoredWhitening:
    """The whitening stage's fit (``whitened.h5``): the main pipeline's O2_R whitening.

    ``vectors``: the whitened rows it stores (``db``, ``query``, ``full``),
    eq. (6) (in ``whitening.mode``) at ``dim`` of the same descriptors this
    stage reads, so O2_R at that D needs no projection either.
    """

    pca: PCA
    dim: int
    vectors: dict[str, Rows]


def stored_whitening(path: Path, source: str, train_shape: tuple[int, int], dims: list[int],
                     whitening: Whitening) -> StoredWhitening | None:
    """The whitening stage's fit when it is the fit O2_R would make, else None.

    It is when it was learned on ``source``'s database region descriptors
    (``train_shape``: the same number of rows and dimension) in the same mode, at a
    D at least the largest of ``dims`` that they can span: O2_R's whitening at
    every D is then its leading axes, the very numbers :func:`whitenings`
    computes after its own fit (the same ``fit_pca`` on the same rows).
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


def spectrum_record(pca: PCA) -> dict:
    """What a cell's results say of the fit behind it (the D rule of the README reads them).

    ``variance_kept``: the share of the training variance on the D kept axes;
    ``last_axis_variance``: the variance of the D-th axis relative to the mean
    variance per dimension (eq. 6 multiplies that axis by its inverse square
    root: small values are the poorly estimated axes whitening amplifies).
    """
    total = pca.total_variance
    if not np.isfinite(total) or total <= 0:
        return {}
    mean = total / len(pca.mean)
    return {"variance_kept": round(float(pca.eigenvalues.sum() / total), 4),
            "last_axis_variance": round(float(pca.eigenvalues[-1] / mean), 4)}


def leading_columns(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Whitened vectors at a smaller D: their first ``dim`` columns, l2-normalised, float32."""
    return l2_normalize(vectors[:, :dim]).astype(np.float32)


def whitened_rows(kind: str, rows: Rows, pcas: dict[int, PCA | str], conf: Config,
                  stored: tuple[int, np.ndarray] | None = None) -> dict[str, dict[int, np.ndarray]]:
    """``rows`` as the method searches them, per whitening mode (its name suffix) and learnable D:
    whitened rows (regional), or one vector per image (R-MAC: its whitened regions summed, eq. 6
    then sum and l2).

    One projection on the axes of the largest D serves every D and mode
    (``rdfa.projection``); ``stored``: ``(D, rows already whitened at D)`` in the main mode (O2_R
    from whitened.h5). Mode ``none``: the l2-normalised rows at every D of ``conf.dims``.
    """
    def searched(vectors: np.ndarray) -> np.ndarray:  # R-MAC: each image's regions summed, then l2
        return sum_aggregate(vectors, rows.offsets) if kind == "rmac" else vectors

    valid = [d for d in pcas if not isinstance(pcas[d], str)]
    out: dict[str, dict[int, np.ndarray]] = {}
    projected = []
    for suffix, whitening in conf.modes:
        if whitening.mode == "none":
            plain = searched(l2_normalize(np.asarray(rows.rows, dtype=np.float64)).astype(np.float32))
            out[suffix] = {dim: plain for dim in conf.dims}  # no PCA: D does not apply
            continue
        out[suffix] = {}
        if stored is not None and not suffix:
            # Every smaller D is the leading columns of the stored vectors, l2-normalised again (each
            # axis's factor is the same at every D): no projection of the raw rows at all.
            out[suffix] = {dim: stored[1] if dim == stored[0] else leading_columns(stored[1], dim)
                           for dim in valid if dim <= stored[0]}
        projected.append((suffix, whitening, [d for d in valid if d not in out[suffix]]))
    if any(dims for _, _, dims in projected):
        top = max(d for _, _, dims in projected for d in dims)
        computed = whitened_variants(rows.rows, pcas[top], [(w, dims) for _, w, dims in projected], conf.chunk_rows)
        for (suffix, _, _), vectors in zip(projected, computed):
            out[suffix].update({dim: searched(w) for dim, w in vectors.items()})
    return out


def rank(kind: str, db: Rows, db_w: np.ndarray, queries: Rows, q_w: np.ndarray,
         conf: Config) -> tuple[np.ndarray, np.ndarray]:
    """Ranks without and with QE of every query for one method at one D (``*_w``: :func:`whitened_rows`)."""
    if kind == "regional":
        ranks, _, _, ranks_qe, _, _ = search_all(q_w, queries.offsets, db_w, db.offsets, conf.n_qe,
                                                 conf.include_query, conf.chunk_rows)
        return ranks, ranks_qe
    return global_search(q_w, db_w, conf.n_qe)


def rounded(value):
    return None if value is None else round(float(value), DIGITS)


@dataclass
class MethodResult:
    """One method's cells (``<method>`` and ``<method>_full``), and what the stage reports of it."""

    cells: dict
    n_train: int
    main_ranks: tuple | None  # O2_R's (ranks, ranks_qe) at whitening.D, for the ranking stage check


def compare_method(method: str, test: dict, train: dict, conf: Config, gnd: dict,
                   stored: StoredWhitening | None = None, fitted: PCA | None = None) -> MethodResult:
    """Every mode x D x {cropped, full} cell of one method of :data:`METHODS`.

    ``test["full"]``, when there, holds the boxed queries only (:func:`group_keys`); the others
    rank as in the cropped cell. ``stored``: the whitening stage's fit, O2_R's own
    (:func:`stored_whitening`). ``fitted``: the method's fit on its training rows at its largest
    learnable D, made already (:func:`shared_fits`). Mode ``none`` is searched once and its cells
    repeated at every D.
    """
    start = time.time()
    kind = METHODS[method]
    boxed = boxed_queries(gnd)
    results: dict = {}
    main_ranks = None
    train_rows = train["db"][method].rows
    reuse = stored if method == "O2_R" else None
    needs_fit = any(w.mode != "none" for _, w in conf.modes)
    pcas = (whitenings(train_rows, conf.dims, method, fitted=reuse.pca if reuse else fitted) if needs_fit
            else {dim: "" for dim in conf.dims})
    db = test["db"][method]
    db_w = whitened_rows(kind, db, pcas, conf, (reuse.dim, reuse.vectors["db"].rows) if reuse else None)
    query_sets = {"": test["query"][method]}
    if "full" in test:
        query_sets[FULL] = test["full"][method]
    q_w = {}
    for suffix, queries in query_sets.items():
        kept = None
        if reuse:  # whitened.h5's full group has every query: keep the boxed ones, as test["full"]
            kept = (reuse.dim, reuse.vectors["full"].select(boxed).rows if suffix else reuse.vectors["query"].rows)
        q_w[suffix] = whitened_rows(kind, queries, pcas, conf, kept)
    for mode_suffix, whitening in conf.modes:
        searched: dict = {}  # mode none: one search serves every D
        for dim in conf.dims:
            pca = pcas[dim] if whitening.mode != "none" else None
            ranks_by_set = {}
            for suffix, queries in query_sets.items():
                cells = results.setdefault(method + mode_suffix + suffix, {})
                if isinstance(pca, str):
                    cells[str(dim)] = {"mAP": None, "mAP_qe": None, "reason": pca}
                    continue
                db_vectors, q_vectors = db_w[mode_suffix][dim], q_w[suffix][mode_suffix][dim]
                key = (suffix, id(db_vectors), id(q_vectors))
                if key in searched:
                    ranks_by_set[suffix] = searched[key]
                elif suffix:  # the queries without a box rank as their cropped selves: search the others
                    ranks, ranks_qe = (r.copy() for r in ranks_by_set[""])
                    ranks[boxed], ranks_qe[boxed] = rank(kind, db, db_vectors, queries, q_vectors, conf)
                    ranks_by_set[suffix] = searched[key] = ranks, ranks_qe
                else:
                    ranks_by_set[suffix] = searched[key] = rank(kind, db, db_vectors, queries, q_vectors, conf)
                ranks, ranks_qe = ranks_by_set[suffix]
                cells[str(dim)] = {"mAP": rounded(headline_score(ranks, gnd["gnd"])),
                                   "mAP_qe": rounded(headline_score(ranks_qe, gnd["gnd"]))}
                if whitening.mode == "none":
                    cells[str(dim)]["note"] = (f"unwhitened: the l2-normalised {db_vectors.shape[1]}-dimensional "
                                               "descriptors, the same at every D")
                else:
                    cells[str(dim)].update(spectrum_record(pcas[dim]))
                    note = whitening_note(len(train_rows), dim, whitening)
                    if note:
                        cells[str(dim)]["warning"] = note
                if method == "O2_R" and not suffix and not mode_suffix and dim == conf.main_dim:
                    main_ranks = ranks, ranks_qe
    log.info("%-5s (%s, whitening learned on %d vectors%s): %s  [%.1f s]", method, kind, len(train_rows),
             ", the whitening stage's fit" if reuse else "",
             "; ".join(f"{mode_suffix[1:] or conf.modes[0][1].label}: " + ", ".join(
                 f"D={d}: {c['mAP'] if c['mAP'] is not None else 'n/a'}"
                 for d, c in results[method + mode_suffix].items()) for mode_suffix, _ in conf.modes),
             time.time() - start)
    return MethodResult(results, len(train_rows), main_ranks)


#: Methods compared in one task, their fits shared (:func:`shared_fits`): R-MAC+G's training rows
#: are R-MAC's plus the whole-map MACs, so its scatter matrix is R-MAC's plus theirs.
SHARED_FITS = ("R-MAC", "R-MAC+G")


def shared_fits(train: dict, conf: Config) -> dict[str, PCA]:
    """R-MAC's and R-MAC+G's fits at their largest learnable D, from one pass over R-MAC's rows.

    The scatter matrix of R-MAC's training rows is accumulated once and fitted; the MAC rows are
    then added to it and it is fitted again: R-MAC+G's rows are the same set (a PCA does not
    depend on the order of its rows). Nothing is fitted for a method without a learnable D, nor
    at all when every whitening mode compared is ``none``.
    """
    if all(w.mode == "none" for _, w in conf.modes):
        return {}
    regions, whole = train["db"]["R-MAC"].rows, train["db"]["MAC"].rows
    fitter = StreamingPCA(regions.shape[1])
    fits: dict[str, PCA] = {}
    for method, rows in zip(SHARED_FITS, (regions, whole)):
        fitter.add(rows)
        valid = [d for d in conf.dims if d <= max_components(fitter.n, fitter.dim)]
        if valid:
            fits[method] = fitter.fit(max(valid), name=f"methods.D ({method})")
    return fits


class _Comparer:
    """What the method worker processes share: set before the fork, inherited without a copy.

    ``state[0]`` may be a function returning ``(test, train)``: the process reads its rows itself.
    """

    state: tuple = ()

    @classmethod
    def run(cls, task: tuple[str, ...]) -> dict[str, MethodResult]:
        """The methods of one task (one, or :data:`SHARED_FITS`)."""
        views, conf, gnd, stored, threads = cls.state
        if callable(views):
            views = cls.state = (views(),) + cls.state[1:]  # once per process
            views = views[0]
        test, train = views
        with blas_threads(threads):
            fits = shared_fits(train, conf) if len(task) > 1 else {}
            return {method: compare_method(method, test, train, conf, gnd, stored, fits.get(method))
                    for method in task}


def largest_first(methods: list[str], train: dict) -> list[str]:
    """By decreasing training rows (the largest fits first): the others fill the other processes
    meanwhile."""
    return sorted(methods, key=lambda m: -len(train["db"][m].rows))


def tasks_of(order: list[str]) -> list[tuple[str, ...]]:
    """``order`` as tasks: the methods of :data:`SHARED_FITS` together, where the first of them was."""
    if not all(m in order for m in SHARED_FITS):
        return [(m,) for m in order]
    tasks = [(m,) for m in order if m not in SHARED_FITS]
    tasks.insert(min(order.index(m) for m in SHARED_FITS), SHARED_FITS)
    return tasks


def start_compare(views, conf: Config, gnd: dict, stored: StoredWhitening | None,
                  order: list[str], workers: int, threads: int):
    """:func:`compare_method` of the methods ``order`` (in that order) in ``workers`` processes
    forked now, each with ``threads`` BLAS threads; ``views``: ``(test, train)``, or a function
    that each process calls to read them. The returned object's ``get()`` waits for
    ``{method: MethodResult}``. The cells do not depend on the number of processes."""
    tasks = tasks_of(order)
    _Comparer.state = (views, conf, gnd, stored, threads)
    try:
        pool = multiprocessing.get_context("fork").Pool(max(1, min(workers, len(tasks))))
    finally:
        _Comparer.state = ()
    pending = pool.map_async(_Comparer.run, tasks, chunksize=1)

    class Running:
        @staticmethod
        def get() -> dict[str, MethodResult]:
            try:
                return {method: result for done in pending.get() for method, result in done.items()}
            finally:
                pool.terminate()
    return Running


# --- figures ---------------------------------------------------------------------------------

def read_ranks(path: Path) -> np.ndarray:
    """A ranks file of the ranking stage, ``(n_queries, n_images)`` (an array: a fifth of the memory
    of the lists, 200 MB on COIL-100)."""
    if not path.is_file():
        raise ValueError(f"{path}: ranks file not found (run the ranking stage)")
    return np.asarray(json.loads(path.read_text()), dtype=np.int64)


def pr_records(gnd: dict, ranks: np.ndarray, ranks_qe: np.ndarray) -> list[dict]:
    revisited = is_revisited(gnd["gnd"])
    curves: dict = {"precision": [], "precision_qe": []}
    for q, entry in enumerate(gnd["gnd"]):
        pos, junk = positives_and_junk(entry, revisited)
        if len(pos) == 0:
            continue
        for key, ranked in (("precision", ranks[q]), ("precision_qe", ranks_qe[q])):
            recall, precision = precision_recall_curve(ranked, pos, junk)
            # Without the (0, 1) starting point: interpolation takes the best real precision.
            curves[key].append((recall[1:], precision[1:]))
    return plots.mean_pr_records(curves)


def figure_rows(paths: Paths, gnd: dict, ranks: np.ndarray, conf: Config) -> list[dict]:
    """Figure 2's panels: evenly spaced queries, their top results, best-matched region hulls."""
    n_q = len(gnd["qimlist"])
    picks = sorted(set(np.linspace(0, n_q - 1, min(conf.figure_queries, n_q)).round().astype(int).tolist()))
    revisited = is_revisited(gnd["gnd"])
    rows = []
    with h5py.File(paths.matches, "r") as m, RegionHulls(paths) as hulls:
        best = m["best_region"]
        db_offsets = m["db_offsets"][()]
        for q in picks:
            name, entry = gnd["qimlist"][q], gnd["gnd"][q]
            image, sx, sy = thumbnail(load_rgb(paths.images / name), FIGURE_HEIGHT)
            box = entry.get("bbx")
            query = {"image": image, "name": name,
                     "box": None if box is None else [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]}
            pos, junk = positives_and_junk(entry, revisited)
            results = []
            for i in ranks[q][:conf.figure_top_k]:
                db_name = gnd["imlist"][i]
                image, sx, sy = thumbnail(load_rgb(paths.images / db_name), FIGURE_HEIGHT)
                polygon, _ = hulls.polygon(db_name, int(best[q, i]) - int(db_offsets[i]))
                results.append({"image": image, "name": db_name, "status": relevance(i, pos, junk),
                                "polygon": rescale_points(polygon, (sx, sy))})
            rows.append({"query": query, "results": results})
    return rows


#: What write_result_figures and write_map_plots write under plots/<dataset>/ (dvc.yaml declares them
#: as the methods stage's plots).
PLOT_FILES = ("map_vs_d.json", "map_vs_d_qe.json", "map_vs_d.png", "pr.json", "pr.png", "figure2.png")
#: The curves of pr.json / pr.png: field of :func:`pr_records` -> name.
PR_CURVES = {"precision": "O2_R", "precision_qe": "O2_R + QE"}


def write_map_plots(paths: Paths, methods: dict, conf: Config) -> None:
    """mAP against D per method, without and with QE: the plot data and the figure."""
    out = paths.plots
    write_json(out / "map_vs_d.json", plots.map_vs_d_records(methods, conf.dims, "mAP"))
    write_json(out / "map_vs_d_qe.json", plots.map_vs_d_records(methods, conf.dims, "mAP_qe"))
    plots.plot_map_vs_d(methods, conf.dims, out / "map_vs_d.png", paths.dataset)


def write_result_figures(paths: Paths, gnd: dict, conf: Config) -> tuple[np.ndarray, np.ndarray]:
    """What comes from the ranking stage's results, not from the methods: the precision-recall
    curves of the proposed method and Figure 2. Returns the ranks read (without and with QE)."""
    out = paths.plots
    ranks, ranks_qe = read_ranks(paths.ranks), read_ranks(paths.ranks_qe)
    records = pr_records(gnd, ranks, ranks_qe)
    write_json(out / "pr.json", plots.by_method_records(records, "recall", PR_CURVES, "precision"))
    plots.plot_pr(records, PR_CURVES, out / "pr.png", f"{paths.dataset}: proposed method (O2_R)")
    plots.plot_retrieval_examples(figure_rows(paths, gnd, ranks, conf), out / "figure2.png",
                                  f"{paths.dataset}: top results; green/red/gray = relevant/irrelevant/junk, "
                                  "yellow = best-matched region")
    return ranks, ranks_qe


def write_no_queries(paths: Paths, conf: Config, n_images: int) -> None:
    """A training set (no queries): nothing searched; methods.json without cells and every plot
    file of :data:`PLOT_FILES` empty (plot data) or saying so (figures)."""
    note = "no queries: a training set only"
    log.info("%s: %s: no method searched, methods.json and the plots written empty", paths.dataset, NO_QUERIES)
    write_json(paths.methods, {"methods": {}, "info": {
        "queries": 0, "n_images": n_images, "note": note, "whitening": conf.modes[0][1].record(),
        "whitening_learned_on": conf.train_on, "D": conf.dims}})
    for name in PLOT_FILES:
        if name.endswith(".json"):
            write_json(paths.plots / name, [])
        else:
            plots.plot_note(paths.plots / name, f"{paths.dataset}: {note}")


# --- stage -----------------------------------------------------------------------------------

def main(dataset: str, params: dict, paths) -> None:
    conf = read_config(params, dataset)
    gnd = load_gnd(paths.data, need_queries=False)
    if not gnd["qimlist"]:
        return write_no_queries(paths, conf, len(gnd["imlist"]))
    revisited = is_revisited(gnd["gnd"])
    cross = conf.train_on != dataset
    source = Paths(paths.data.parent.parent, conf.train_on)
    if cross:
        # Everything learned comes from the other dataset: its K -> K' basis (eq. 4, learned on it by
        # our pca stage, so that our second-order descriptors share its space) and its database.
        require_training_files(dataset, conf.train_on, source.features, source.regions, source.descriptors)
        check_same_basis(dataset, conf.train_on, paths.descriptors, source.descriptors)
    log.info("%s: %d database images, %d queries; D in %s; whitening %s learned on %s; N_QE=%d",
             dataset, len(gnd["imlist"]), len(gnd["qimlist"]), conf.dims,
             " / ".join(w.label for _, w in conf.modes), conf.train_on, conf.n_qe)
    check: dict = {}

    def ranks_check(ranks, ranks_qe, stored):  # stored: the ranking stage's, as the figures read them
        same = np.array_equal(ranks, stored[0]) and np.array_equal(ranks_qe, stored[1])
        check["O2_R_matches_ranking_stage"] = bool(same)
        if not same:
            log.warning("O2_R at D=%d ranks differently from %s / %s: are they up to date?",
                        conf.main_dim, paths.ranks, paths.ranks_qe)

    # O2_R's whitening is the main pipeline's: reused when the whitening stage learned it on the
    # same descriptors, in the same mode, at a large enough D (the largest fit of this stage).
    if paths.whitened.is_file():
        check_training_source(paths, dataset)
    train_paths = source if cross else paths
    with h5py.File(train_paths.descriptors, "r") as f:
        train_shape = f["db/desc"].shape
    stored = stored_whitening(paths.whitened, conf.train_on, train_shape, conf.dims, conf.modes[0][1])
    # Reused (and no other mode to compare): O2_R needs the shape of the region rows, not the rows.
    read_all = stored is None or len(conf.modes) > 1
    boxed = boxed_queries(gnd)
    groups = ["db", "query"] + (["full"] if conf.full_query and len(boxed) else [])

    def subset(group: str) -> np.ndarray | None:  # the entries of descriptors.h5's group this stage uses
        return boxed if group == "full" else None

    # O2_W's fit (the Gram matrix of the database's whole-image rows, 8256 dimensions) is the
    # longest task of the stage: it runs in a process of its own from the start, beside the
    # pooling. So does O2_R when it fits whitenings of its own; reusing the whitening stage's,
    # it only searches, among the other methods after the pooling.
    alone = SECOND_ORDER if read_all else ["O2_W"]

    def second_order_rows() -> tuple[dict, dict]:  # read by that process itself
        second = {group: second_order_views(paths.descriptors, group, subset(group), read_all, tuple(alone))
                  for group in groups}
        if not cross:
            return second, second
        return second, {"db": second_order_views(source.descriptors, "db", None, read_all, tuple(alone))}

    workers = max(1, conf.workers)
    # Many large temporary arrays in every process of this stage: huge pages cost more kernel time
    # than they save (rdfa.io.stage.numpy_huge_pages).
    numpy_huge_pages(False)
    running = start_compare(second_order_rows, conf, gnd, stored, alone, 1, conf.blas_threads or 1)
    # Every group pooled in one pass, written in place by the workers (forked while this process
    # is small), which yield the cores to that process (niceness): it then has one to itself, and
    # the stage ends sooner. O1's rows must match descriptors.h5's regions per entry (checked as
    # they are pooled).
    targets = [pool_target(paths, group_keys(gnd, group),
                           region_counts(paths.descriptors, group, subset(group)), conf, group)
               for group in groups]
    start_pooling(paths, targets, conf, f"methods {dataset}", niceness=POOL_NICENESS)()
    if cross:
        pooled_train = database_rows(source, load_gnd(source.data, need_queries=False), conf,
                                     f"methods {conf.train_on} db (whitening)")
    test = {target.group: method_views(target.views()) for target in targets}
    train = {"db": method_views(pooled_train)} if cross else test
    if "O2_R" not in alone:
        for group in groups:
            test[group].update(second_order_views(paths.descriptors, group, subset(group), False, ("O2_R",)))
        if cross:
            train["db"].update(second_order_views(source.descriptors, "db", None, False, ("O2_R",)))
    first = largest_first([m for m in METHODS if m not in alone], train)
    threads = conf.blas_threads or max(1, (os.cpu_count() or 1) // workers)
    comparing = start_compare((test, train), conf, gnd, stored, first, workers, threads)
    # Meanwhile, the figures that do not depend on the methods (the processes seldom end together).
    stored_ranks = write_result_figures(paths, gnd, conf)
    done = comparing.get()
    done.update(running.get())
    methods: dict = {}
    for method in METHODS:  # methods.json in Table 1's order
        methods.update(done[method].cells)
        if done[method].main_ranks is not None:
            ranks_check(*done[method].main_ranks, stored_ranks)
    n_train = {method: done[method].n_train for method in METHODS}
    info = {
        "whitening": conf.modes[0][1].record(),
        "whitening_compared": [w.record() for _, w in conf.modes[1:]],
        "whitening_learned_on": conf.train_on,
        "whitening_on_test_database": not cross,
        "whitening_train_vectors": n_train,
        "whitening_D_rule": D_RULE,
        "D": conf.dims,
        "n_qe": conf.n_qe,
        "qe": "average QE (query + top N_QE, l2) for one-descriptor methods; region QE (eq. 8) for O1_R, O2_R",
        "rmac": "R-MAC: Tolias et al.'s grid only; R-MAC+G: with the whole-image MAC as one more region",
        "protocol": "revisited (Medium)" if revisited else "original",
        "full_query": bool(conf.full_query and len(boxed)),
    }
    info["queries_with_box"] = int(len(boxed))
    info["O2_R_whitening"] = (f"the whitening stage's ({paths.whitened.name}, D={stored.dim})" if stored
                              else "fitted here")
    info.update(check)
    write_json(paths.methods, {"methods": methods, "info": info})
    write_map_plots(paths, methods, conf)


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0],
                       outputs=lambda p: [p.methods] + [p.plots / n for n in PLOT_FILES]))
