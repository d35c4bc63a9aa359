"""The evaluate stage's files: its inputs read and checked, its outputs written (``rdfa.metrics`` lays them out).

Every input is checked before anything is written; a bad one raises
:class:`EvaluationInputError` (or ``rdfa.io.gnd.DatasetError`` for the ground
truth) naming the file. Outputs are written atomically.
"""
from __future__ import annotations

from pathlib import Path

from ..evaluation import check_ranks, is_revisited
from ..metrics import (
    CELL_METRICS,
    PROTOCOLS,
    evaluate,
    headline_metrics,
    methods_metrics,
    non_numeric_leaves,
    per_query_records,
    results_record,
)
from .atomic import InputFileError, read_json, write_json
from .gnd import load_gnd


class EvaluationInputError(InputFileError):
    """An input file of the evaluation is missing or malformed; the message names it."""


def load_ranks(path: str | Path, gnd: dict, n_distractors: int = 0) -> list:
    """Read ranks.json and check it against ``gnd`` (one list per query, indices in range: the
    database's images, then ``n_distractors`` distractors)."""
    ranks = read_json(path, "ranks")
    try:
        return check_ranks(ranks, len(gnd["qimlist"]), len(gnd["imlist"]) + n_distractors)
    except ValueError as err:
        raise EvaluationInputError(f"{path}: {err}") from None


def load_info(path: str | Path) -> dict:
    """Read the optional info JSON, which must be an object."""
    info = read_json(path, "info")
    if not isinstance(info, dict):
        raise EvaluationInputError(f"{path}: info file must hold a JSON object, got {type(info).__name__}")
    return info


def load_methods(path: str | Path) -> dict:
    """Read methods.json: ``{"methods": {name: {D: {"mAP": .., "mAP_qe": .., ...}}}, "info": {...}}``.

    Method names, D keys, extra cell fields and info keys are free: they are
    passed on (only ``mAP``/``mAP_qe`` reach the metrics file).
    """
    data = read_json(path, "methods")
    if not isinstance(data, dict) or not isinstance(data.get("methods"), dict):
        raise EvaluationInputError(f"{path}: methods file must hold an object with a 'methods' object")
    for name, cells in data["methods"].items():
        if not isinstance(cells, dict) or not all(
                isinstance(cell, dict) and all(key in cell for key in CELL_METRICS) for cell in cells.values()):
            raise EvaluationInputError(
                f"{path}: methods['{name}'] must map each D to an object with 'mAP' and 'mAP_qe'")
        for dim, cell in cells.items():
            bad = [key for key in CELL_METRICS if non_numeric_leaves(cell[key])]
            if bad:
                raise EvaluationInputError(f"{path}: methods['{name}']['{dim}']['{bad[0]}'] must be a number "
                                           f"or null (got {cell[bad[0]]!r})")
    if not isinstance(data.get("info", {}), dict):
        raise EvaluationInputError(f"{path}: 'info' must be an object")
    return data


def distractor_count(path: str | Path) -> int:
    """The number of distractor images recorded in the distractor shards' ``index.json``."""
    index = read_json(path, "distractor index")
    count = index.get("n_images") if isinstance(index, dict) else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise EvaluationInputError(f"{path}: no distractor count ('n_images'); re-run the distractors stage")
    return count


def choose_protocol(gnd: dict, protocol: str | None, source: str) -> str:
    """The protocol to use: the one asked for, else revisited when entries have 'easy'."""
    revisited = is_revisited(gnd["gnd"])
    if protocol is None:
        return "revisited" if revisited else "original"
    if protocol not in PROTOCOLS:
        raise EvaluationInputError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if protocol == "revisited" and not revisited:
        raise EvaluationInputError(f"{source}: protocol 'revisited' needs 'easy'/'hard' lists in every gnd entry")
    if protocol == "original" and not all("ok" in e for e in gnd["gnd"]):
        raise EvaluationInputError(f"{source}: protocol 'original' needs an 'ok' list in every gnd entry")
    return protocol


def check_numbers_only(tree: dict, path: str | Path) -> None:
    """Refuse to write a DVC metrics file holding anything but numbers and nulls."""
    bad = non_numeric_leaves(tree)
    if bad:
        raise EvaluationInputError(f"{path}: metrics must be numbers or null; not so: {', '.join(bad[:5])} "
                                   "(explanations belong in the --results file)")


def evaluate_files(gnd_path: str | Path, ranks_path: str | Path, protocol: str | None = None,
                   ranks_qe_path: str | Path | None = None, out_path: str | Path | None = None,
                   per_query_out: str | Path | None = None, info_path: str | Path | None = None,
                   methods_path: str | Path | None = None, methods_out: str | Path | None = None,
                   results_path: str | Path | None = None, distractors_path: str | Path | None = None) -> dict:
    """Evaluate; return the metrics, writing files in stage mode (``out_path`` given).

    ``distractors_path``: the distractor shards' ``index.json``; the ranked lists then index the
    database's images followed by that many distractors.

    Without ``out_path`` the full-precision contract result is returned; in stage mode, the
    headline metrics (and ``metrics/<ds>.json`` written, with whichever of the per-query
    records, the results record and Table 1's grid are asked for). A dataset without queries (a
    training set) is accepted in stage mode only: null mAPs, ``n_queries`` 0. Raises
    ``DatasetError`` or ``EvaluationInputError`` naming the bad file before writing anything.
    """
    if out_path is None and any((ranks_qe_path, per_query_out, info_path, methods_path, methods_out, results_path,
                                 distractors_path)):
        raise EvaluationInputError("--ranks-qe, --per-query-out, --info, --methods, --methods-out, --results and "
                                   "--distractors need --out (stage mode)")
    if methods_out is not None and methods_path is None:
        raise EvaluationInputError(f"{methods_out}: --methods-out needs --methods (the methods stage's file)")
    gnd = load_gnd(gnd_path, need_queries=out_path is None)  # stage mode: a training set too
    protocol = choose_protocol(gnd, protocol, str(gnd_path))
    n_distractors = distractor_count(distractors_path) if distractors_path else None
    extra = n_distractors or 0
    result = evaluate(load_ranks(ranks_path, gnd, extra), gnd, protocol)
    if out_path is None:
        return result
    result_qe = evaluate(load_ranks(ranks_qe_path, gnd, extra), gnd, protocol) if ranks_qe_path else None
    info = load_info(info_path) if info_path else None
    methods = load_methods(methods_path) if methods_path else None
    metrics = headline_metrics(gnd, protocol, result, result_qe, n_distractors)
    check_numbers_only(metrics, out_path)
    grid = None
    if methods_out is not None:
        grid = methods_metrics(methods)
        check_numbers_only(grid, methods_out)
    if per_query_out is not None:
        write_json(per_query_out, per_query_records(gnd, protocol, result, result_qe))
    if results_path is not None:
        record = results_record(metrics, protocol, result_qe, info, methods)
        if not gnd["qimlist"]:
            record.update(protocol=None, note="no queries: a training set only (no mAP)")
        write_json(results_path, record)
    if grid is not None:
        write_json(methods_out, grid)
    write_json(out_path, metrics)
    return metrics
