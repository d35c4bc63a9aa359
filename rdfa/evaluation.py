"""Retrieval evaluation: average precision, mAP and mP@k as pure array functions.

Two protocols are implemented, each matching its official program:

* **Original** Oxford5k / Paris6k (Philbin et al.), as ``compute_ap.cpp``:
  walk the ranked list, skip junk images, and integrate precision over recall
  with the trapezoid rule, the precision before the first image being 1.
  Positives and junk are *sets* there (``std::set``), so a name listed twice
  in a ground-truth file counts once.
* **Revisited** Oxford / Paris (Radenovic et al., revisitop ``compute_map``):
  the Easy, Medium and Hard setups re-label the ``easy``/``hard``/``junk``
  lists, and the mean precision at ranks ``kappas`` is reported beside mAP.
  Queries without positives in a setup get AP ``None`` and are left out of
  the means.

A ranked list may be truncated: images missing from it are never retrieved,
and still count in the number of positives. No file I/O here.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

#: The ranks at which revisitop reports mean precision.
DEFAULT_KAPPAS = (1, 5, 10)
#: Decimal places of the numbers the stages write (metrics, results, Table 1's cells).
DIGITS = 6

#: The revisited setups: positives, and the extra lists treated as junk.
REVISITED_SETUPS = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}


def _as_indices(values: Iterable[int] | np.ndarray | None) -> np.ndarray:
    """Return ``values`` as a 1-D int64 array (``None`` or empty gives an empty array)."""
    if values is None:
        return np.empty(0, dtype=np.int64)
    return np.asarray(list(values) if not isinstance(values, np.ndarray) else values,
                      dtype=np.int64).reshape(-1)


def _member(values: np.ndarray, members: np.ndarray) -> np.ndarray:
    """``np.isin(values, members)`` for integer indices, by a lookup table where they are small.

    A ranked list is a permutation of a few thousand database indices: a
    table indexed by them answers in one pass, where ``np.isin`` sorts (it
    made a third of the methods stage's scoring time, 21,546 APs on COIL-100).
    Negative or outsized indices go through ``np.isin``; the answer is the same.
    """
    if values.size == 0 or members.size == 0:
        return np.zeros(values.shape, dtype=bool)
    low, high = min(values.min(), members.min()), max(values.max(), members.max())
    if low < 0 or high >= 4 * (values.size + members.size) + 1024:
        return np.isin(values, members)
    table = np.zeros(int(high) + 1, dtype=bool)
    table[members] = True
    return table[values]


def average_precision_oxford(ranked: Sequence[int], positives: Iterable[int],
                             junk: Iterable[int] = ()) -> float:
    """Average precision exactly as the official Oxford ``compute_ap.cpp``.

    Junk images are skipped (they neither help nor hurt); at each kept rank
    ``j`` (1-based), recall = hits / |positives| and precision = hits / j, and
    AP accumulates ``(recall - old_recall) * (old_precision + precision) / 2``
    with ``old_precision`` starting at 1. Positives and junk act as sets
    (duplicates count once); an image in both is junk. Raises ``ValueError``
    when there are no positives (the official program would divide by zero).
    """
    pos_set = np.unique(_as_indices(positives))
    if pos_set.size == 0:
        raise ValueError("average_precision_oxford: the query has no positives")
    ranked = _as_indices(ranked)
    kept = ranked[~_member(ranked, _as_indices(junk))]
    if kept.size == 0:
        return 0.0
    hits = np.cumsum(_member(kept, pos_set))
    recall = hits / pos_set.size
    precision = hits / np.arange(1, kept.size + 1)
    old_recall = np.concatenate(([0.0], recall[:-1]))
    old_precision = np.concatenate(([1.0], precision[:-1]))
    return float(np.sum((recall - old_recall) * (old_precision + precision) / 2.0))


def precision_recall_curve(ranked: Sequence[int], positives: Iterable[int],
                           junk: Iterable[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision after each non-junk rank, for plotting one query.

    The curve starts at (recall 0, precision 1), the convention of the Oxford
    trapezoid AP, so ``np.trapezoid(precision, recall)`` equals
    :func:`average_precision_oxford` for the same inputs. Returns
    ``(recall, precision)``, two float arrays of equal length.
    """
    pos_set = np.unique(_as_indices(positives))
    if pos_set.size == 0:
        raise ValueError("precision_recall_curve: the query has no positives")
    ranked = _as_indices(ranked)
    kept = ranked[~_member(ranked, _as_indices(junk))]
    hits = np.cumsum(_member(kept, pos_set))
    recall = np.concatenate(([0.0], hits / pos_set.size))
    precision = np.concatenate(([1.0], hits / np.arange(1, kept.size + 1)))
    return recall, precision


def _mean_ignoring_none(values: Sequence[float | None]) -> float | None:
    """Mean of the non-``None`` values, or ``None`` when there are none."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def mean_average_precision(ranks: Sequence[Sequence[int]],
                           gnd: Sequence[Mapping]) -> tuple[float | None, list[float | None]]:
    """Original-protocol mAP: positives = ``ok``, junk = ``junk`` of each gnd entry.

    ``ranks[q]`` is the ranked database indices of query ``q``. Returns
    ``(mAP, per-query APs)``; a query without positives gets AP ``None`` and
    is left out of the mean (``mAP`` is ``None`` if no query has positives).
    """
    if len(ranks) != len(gnd):
        raise ValueError(f"mean_average_precision: {len(ranks)} ranked lists for {len(gnd)} queries")
    aps: list[float | None] = []
    for ranked, entry in zip(ranks, gnd):
        ok = _as_indices(entry.get("ok"))
        aps.append(average_precision_oxford(ranked, ok, entry.get("junk")) if ok.size else None)
    return _mean_ignoring_none(aps), aps


def positive_positions(ranked: Sequence[int], positives: Iterable[int],
                       junk: Iterable[int] = ()) -> np.ndarray:
    """0-based ranks of the retrieved positives once junk is removed (revisitop's ``pos``).

    As revisitop: the positions of positives in ``ranked``, each decreased by
    the number of junk images ranked strictly before it.
    """
    ranked = _as_indices(ranked)
    pos = np.flatnonzero(_member(ranked, _as_indices(positives)))
    junk_pos = np.flatnonzero(_member(ranked, _as_indices(junk)))
    return pos - np.searchsorted(junk_pos, pos, side="left")


def average_precision_from_positions(positions: np.ndarray, n_positives: int) -> float:
    """revisitop ``compute_ap``: trapezoid AP from the 0-based ranks of the retrieved positives.

    ``n_positives`` counts all positives, retrieved or not.
    """
    positions = np.asarray(positions, dtype=np.float64)
    j = np.arange(positions.size, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision_0 = np.where(positions == 0, 1.0, j / positions)
    precision_1 = (j + 1.0) / (positions + 1.0)
    return float(np.sum((precision_0 + precision_1) / (2.0 * n_positives)))


def precision_at_kappas(positions: np.ndarray, kappas: Sequence[int]) -> np.ndarray:
    """revisitop precision at each k in ``kappas`` from 0-based positive ranks.

    As the official code, k is capped at the rank of the last retrieved
    positive: ``kq = min(max(pos), k)``, precision = ``#(pos <= kq) / kq``
    (1-based ranks). With no positive retrieved (a truncated list) the
    official code fails; here the precision is 0.
    """
    if len(positions) == 0:
        return np.zeros(len(kappas))
    ranks_1 = np.asarray(positions) + 1
    last = ranks_1.max()
    out = []
    for k in kappas:
        kq = min(last, k)
        out.append(np.count_nonzero(ranks_1 <= kq) / kq)
    return np.asarray(out, dtype=np.float64)


def revisitop_map(ranks: Sequence[Sequence[int]], positives: Sequence[Iterable[int]],
                  junk: Sequence[Iterable[int]], kappas: Sequence[int] = DEFAULT_KAPPAS) -> dict:
    """revisitop ``compute_map`` for given per-query positives and junk.

    Returns ``{"mAP": float|None, "aps": [float|None per query],
    "mP@k": {str(k): float|None}, "p@k": [[...] or None per query]}``;
    queries without positives are ``None`` and left out of the means.
    """
    if not len(ranks) == len(positives) == len(junk):
        raise ValueError(f"revisitop_map: {len(ranks)} ranked lists for "
                         f"{len(positives)} positive lists and {len(junk)} junk lists")
    aps: list[float | None] = []
    precisions: list[list[float] | None] = []
    for ranked, pos_list, junk_list in zip(ranks, positives, junk):
        pos_list = _as_indices(pos_list)
        if pos_list.size == 0:
            aps.append(None)
            precisions.append(None)
            continue
        positions = positive_positions(ranked, pos_list, junk_list)
        aps.append(average_precision_from_positions(positions, pos_list.size))
        precisions.append(precision_at_kappas(positions, kappas).tolist())
    counted = [p for p in precisions if p is not None]
    mean_p = np.mean(counted, axis=0).tolist() if counted else [None] * len(kappas)
    return {"mAP": _mean_ignoring_none(aps), "aps": aps,
            "mP@k": {str(k): v for k, v in zip(kappas, mean_p)}, "p@k": precisions}


def revisited_setup(entry: Mapping, setup: str) -> tuple[np.ndarray, np.ndarray]:
    """Positives and junk of one revisited gnd entry for ``setup`` (easy, medium, hard)."""
    if setup not in REVISITED_SETUPS:
        raise ValueError(f"unknown revisited setup {setup!r}; expected one of {sorted(REVISITED_SETUPS)}")
    pos_keys, junk_keys = REVISITED_SETUPS[setup]
    pos = np.concatenate([_as_indices(entry.get(k)) for k in pos_keys])
    junk = np.concatenate([_as_indices(entry.get(k)) for k in junk_keys])
    return pos, junk


def positives_and_junk(entry: Mapping, revisited: bool) -> tuple[np.ndarray, np.ndarray]:
    """Positives and junk of one gnd entry under the headline protocol (Medium for the revisited datasets)."""
    if revisited:
        return revisited_setup(entry, "medium")
    return _as_indices(entry.get("ok", [])), _as_indices(entry.get("junk", []))


def relevance(index: int, positives: np.ndarray, junk: np.ndarray) -> str:
    """``relevant``, ``junk`` or ``irrelevant``: what a retrieved database image is for the query.

    An image in both lists is junk, as in :func:`average_precision_oxford`.
    """
    if index in junk:
        return "junk"
    return "relevant" if index in positives else "irrelevant"


def revisited_map(ranks: Sequence[Sequence[int]], gnd: Sequence[Mapping],
                  kappas: Sequence[int] = DEFAULT_KAPPAS) -> dict:
    """Revisited-protocol evaluation: ``{"easy": ..., "medium": ..., "hard": ...}``.

    Each value is the dict of :func:`revisitop_map` for that setup (Easy:
    positives easy, junk junk+hard; Medium: positives easy+hard, junk junk;
    Hard: positives hard, junk junk+easy).
    """
    results = {}
    for setup in REVISITED_SETUPS:
        pos, junk = zip(*(revisited_setup(entry, setup) for entry in gnd)) if gnd else ((), ())
        results[setup] = revisitop_map(ranks, list(pos), list(junk), kappas)
    return results


def is_revisited(gnd: Sequence[Mapping]) -> bool:
    """True when the gnd entries use the revisited layout (an ``easy`` list)."""
    return bool(gnd) and all("easy" in entry for entry in gnd)


def headline_score(ranks: Sequence[Sequence[int]], gnd: Sequence[Mapping]) -> float | None:
    """A dataset's headline mAP of ``ranks``: the original protocol, or Medium for the revisited datasets."""
    ranks = list(ranks)
    if is_revisited(gnd):
        return revisited_map(ranks, gnd)["medium"]["mAP"]
    return mean_average_precision(ranks, gnd)[0]


def check_ranks(ranks, n_queries: int, n_images: int) -> list[np.ndarray]:
    """Validate ranked lists: one per query, integer indices in range, no repeats.

    Returns them as int64 arrays; raises ``ValueError`` saying which query
    and index is wrong.
    """
    if not isinstance(ranks, (list, tuple)):
        raise ValueError(f"ranks must be a list of ranked lists, got {type(ranks).__name__}")
    if len(ranks) != n_queries:
        raise ValueError(f"{len(ranks)} ranked lists for {n_queries} queries (need one per query)")
    out = []
    for q, ranked in enumerate(ranks):
        if not isinstance(ranked, (list, tuple)) or not all(
                isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ranked):
            raise ValueError(f"ranks[{q}] must be a list of integer database indices")
        # Range-check the Python integers before converting: JSON integers are
        # unbounded, and 2**70 would overflow int64 with a bare OverflowError.
        bad = next((i for i in ranked if not 0 <= i < n_images), None)
        if bad is not None:
            raise ValueError(f"ranks[{q}] holds index {int(bad)}, outside the {n_images} database images")
        arr = np.asarray(ranked, dtype=np.int64).reshape(-1)
        if np.unique(arr).size != arr.size:
            raise ValueError(f"ranks[{q}] lists a database index more than once")
        out.append(arr)
    return out


def rounded(value, digits: int = DIGITS):
    """Floats (NumPy's too) rounded to ``digits`` places as Python floats, recursively in dicts and lists;
    anything else (``None``, an integer, a string) as it is."""
    if isinstance(value, (float, np.floating)):
        return round(float(value), digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value
