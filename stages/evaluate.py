"""Evaluate ranked lists against a dataset's ground truth (mAP, mP@k).

Contract mode prints the metrics as JSON on stdout::

    python stages/evaluate.py --gnd data/<ds>/gnd.json --ranks ranks.json [--protocol original|revisited]

Stage mode (``--out``) writes, atomically::

    python stages/evaluate.py --gnd data/<ds>/gnd.json --ranks features/<ds>/ranks.json \
        --ranks-qe features/<ds>/ranks_qe.json --out metrics/<ds>.json \
        [--methods features/<ds>/methods.json --methods-out metrics/<ds>_methods.json] \
        [--results results/<ds>.json] [--per-query-out features/<ds>/per_query_ap.json] \
        [--info features/<ds>/search_info.json]

* ``--out``: the headline metrics, numbers only (DVC metrics): ``mAP``,
  ``mAP_qe``, ``n_images``, ``n_queries``, ``n_scored`` (queries with at least
  one positive), and for the revisited protocol ``easy``/``medium``/``hard``
  with ``mAP``, ``mAP_qe`` and ``mP@k`` for each k (``mAP`` is Medium);
* ``--methods-out``: the method comparison of ``stages/methods.py`` (Table 1 /
  Figure 1) as numbers only, ``{"methods": {name: {D: {"mAP", "mAP_qe"}}}}``,
  null where a cell cannot be computed;
* ``--results``: everything, the explanations included: the headline, the
  protocol, the revisited QE mP@k, ``--info`` as ``info``, the method cells
  with their reasons and warnings as ``methods`` and the methods stage's
  ``info`` as ``methods_info``. Not a DVC metric: the table stage reads it;
* ``--per-query-out``: one AP record per query, for DVC plots;
* ``--distractors``: the distractor shards' ``index.json`` (stage
  ``evaluate_distractors``): the ranked lists index the database's images
  followed by that many distractors, ``n_images`` counts them and
  ``n_distractors`` says how many.

A dataset without queries (a training set) is accepted in stage mode only:
its ranked lists are empty, ``mAP`` and ``mAP_qe`` null with ``n_queries``
0 (no number made up), the per-query records empty, and the results file
says so (``note``, ``protocol`` null).

Strings (warnings, reasons, names) never go into a metrics file: DVC's
``metrics show``/``diff`` and ``exp show`` make a column of every field.

All inputs are checked before anything is written; bad input exits non-zero
with a message naming the file.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rdfa.evaluation import DEFAULT_KAPPAS, check_ranks, is_revisited, mean_average_precision, revisited_map
from rdfa.io.atomic import remove_stale_temporaries, write_json
from rdfa.io.gnd import NO_QUERIES, DatasetError, load_gnd

PROTOCOLS = ("original", "revisited")
#: Decimal places kept in the files written by stage mode.
DIGITS = 6
#: The fields of a method cell that are metrics; the others (reason, warning, ...) explain them.
CELL_METRICS = ("mAP", "mAP_qe")


class EvaluationInputError(ValueError):
    """An input file of the evaluation is missing or malformed; the message names it."""


def read_json(path: str | Path, what: str):
    """Parse a JSON file; ``EvaluationInputError`` naming it if missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(f"{path}: {what} file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EvaluationInputError(f"{path}: {what} file is not valid JSON ({err})") from None


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


def evaluate(ranks: list, gnd: dict, protocol: str) -> dict:
    """Full-precision metrics in the contract layout for ``protocol``."""
    if protocol == "original":
        mean_ap, aps = mean_average_precision(ranks, gnd["gnd"])
        return {"mAP": mean_ap, "aps": aps}
    results = revisited_map(ranks, gnd["gnd"], DEFAULT_KAPPAS)
    return {setup: {"mAP": r["mAP"], "mP@k": r["mP@k"], "aps": r["aps"]} for setup, r in results.items()}


def rounded(value, digits: int = DIGITS):
    """Round floats (recursively in dicts/lists) to ``digits`` places; ``None`` stays."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def headline_map(result: dict, protocol: str):
    """The single mAP reported for a result: Medium for revisited."""
    return result["medium"]["mAP"] if protocol == "revisited" else result["mAP"]


def summary_block(result: dict, protocol: str) -> dict:
    """Metrics without per-query APs: revisited setups keep mAP and mP@k."""
    if protocol == "original":
        return {"mAP": result["mAP"]}
    return {setup: {"mAP": r["mAP"], "mP@k": r["mP@k"]} for setup, r in result.items()}


def per_query_aps(result: dict, protocol: str, suffix: str = "") -> list[dict]:
    """Per-query AP fields (``ap`` = Medium for revisited, plus ``ap_easy``/``ap_hard``)."""
    if protocol == "original":
        return [{f"ap{suffix}": ap} for ap in result["aps"]]
    return [{f"ap{suffix}": m, f"ap{suffix}_easy": e, f"ap{suffix}_hard": h}
            for e, m, h in zip(result["easy"]["aps"], result["medium"]["aps"], result["hard"]["aps"])]


def n_scored(result: dict, protocol: str) -> int:
    """Queries that count in the headline mAP: those with at least one positive (Medium for revisited)."""
    aps = result["medium"]["aps"] if protocol == "revisited" else result["aps"]
    return sum(ap is not None for ap in aps)


def setup_metrics(result: dict, result_qe: dict | None) -> dict:
    """One revisited setup's numbers: ``mAP``, ``mAP_qe``, ``mP@<k>`` (flat: short DVC column names)."""
    out = {"mAP": result["mAP"]}
    if result_qe is not None:
        out["mAP_qe"] = result_qe["mAP"]
    out.update({f"mP@{k}": value for k, value in result["mP@k"].items()})
    return out


def headline_metrics(gnd: dict, protocol: str, result: dict, result_qe: dict | None,
                     n_distractors: int | None = None) -> dict:
    """``metrics/<ds>.json``: the headline numbers of the module docstring, rounded
    (with distractors: ``n_images`` counts them too, and ``n_distractors`` says how many)."""
    metrics = {"mAP": headline_map(result, protocol)}
    if result_qe is not None:
        metrics["mAP_qe"] = headline_map(result_qe, protocol)
    metrics.update({"n_images": len(gnd["imlist"]) + (n_distractors or 0), "n_queries": len(gnd["qimlist"]),
                    "n_scored": n_scored(result, protocol)})
    if n_distractors is not None:
        metrics["n_distractors"] = n_distractors
    if protocol == "revisited":
        for setup, setup_result in result.items():
            metrics[setup] = setup_metrics(setup_result, result_qe[setup] if result_qe is not None else None)
    return rounded(metrics)


def methods_metrics(methods: dict) -> dict:
    """``metrics/<ds>_methods.json``: every method's cells reduced to their numbers (see :data:`CELL_METRICS`)."""
    return {"methods": {name: {dim: {key: rounded(cell.get(key)) for key in CELL_METRICS}
                               for dim, cell in cells.items()}
                        for name, cells in methods["methods"].items()}}


def results_record(metrics: dict, protocol: str, result_qe: dict | None, info: dict | None,
                   methods: dict | None) -> dict:
    """``results/<ds>.json``: the headline plus every explanation (see the module docstring)."""
    record = dict(metrics, protocol=protocol)
    if protocol == "revisited" and result_qe is not None:
        record["qe"] = rounded(summary_block(result_qe, protocol))
    if info is not None:
        record["info"] = info
    if methods is not None:
        record["methods"] = rounded(methods["methods"])
        record["methods_info"] = methods.get("info", {})
    return record


def non_numeric_leaves(tree, prefix: str = "") -> list[str]:
    """Dotted keys of the leaves of ``tree`` that are neither numbers nor null (lists count as leaves)."""
    if isinstance(tree, dict):
        return [bad for key, value in tree.items() for bad in non_numeric_leaves(value, f"{prefix}{key}.")]
    if tree is None or (isinstance(tree, (int, float)) and not isinstance(tree, bool)):
        return []
    return [prefix.rstrip(".")]


def check_numbers_only(tree: dict, path: str | Path) -> None:
    """Refuse to write a DVC metrics file holding anything but numbers and nulls."""
    bad = non_numeric_leaves(tree)
    if bad:
        raise EvaluationInputError(f"{path}: metrics must be numbers or null; not so: {', '.join(bad[:5])} "
                                   "(explanations belong in the --results file)")


def per_query_records(gnd: dict, protocol: str, result: dict, result_qe: dict | None) -> list[dict]:
    """One record per query for DVC plots: ``{"query": name, "ap": .., "ap_qe": ..}``."""
    columns = [per_query_aps(result, protocol)]
    if result_qe is not None:
        columns.append(per_query_aps(result_qe, protocol, "_qe"))
    records = []
    for q, name in enumerate(gnd["qimlist"]):
        record = {"query": name}
        for column in columns:
            record.update(column[q])
        records.append(record)
    return rounded(records)


def main(gnd_path: str | Path, ranks_path: str | Path, protocol: str | None = None,
         ranks_qe_path: str | Path | None = None, out_path: str | Path | None = None,
         per_query_out: str | Path | None = None, info_path: str | Path | None = None,
         methods_path: str | Path | None = None, methods_out: str | Path | None = None,
         results_path: str | Path | None = None, distractors_path: str | Path | None = None) -> dict:
    """Evaluate; return the metrics, writing files in stage mode (``out_path`` given).

    ``distractors_path``: the distractor shards' ``index.json``; the ranked lists then index the
    database's images followed by that many distractors.

    Without ``out_path`` the full-precision contract result is returned
    (and printed by the command line); in stage mode, the headline metrics.
    Raises ``DatasetError`` or ``EvaluationInputError`` naming the bad file
    before writing anything.
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


def distractor_count(path: str | Path) -> int:
    """The number of distractor images recorded in the distractor shards' ``index.json``."""
    index = read_json(path, "distractor index")
    count = index.get("n_images") if isinstance(index, dict) else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise EvaluationInputError(f"{path}: no distractor count ('n_images'); re-run the distractors stage")
    return count


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gnd", required=True, help="canonical gnd.json")
    parser.add_argument("--ranks", required=True, help="ranks.json: per query, ranked database indices")
    parser.add_argument("--protocol", choices=PROTOCOLS,
                        help="default: revisited when gnd entries have 'easy', else original")
    parser.add_argument("--ranks-qe", help="ranks after query expansion (stage mode)")
    parser.add_argument("--out", help="headline metrics JSON to write, numbers only (turns on stage mode)")
    parser.add_argument("--per-query-out", help="per-query AP records for DVC plots (stage mode)")
    parser.add_argument("--info", help="JSON object stored in the --results file under 'info' (stage mode)")
    parser.add_argument("--methods", help="methods.json of stages/methods.py (stage mode)")
    parser.add_argument("--methods-out", help="its numbers as a metrics JSON: {methods: {name: {D: {mAP, mAP_qe}}}}")
    parser.add_argument("--distractors", help="the distractor shards' index.json: the ranked lists index the "
                        "database's images, then its distractors (stage mode)")
    parser.add_argument("--results", help="results JSON: the headline metrics with every explanation (protocol, "
                        "info, method cells with their reasons and warnings); what the table stage reads")
    return parser.parse_args(argv)


def cli(argv: list[str] | None = None) -> int:
    """Run from the command line; return the exit status (2 on bad input)."""
    args = parse_args(argv)
    if args.out is not None:  # stage mode: what an interrupted run left beside the outputs
        outputs = [args.out, args.per_query_out, args.methods_out, args.results]
        for path in remove_stale_temporaries([p for p in outputs if p]):
            print(f"evaluate: removed {path}, left by an interrupted run", file=sys.stderr)
    try:
        result = main(args.gnd, args.ranks, args.protocol, args.ranks_qe, args.out,
                      args.per_query_out, args.info, args.methods, args.methods_out, args.results,
                      args.distractors)
    except (DatasetError, EvaluationInputError) as err:
        print(f"evaluate: error: {err}", file=sys.stderr)
        return 2
    if args.out is None:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    elif result["n_queries"] == 0:
        gnd = Path(args.gnd)
        print(f"evaluate: {(gnd if gnd.is_dir() else gnd.parent).name}: {NO_QUERIES}: no mAP, "
              f"{args.out} says n_queries 0", file=sys.stderr)
    else:
        print(f"evaluate: {args.out}: mAP {result['mAP']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
