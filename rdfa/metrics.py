"""A run's numbers in the layouts the evaluate stage writes: pure functions of the ranked lists' scores.

* the headline (``metrics/<ds>.json``, a DVC metric, numbers only): ``mAP``,
  ``mAP_qe``, ``n_images``, ``n_queries``, ``n_scored`` (queries with at least
  one positive) and, for the revisited protocol, ``easy``/``medium``/``hard``
  with ``mAP``, ``mAP_qe`` and ``mP@k`` for each k (``mAP`` is Medium);
* Table 1's grid (``metrics/<ds>_methods.json``): every method's cells reduced to
  ``mAP`` and ``mAP_qe``;
* the results record (``results/<ds>.json``): the headline with every explanation;
* one AP record per query, for DVC plots.

Strings (warnings, reasons, names) never go into a metrics file: DVC's ``metrics
show``/``diff`` and ``exp show`` make a column of every field
(:func:`non_numeric_leaves` finds them). Numbers are rounded to
:data:`rdfa.evaluation.DIGITS` places. No file I/O here (``rdfa.io.evaluation``).
"""
from __future__ import annotations

from .evaluation import DEFAULT_KAPPAS, mean_average_precision, revisited_map, rounded

PROTOCOLS = ("original", "revisited")
#: The fields of a method cell that are metrics; the others (reason, warning, ...) explain them.
CELL_METRICS = ("mAP", "mAP_qe")


def evaluate(ranks: list, gnd: dict, protocol: str) -> dict:
    """Full-precision metrics of ``ranks`` under ``protocol``: ``{"mAP", "aps"}`` (original), or
    ``{setup: {"mAP", "mP@k", "aps"}}`` for the revisited setups."""
    if protocol == "original":
        mean_ap, aps = mean_average_precision(ranks, gnd["gnd"])
        return {"mAP": mean_ap, "aps": aps}
    results = revisited_map(ranks, gnd["gnd"], DEFAULT_KAPPAS)
    return {setup: {"mAP": r["mAP"], "mP@k": r["mP@k"], "aps": r["aps"]} for setup, r in results.items()}


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
    """``metrics/<ds>.json``: the headline numbers of the module's text, rounded (with distractors:
    ``n_images`` counts them too, and ``n_distractors`` says how many)."""
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
    """``metrics/<ds>_methods.json``: every method's cells reduced to their numbers (:data:`CELL_METRICS`)."""
    return {"methods": {name: {dim: {key: rounded(cell.get(key)) for key in CELL_METRICS}
                               for dim, cell in cells.items()}
                        for name, cells in methods["methods"].items()}}


def results_record(metrics: dict, protocol: str, result_qe: dict | None, info: dict | None,
                   methods: dict | None) -> dict:
    """``results/<ds>.json``: the headline plus what explains it (the protocol, the revisited QE
    mP@k, ``info``, the method cells with their reasons and warnings, the methods stage's info)."""
    record = dict(metrics, protocol=protocol)
    if protocol == "revisited" and result_qe is not None:
        record["qe"] = rounded(summary_block(result_qe, protocol))
    if info is not None:
        record["info"] = info
    if methods is not None:
        record["methods"] = rounded(methods["methods"])
        record["methods_info"] = methods.get("info", {})
    return record


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


def non_numeric_leaves(tree, prefix: str = "") -> list[str]:
    """Dotted keys of the leaves of ``tree`` that are neither numbers nor null (lists count as leaves)."""
    if isinstance(tree, dict):
        return [bad for key, value in tree.items() for bad in non_numeric_leaves(value, f"{prefix}{key}.")]
    if tree is None or (isinstance(tree, (int, float)) and not isinstance(tree, bool)):
        return []
    return [prefix.rstrip(".")]
