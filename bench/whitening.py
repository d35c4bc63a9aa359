#!/usr/bin/env python3
"""Every method of Table 1 under every whitening mode, and the check of the recommended one.

    python bench/whitening.py DATASET [--workspace W] --setting shrink=1,power=0.25 [--setting ...]
    python bench/whitening.py synth --setting shrink=0.3 --setting shrink=1 --setting shrink=3 --out s.json

Runs the ``methods`` stage of ``DATASET`` (its pipeline outputs must exist in
the workspace: ``dvc repro`` first) once per ``--setting``, in a scratch
project whose inputs are links to the workspace's files (nothing of the
workspace is rewritten), with ``methods.compare_whitening: [shrink, power,
none]`` and the setting's ``whitening.shrink`` / ``whitening.power`` (the
main mode stays the workspace's, ``pca`` by default: the paper's eq. 6). So
each run gives every method at every D of ``methods.D``, without and with
QE, as PCA-whitened, shrunk, powered and unwhitened (``none``: the
l2-normalised descriptors at full dimension).

Prints one markdown table per dataset (rows: method x whitening; columns: D,
"mAP / mAP with QE"; ``--recommend MODE=VALUE`` puts that row in bold) and,
for the recommended setting, the goal of the whitening issue: every method
at every D at least its unwhitened mAP minus ``--margin`` (0.01), without and
with QE (cells that cannot be computed are counted, not scored), and the
proposed method (O2_R) at its best D at least the best baseline at its best
D (MAC, SPoC, CroW, GeM, R-MAC, R-MAC+G; the paper's own variants O1_W,
O1_R and O2_W are not baselines). Writes every cell to ``--out`` (JSON) for
docs/benchmarks/whitening.md's tables.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# This folder holds a bench/stages.py, which would shadow the stage scripts' folder (stages/).
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from rdfa.io.stage import Paths  # noqa: E402
from rdfa.settings import load_settings, parse_settings  # noqa: E402

#: The proposed method, and the baselines it is compared with (O1_*, O2_W are the paper's own variants).
PROPOSED = "O2_R"
BASELINES = ("MAC", "SPoC", "CroW", "GeM", "R-MAC", "R-MAC+G")
#: What a ``--setting`` may set.
SETTING_KEYS = {"shrink": float, "power": float}


def parse_setting(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in SETTING_KEYS or not value:
            raise SystemExit(f"--setting {text!r}: expected shrink=S and/or power=P")
        out[key] = SETTING_KEYS[key](value)
    return out


def scratch_project(workspace: Path, dataset: str, root: Path) -> Paths:
    """A project under ``root`` whose dataset inputs link to the workspace's (methods.json and plots its own)."""
    source = Paths(workspace, dataset)
    paths = Paths(root, dataset)
    paths.data.parent.mkdir(parents=True, exist_ok=True)
    paths.data.symlink_to(source.data.resolve())
    paths.work.mkdir(parents=True)
    for item in source.work.iterdir():
        if item.name not in ("methods.json",):
            (paths.work / item.name).symlink_to(item.resolve())
    return paths


def run_methods(workspace: Path, dataset: str, setting: dict, modes: list[str]) -> dict:
    """``methods.json`` of one run of the methods stage with ``setting`` and ``modes`` compared."""
    from stages import methods

    params = dict(load_settings(workspace / "params.yaml").params)
    params["whitening"] = {**(params.get("whitening") or {}), **setting}
    params["methods"] = {**(params.get("methods") or {}), "compare_whitening": modes}
    settings = parse_settings(params)
    with tempfile.TemporaryDirectory(prefix="whitening-") as tmp:
        paths = scratch_project(workspace, dataset, Path(tmp))
        source = settings.training_dataset(dataset)
        if source != dataset:  # whitening.train_on: the training set's files are read too
            scratch_project(workspace, source, Path(tmp))
        methods.main(dataset, settings, paths)
        return json.loads(paths.methods.read_text())


def label(mode: str, setting: dict) -> str:
    if mode == "shrink":
        return f"shrink s={setting['shrink']:g}"
    if mode == "power":
        return f"power p={setting['power']:g}"
    return mode


def collect(grid: dict, setting: dict, main_mode: str, cells: dict) -> None:
    """``cells[(method, whitening label)][D] = (mAP, mAP_qe)`` from one methods.json grid."""
    for name, by_dim in grid.items():
        if name.endswith("_full"):
            continue
        method, mode = name, main_mode
        for candidate in ("shrink", "power", "none", "pca"):
            if name.endswith("_" + candidate):
                method, mode = name[: -len(candidate) - 1], candidate
        key = (method, label(mode, setting))
        cells[key] = {int(d): (c.get("mAP"), c.get("mAP_qe")) for d, c in by_dim.items()}


def fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def table(cells: dict, dims: list[int], bold: str | None) -> str:
    methods = list(dict.fromkeys(m for m, _ in cells))
    lines = ["| method | whitening | " + " | ".join(f"D={d}" for d in dims) + " |",
             "|---|---|" + "---:|" * len(dims)]
    for method in methods:
        for (m, whitening), by_dim in cells.items():
            if m != method:
                continue
            row = [f"{fmt(by_dim[d][0])} / {fmt(by_dim[d][1])}" if d in by_dim else "" for d in dims]
            if whitening == bold:
                row = [f"**{c}**" for c in row]
                whitening = f"**{whitening}**"
            lines.append(f"| {method} | {whitening} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def goal(cells: dict, dims: list[int], recommended: str, margin: float) -> dict:
    """The issue's goal for ``recommended``: each method >= its unwhitened mAP - margin, and O2_R's best >=
    the best baseline's best (each at its best D, without QE)."""
    failures, scored, missing = [], 0, 0
    best: dict = {}
    for (method, whitening), by_dim in cells.items():
        if whitening != recommended:
            continue
        plain = cells.get((method, "none"), {})
        for d in dims:
            value = by_dim.get(d)
            if value is None or value[0] is None:
                missing += 1
                continue
            for i, what in ((0, "mAP"), (1, "mAP_qe")):
                reference = plain.get(d, (None, None))[i]
                if reference is None or value[i] is None:
                    continue
                scored += 1
                if value[i] < reference - margin:
                    failures.append(f"{method} D={d} {what}: {value[i]:.3f} < unwhitened {reference:.3f} - {margin}")
            best[method] = max(best.get(method, -1.0), value[0])
    baselines = {m: v for m, v in best.items() if m in BASELINES}
    top = max(baselines, key=baselines.get) if baselines else None
    return {"recommended": recommended, "cells_scored": scored, "cells_not_computable": missing,
            "below_unwhitened": failures, "O2_R_best": best.get(PROPOSED),
            "best_baseline": top, "best_baseline_mAP": baselines.get(top),
            "O2_R_at_least_best_baseline": (best.get(PROPOSED) is not None and top is not None
                                            and best[PROPOSED] >= baselines[top])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--workspace", type=Path, default=REPO, help="a checkout with the dataset's outputs")
    parser.add_argument("--setting", action="append", default=[], help="shrink=S,power=P (repeat)")
    parser.add_argument("--recommend", help="the whitening label to check the goal on, e.g. 'shrink s=1'")
    parser.add_argument("--margin", type=float, default=0.01)
    parser.add_argument("--out", type=Path, help="JSON of every cell and the goal check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")
    settings = [parse_setting(s) for s in args.setting] or [{}]
    params = load_settings(args.workspace / "params.yaml").params
    dims = sorted(set(params["methods"]["D"]))
    main_mode = params.get("whitening", {}).get("mode", "pca")
    cells: dict = {}
    start = time.time()
    for i, setting in enumerate(settings):
        full = {"shrink": 1.0, "power": 0.5, **setting}
        modes = [m for m in ("shrink", "power") if m in setting] + (["none"] if i == 0 else [])
        result = run_methods(args.workspace, args.dataset, full, modes)
        collect(result["methods"], full, main_mode, cells)
    report = {"dataset": args.dataset, "D": dims, "seconds": round(time.time() - start, 1),
              "cells": [{"method": m, "whitening": w, "D": d, "mAP": v[0], "mAP_qe": v[1]}
                        for (m, w), by_dim in cells.items() for d, v in by_dim.items()]}
    print(f"\n### {args.dataset}: mAP / mAP with QE\n")
    print(table(cells, dims, args.recommend))
    if args.recommend:
        report["goal"] = goal(cells, dims, args.recommend, args.margin)
        print("\n" + json.dumps(report["goal"], indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
