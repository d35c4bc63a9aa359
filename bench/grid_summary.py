#!/usr/bin/env python3
"""O2_R against the best baseline, per run and dataset, from Table 1's grids (``metrics/*_methods.json``).

    python bench/grid_summary.py lite0=runs/lite0/metrics lite1=runs/lite1/metrics [--full] [--qe]

Each argument is ``LABEL=FOLDER`` (or a folder, its name the label) holding the
``<dataset>_methods.json`` files a run wrote (``<dataset>+<set>_methods.json`` for a distractor
set). Per run and dataset it prints one markdown row: O2_R's mAP at each D of the grid, its best,
the best of Table 1's baselines (MAC, SPoC, CroW, R-MAC, R-MAC+G, GeM) and the best of every other
method (the paper's variants and a user's too), each at its own best D (the comparison the paper's
claim is about: each method at its best D). Cropped queries by default; ``--full``: the uncropped ones
(``<method>_full``); ``--qe``: the figures with query expansion. A cell the grid could not compute
(null, with its reason in the file) is ``n/a``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROPOSED = "O2_R"
#: Table 1's baselines (the other rows are the paper's variants of its own method).
BASELINES = ("MAC", "SPoC", "CroW", "R-MAC", "R-MAC+G", "GeM")


def best(cells: dict, key: str) -> tuple[float | None, str | None]:
    """The largest ``key`` of a method's ``{D: cell}`` and its D (None when every cell is null)."""
    found = [(cell.get(key), d) for d, cell in cells.items() if isinstance(cell, dict) and cell.get(key) is not None]
    return max(found, key=lambda t: (t[0], -int(t[1]))) if found else (None, None)


def summary(grid: dict, full: bool, qe: bool) -> dict:
    """O2_R's cells and best, and the best other method, of one ``methods`` grid."""
    key = "mAP_qe" if qe else "mAP"
    suffix = "_full" if full else ""
    mine = grid.get(PROPOSED + suffix, {})
    others = {name[:len(name) - len(suffix)] if suffix else name: cells for name, cells in grid.items()
              if name != PROPOSED + suffix and (name.endswith("_full") == full)}
    rivals = [(best(cells, key), name) for name, cells in others.items()]
    rivals = [((value, d), name) for (value, d), name in rivals if value is not None]

    def top(among):
        return max(among, key=lambda t: t[0][0]) if among else ((None, None), None)

    return {"dims": sorted(mine, key=int), "cells": {d: mine[d].get(key) for d in mine},
            "best": best(mine, key), "rival": top(rivals),
            "baseline": top([r for r in rivals if r[1] in BASELINES])}


def fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=FOLDER or FOLDER")
    ap.add_argument("--full", action="store_true", help="uncropped queries (<method>_full)")
    ap.add_argument("--qe", action="store_true", help="with query expansion")
    args = ap.parse_args(argv)
    rows = []
    for run in args.runs:
        label, _, folder = run.rpartition("=") if "=" in run else ("", "", run)
        folder = Path(folder)
        files = sorted(folder.glob("*_methods.json"))
        if not files:
            print(f"{folder}: no *_methods.json", file=sys.stderr)
            return 2
        for path in files:
            grid = json.loads(path.read_text())["methods"]
            rows.append((label or folder.name, path.name[:-len("_methods.json")],
                         summary(grid, args.full, args.qe)))
    dims = sorted({d for _, _, s in rows for d in s["dims"]}, key=int)
    what = ("uncropped" if args.full else "cropped") + " queries, " + ("with" if args.qe else "without") + " QE"
    print(f"mAP, {what}")
    print("| run | dataset | " + " | ".join(f"O2_R D={d}" for d in dims)
          + " | O2_R best | best baseline (D) | best of all others (D) |")
    print("|---|---|" + "---:|" * (len(dims) + 3))
    for label, dataset, s in rows:
        value = s["best"][0]
        cells = " | ".join(fmt(s["cells"].get(dim)) for dim in dims)
        others = ["n/a" if name is None else f"{fmt(rival[0])} ({name}, {rival[1]})"
                  for rival, name in (s["baseline"], s["rival"])]
        print(f"| {label} | {dataset} | {cells} | {fmt(value)} | {' | '.join(others)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
