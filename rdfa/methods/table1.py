"""Table 1's grid: every registered method whitened at each D, searched, scored (pure functions).

For one method (:class:`rdfa.methods.Method`) and its pooled rows (:class:`Rows`: the test
database, the queries, the uncropped boxed queries, and the training database):

* whitening (eq. 6, or the mode of each ``methods.compare_whitening``) learned on the training
  rows at the largest learnable D of ``methods.D``; smaller D keep its leading axes
  (:func:`whitenings`), one projection serves them all (``rdfa.projection``); a D that the rows
  cannot span is a null cell with the reason;
* search: dot product and average QE for ``global`` and ``rmac`` methods (R-MAC's whitened
  regions summed, l2), eq. 7 and region QE (eq. 8) for ``regional`` ones;
* scoring with the dataset's protocol (:func:`rdfa.evaluation.headline_score`), cells rounded to
  :data:`rdfa.evaluation.DIGITS` digits.

A ``pipeline`` method (O2_R) reuses the whitening stage's fit and vectors when they are the fit
this stage would make (:class:`StoredWhitening`, read by ``rdfa.io.table1``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ..baselines import global_search, sum_aggregate
from ..evaluation import headline_score, is_revisited, positives_and_junk, precision_recall_curve, rounded
from ..pooling import l2_normalize, l2_rows_into
from ..projection import whitened_variants
from ..search import search_all
from ..whitening import PCA, Whitening, fit_pca, max_components, whitening_note
from . import Image, Method, MethodError, get

log = logging.getLogger("rdfa.methods")

#: Suffix of the uncropped-query variants (Table 1's "OF" column, Figure 1's "full").
FULL = "_full"
#: Digits kept of each mAP.


@dataclass(frozen=True)
class Config:
    """What the grid depends on: ``dims`` (``methods.D``, sorted), ``modes`` (name suffix and
    :class:`Whitening`: the main mode ``""`` first, then ``methods.compare_whitening``), ``n_qe``
    and ``include_query`` (``ranking.*``), ``chunk_rows`` (``runtime.chunk_rows``), ``main_dim``
    (``whitening.D``: where the pipeline method's ranks are checked)."""

    dims: tuple[int, ...]
    modes: tuple[tuple[str, Whitening], ...]
    n_qe: int
    include_query: bool
    chunk_rows: int
    main_dim: int


def config(settings) -> Config:
    """:class:`Config` of a :class:`rdfa.settings.Settings`."""
    main = settings.whitening.setting()
    modes = (("", main),) + tuple((f"_{m}", Whitening(m, main.shrink, main.power))
                                  for m in settings.methods.compare_whitening if m != main.mode)
    return Config(tuple(settings.methods.D), modes, settings.ranking.n_qe, settings.ranking.qe_include_query,
                  settings.runtime.chunk_rows, settings.whitening.D)


@dataclass
class Rows:
    """Stacked rows; image ``i`` owns rows ``offsets[i]:offsets[i + 1]``."""

    rows: np.ndarray
    offsets: np.ndarray

    def select(self, images: np.ndarray) -> "Rows":
        """The rows of ``images`` (indices), in that order."""
        counts = np.diff(self.offsets)[images]
        picked = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in images]
        index = np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)
        return Rows(self.rows[index], np.concatenate(([0], np.cumsum(counts))).astype(np.int64))


def describe(method: Method, image: Image) -> np.ndarray:
    """``method``'s output for one image, checked, each row l2-normalised, float32: ``(rows, dim)``
    (one row for a ``global`` method)."""
    out = np.asarray(method.fn(image))
    want = 1 if method.kind == "global" else 2
    if out.ndim != want or out.size == 0 or not np.issubdtype(out.dtype, np.number):
        shape = "(dim,)" if want == 1 else "(n_regions, dim)"
        raise MethodError(f"method {method.name!r} ({method.source}): {image.key} gave an array of shape "
                          f"{out.shape} and type {out.dtype}; a {method.kind} method returns {shape} numbers")
    rows = np.empty((1, out.size) if want == 1 else out.shape, dtype=np.float32)
    l2_rows_into(np.atleast_2d(out), rows)  # l2_normalize(out).astype(float32), without a float64 copy
    return rows


def stack(parts: list[np.ndarray], method: Method) -> Rows:
    """One method's :func:`describe` outputs of a list of images as :class:`Rows`."""
    dims = {p.shape[1] for p in parts}
    if len(dims) > 1:
        raise MethodError(f"method {method.name!r} ({method.source}): images of different dimensions {sorted(dims)}")
    offsets = np.concatenate(([0], np.cumsum([len(p) for p in parts]))).astype(np.int64)
    return Rows(np.concatenate(parts) if parts else np.zeros((0, 0), np.float32), offsets)


def whitenings(train: np.ndarray, dims: tuple[int, ...], name: str, fitted: PCA | None = None) -> dict:
    """``{D: PCA}`` per D, or ``{D: reason}`` where it cannot be learned.

    One fit at the largest learnable D; smaller D keep its leading axes (the same axes a fit at
    that D finds). ``fitted``: a fit on ``train`` already made at that D or more (the whitening
    stage's, for the pipeline method), used instead of fitting again.
    """
    limit = max_components(*train.shape)
    out: dict = {}
    for dim in dims:
        if dim > limit:
            try:  # raises before fitting anything: only for its message
                fit_pca(train, dim, name=f"methods.D ({name})")
            except ValueError as err:
                out[dim] = str(err)
    valid = [d for d in dims if d not in out]
    if valid:
        pca = fitted if fitted is not None else fit_pca(train, max(valid), name=f"methods.D ({name})")
        for dim in valid:
            out[dim] = PCA(pca.mean, pca.components[:, :dim], pca.eigenvalues[:dim], pca.total_variance)
    return out


@dataclass
class StoredWhitening:
    """The whitening stage's fit (``whitened.h5``) at ``dim``, and the rows it whitened (``db``,
    ``query``, ``full``: every query uncropped), when it is the fit the pipeline method would make."""

    pca: PCA
    dim: int
    vectors: dict[str, Rows]


def spectrum_record(pca: PCA) -> dict:
    """What a cell says of the fit behind it: ``variance_kept`` (the share of the training variance
    on the D kept axes) and ``last_axis_variance`` (the D-th axis's variance over the mean variance
    per dimension: small values are the poorly estimated axes whitening amplifies)."""
    total = pca.total_variance
    if not np.isfinite(total) or total <= 0:
        return {}
    mean = total / len(pca.mean)
    return {"variance_kept": round(float(pca.eigenvalues.sum() / total), 4),
            "last_axis_variance": round(float(pca.eigenvalues[-1] / mean), 4)}


def whitened_rows(kind: str, rows: Rows, pcas: dict, conf: Config,
                  stored: tuple[int, np.ndarray] | None = None) -> dict[str, dict[int, np.ndarray]]:
    """``rows`` as they are searched, per mode suffix and learnable D: whitened rows, or for ``rmac``
    one vector per image (its whitened rows summed, l2).

    ``stored``: ``(D, rows already whitened at D)`` in the main mode (the whitening stage's);
    smaller D are their leading columns, l2-normalised again. Mode ``none``: the rows as they
    are, the same at every D.
    """
    def searched(vectors: np.ndarray) -> np.ndarray:
        return sum_aggregate(vectors, rows.offsets) if kind == "rmac" else vectors

    valid = [d for d in pcas if not isinstance(pcas[d], str)]
    out: dict[str, dict[int, np.ndarray]] = {}
    projected = []
    for suffix, whitening in conf.modes:
        if whitening.mode == "none":
            plain = searched(l2_normalize(np.asarray(rows.rows, dtype=np.float64)).astype(np.float32))
            out[suffix] = {dim: plain for dim in conf.dims}
            continue
        out[suffix] = {}
        if stored is not None and not suffix:
            out[suffix] = {dim: stored[1] if dim == stored[0] else l2_normalize(stored[1][:, :dim]).astype(np.float32)
                           for dim in valid if dim <= stored[0]}
        projected.append((suffix, whitening, [d for d in valid if d not in out[suffix]]))
    if any(dims for _, _, dims in projected):
        top = max(d for _, _, dims in projected for d in dims)
        computed = whitened_variants(rows.rows, pcas[top], [(w, dims) for _, w, dims in projected], conf.chunk_rows)
        for (suffix, _, _), vectors in zip(projected, computed):
            out[suffix].update({dim: searched(w) for dim, w in vectors.items()})
    return out


@dataclass(frozen=True)
class MethodFit:
    """One method's main-mode whitening as the methods stage learned it: ``kind``, ``plain`` (mode
    ``none``), ``pca`` at the largest learnable D (None when none is, or plain) and ``reasons``
    ``{D: why it cannot be learned}``. :meth:`pcas` cuts it per D as :func:`whitenings` does."""

    kind: str
    plain: bool
    pca: PCA | None
    reasons: dict

    def float32(self) -> "MethodFit":
        """The same fit with its mean and axes in float32: the type :func:`rdfa.projection.whitened_variants`
        projects :func:`describe`'s float32 rows in, so that it need not cast them for every image."""
        p = self.pca
        if p is None:
            return self
        return MethodFit(self.kind, self.plain, PCA(p.mean.astype(np.float32), p.components.astype(np.float32),
                                                    p.eigenvalues, p.total_variance), self.reasons)

    def pcas(self, dims) -> dict:
        if self.plain:
            return {d: "" for d in dims}
        p = self.pca
        return {d: self.reasons[d] if d in self.reasons else
                PCA(p.mean, p.components[:, :d], p.eigenvalues[:d], p.total_variance) for d in dims}


@dataclass(frozen=True)
class DistractorMethods:
    """What the distractor pass computes for each image besides O2_R's rows: every method of ``fits``
    (``{name: MethodFit}``) whitened as the methods stage whitens a database image (:func:`image_vectors`);
    ``settings`` (:class:`rdfa.methods.MethodSettings`), ``conf`` (:class:`Config`), ``basis`` (the
    K -> K' basis, for a method that needs it)."""

    fits: dict
    settings: object
    conf: Config
    basis: np.ndarray | None = None

    def __post_init__(self):
        object.__setattr__(self, "fits", {name: fit.float32() for name, fit in self.fits.items()})

    def vectors(self, key: str, fmap: np.ndarray, masks: np.ndarray, pooled: np.ndarray) -> dict:
        """``{name: {storage key: float32 vectors}}`` of one image (``pooled``: its eq. 5 rows, for the
        methods of the stored descriptors)."""
        image = Image(key, fmap, masks, self.settings, basis=self.basis, descriptors=pooled)
        out = {}
        for name, fit in self.fits.items():
            method = get(name)
            if method.kind != fit.kind:
                raise MethodError(f"method {name!r} is {method.kind} now, {fit.kind} when the methods stage "
                                  "whitened it: re-run the methods stage (`dvc repro`)")
            out[name] = image_vectors(method, image, fit.pcas(self.conf.dims), self.conf)
        return out


def rank(kind: str, db: Rows, db_w: np.ndarray, queries: Rows, q_w: np.ndarray,
         conf: Config) -> tuple[np.ndarray, np.ndarray]:
    """Ranks without and with QE of every query for one method at one D (``*_w``: :func:`whitened_rows`)."""
    if kind == "regional":
        ranks, _, _, ranks_qe, _, _ = search_all(q_w, queries.offsets, db_w, db.offsets, conf.n_qe,
                                                 conf.include_query, conf.chunk_rows)
        return ranks, ranks_qe
    return global_search(q_w, db_w, conf.n_qe)




@dataclass
class MethodResult:
    """One method's cells (``<method><mode>`` and ``<method><mode>_full``: ``{str(D): cell}``), its
    number of training rows, for the pipeline method its ``(ranks, ranks_qe)`` at ``main_dim``, and
    for every other method what the distractor pass needs (:class:`Export`)."""

    cells: dict
    n_train: int
    main_ranks: tuple | None
    export: "Export | None" = None


@dataclass
class Export:
    """One method in the main whitening mode, as the methods stage searched it: ``pcas`` (``{D: PCA}``,
    or ``{D: reason}`` where it cannot be learned; every D ``""`` in mode ``none``), ``plain`` (mode
    ``none``: the l2 rows, the same at every D) and ``vectors`` ``{group: (offsets, {D: vectors})}``
    of the groups ``db``, ``query`` and (the boxed queries uncropped) ``full``."""

    kind: str
    pcas: dict
    plain: bool
    vectors: dict


def storage_keys(kind: str, dims, plain: bool) -> dict[int, str]:
    """Which stored array serves each learnable D of a method (the distractor shards and
    ``method_vectors.h5`` keep only those): ``plain`` (mode ``none``, the same rows at every D), each
    D's own for ``rmac`` (its whitened regions are summed after their l2, which a smaller D
    changes), else the largest D's, whose leading columns, l2-normalised again, are each smaller D's
    (the scale of an axis does not depend on D: :mod:`rdfa.projection`)."""
    dims = sorted(dims)
    if plain:
        return {d: "plain" for d in dims}
    if kind == "rmac":
        return {d: f"D{d}" for d in dims}
    return {d: f"D{dims[-1]}" for d in dims} if dims else {}


def stored_vectors(kind: str, vectors: dict[int, np.ndarray], plain: bool) -> dict[str, np.ndarray]:
    """The arrays :func:`storage_keys` names, from ``{D: vectors}`` (:func:`whitened_rows` of one mode)."""
    return {key: vectors[d] for d, key in storage_keys(kind, vectors, plain).items()
            if key == "plain" or key == f"D{d}"}


def image_vectors(method: Method, image: Image, export_pcas: dict, conf: Config) -> dict[str, np.ndarray]:
    """One image's vectors of ``method`` whitened as the methods stage whitens a database image in the
    main mode (``conf.modes[0]``; ``export_pcas`` the stage's fits, :class:`Export`), float32, by
    :func:`stored_vectors`' keys: :func:`describe`, then :func:`whitened_rows`."""
    rows = describe(method, image)
    main = Config(conf.dims, conf.modes[:1], conf.n_qe, conf.include_query, conf.chunk_rows, conf.main_dim)
    plain = conf.modes[0][1].mode == "none"
    vectors = whitened_rows(method.kind, Rows(rows, np.array([0, len(rows)], dtype=np.int64)), export_pcas, main)[""]
    if not plain:
        vectors = {d: v for d, v in vectors.items() if not isinstance(export_pcas.get(d), str)}
    return stored_vectors(method.kind, vectors, plain)


def boxed_queries(gnd: dict) -> np.ndarray:
    """Indices of the queries that have a box: the only ones whose uncropped variant differs."""
    return np.array([i for i, entry in enumerate(gnd["gnd"]) if entry.get("bbx") is not None], dtype=np.int64)


def compare(method: Method, test: dict[str, Rows], train: Rows, gnd: dict, conf: Config,
            stored: StoredWhitening | None = None) -> MethodResult:
    """Every mode x D x {cropped, full} cell of one method.

    ``test``: its rows of ``db``, ``query`` and, when there, ``full`` (the boxed queries only,
    :func:`boxed_queries`; the others rank as in the cropped cell). ``train``: its rows of the
    training database. ``stored``: the whitening stage's fit, used for a ``pipeline`` method.
    """
    start = time.time()
    boxed = boxed_queries(gnd)
    reuse = stored if method.pipeline else None
    needs_fit = any(w.mode != "none" for _, w in conf.modes)
    pcas = (whitenings(train.rows, conf.dims, method.name, fitted=reuse.pca if reuse else None) if needs_fit
            else {dim: "" for dim in conf.dims})
    db = test["db"]
    db_w = whitened_rows(method.kind, db, pcas, conf, (reuse.dim, reuse.vectors["db"].rows) if reuse else None)
    query_sets = {"": test["query"]}
    if "full" in test:
        query_sets[FULL] = test["full"]
    q_w = {}
    for suffix, queries in query_sets.items():
        kept = None
        if reuse:  # whitened.h5's full group has every query: keep the boxed ones, as test["full"]
            kept = (reuse.dim, reuse.vectors["full"].select(boxed).rows if suffix else reuse.vectors["query"].rows)
        q_w[suffix] = whitened_rows(method.kind, queries, pcas, conf, kept)
    results: dict = {}
    main_ranks = None
    for mode_suffix, whitening in conf.modes:
        searched: dict = {}  # mode none: one search serves every D
        for dim in conf.dims:
            ranks_by_set = {}
            for suffix, queries in query_sets.items():
                cells = results.setdefault(method.name + mode_suffix + suffix, {})
                if whitening.mode != "none" and isinstance(pcas[dim], str):
                    cells[str(dim)] = {"mAP": None, "mAP_qe": None, "reason": pcas[dim]}
                    continue
                db_vectors, q_vectors = db_w[mode_suffix][dim], q_w[suffix][mode_suffix][dim]
                key = (suffix, id(db_vectors), id(q_vectors))
                if key not in searched:
                    if suffix:  # the queries without a box rank as their cropped selves: search the others
                        ranks, ranks_qe = (r.copy() for r in ranks_by_set[""])
                        ranks[boxed], ranks_qe[boxed] = rank(method.kind, db, db_vectors, queries, q_vectors, conf)
                        searched[key] = ranks, ranks_qe
                    else:
                        searched[key] = rank(method.kind, db, db_vectors, queries, q_vectors, conf)
                ranks, ranks_qe = ranks_by_set[suffix] = searched[key]
                cell = cells[str(dim)] = {"mAP": rounded(headline_score(ranks, gnd["gnd"])),
                                          "mAP_qe": rounded(headline_score(ranks_qe, gnd["gnd"]))}
                if whitening.mode == "none":
                    cell["note"] = (f"unwhitened: the l2-normalised {db_vectors.shape[1]}-dimensional "
                                    "descriptors, the same at every D")
                else:
                    cell.update(spectrum_record(pcas[dim]))
                    note = whitening_note(len(train.rows), dim, whitening)
                    if note:
                        cell["warning"] = note
                if method.pipeline and not suffix and not mode_suffix and dim == conf.main_dim:
                    main_ranks = ranks, ranks_qe
    export = None
    if not method.pipeline:  # (the pipeline method's distractor rows are the whitening stage's)
        main_suffix, main_mode = conf.modes[0]
        plain = main_mode.mode == "none"
        export = Export(method.kind, {d: "" for d in conf.dims} if plain else pcas, plain, {
            group: (np.arange(len(rows.offsets), dtype=np.int64) if method.kind == "rmac" else rows.offsets,
                    vectors[main_suffix]) for group, rows, vectors in
            [("db", db, db_w)] + [("full" if s else "query", query_sets[s], q_w[s]) for s in query_sets]})
    log.info("%-5s (%s, whitening learned on %d vectors%s): %s  [%.1f s]", method.name, method.kind,
             len(train.rows), ", the whitening stage's fit" if reuse else "",
             "; ".join(f"{mode_suffix[1:] or conf.modes[0][1].label}: " + ", ".join(
                 f"D={d}: {c['mAP'] if c['mAP'] is not None else 'n/a'}"
                 for d, c in results[method.name + mode_suffix].items()) for mode_suffix, _ in conf.modes),
             time.time() - start)
    return MethodResult(results, len(train.rows), main_ranks, export)


def pr_records(gnd: dict, ranks: np.ndarray, ranks_qe: np.ndarray) -> dict[str, list]:
    """Per-query ``(recall, precision)`` curves of two rankings (``precision``, ``precision_qe``),
    the queries without positives left out (:func:`rdfa.io.plots.mean_pr_records` averages them)."""
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
    return curves


def figure_picks(n_queries: int, count: int) -> list[int]:
    """Figure 2's queries: ``count`` evenly spaced ones."""
    return sorted(set(np.linspace(0, n_queries - 1, min(count, n_queries)).round().astype(int).tolist()))
