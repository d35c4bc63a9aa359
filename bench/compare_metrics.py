#!/usr/bin/env python3
"""Compare the metrics of two runs, number by number.

    python bench/compare_metrics.py RUN_A RUN_B [--tol 1e-6] [--glob 'metrics/*.json']

RUN_A and RUN_B are project folders (their ``metrics/*.json`` are compared, file by file) or two
JSON files. Every numeric leaf is compared; a leaf in one run only, or null in one and a number
in the other, counts as a difference. Prints one line per file (the number of values, the largest
absolute difference and where it is), then every difference above ``--tol``; exits 1 if there is
one. Used for the invariants "metrics equal within 1e-6 to the run before the change" and
"metrics agree across CPUs within a tolerance" (docs/reproducibility.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def leaves(tree, prefix: str = "") -> dict:
    """``{"a.b.c": value}`` for every leaf of a JSON tree (list items by index)."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    out = {}
    for key, value in items:
        out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def differences(a: dict, b: dict, tol: float) -> tuple[int, float, str, list[str]]:
    """``(numbers compared, largest difference, its key, lines for the differences above tol)``."""
    la, lb = leaves(a), leaves(b)
    worst, where, lines, n = 0.0, "", [], 0
    for key in sorted(set(la) | set(lb)):
        va, vb = la.get(key, "<missing>"), lb.get(key, "<missing>")
        if is_number(va) and is_number(vb):
            n += 1
            diff = abs(float(va) - float(vb))
            if diff > worst:
                worst, where = diff, key
            if diff > tol:
                lines.append(f"  {key}: {va} vs {vb} (difference {diff:.3g})")
        elif (is_number(va) or is_number(vb)) or va != vb:
            if is_number(va) or is_number(vb) or va is None or vb is None:
                lines.append(f"  {key}: {va!r} vs {vb!r}")
    return n, worst, where, lines


def pairs(a: Path, b: Path, pattern: str) -> list[tuple[str, Path, Path]]:
    if a.is_file() and b.is_file():
        return [(a.name, a, b)]
    names = sorted({p.relative_to(a).as_posix() for p in a.glob(pattern)} |
                   {p.relative_to(b).as_posix() for p in b.glob(pattern)})
    return [(name, a / name, b / name) for name in names]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--tol", type=float, default=1e-6, help="largest difference accepted (default 1e-6)")
    parser.add_argument("--glob", default="metrics/*.json", help="files compared in two folders")
    args = parser.parse_args(argv)
    failed = False
    found = pairs(args.a, args.b, args.glob)
    if not found:
        print(f"no files matching {args.glob} in {args.a} or {args.b}")
        return 1
    for name, fa, fb in found:
        if not fa.is_file() or not fb.is_file():
            print(f"{name}: only in {fa.parent if fa.is_file() else fb.parent}")
            failed = True
            continue
        n, worst, where, lines = differences(json.loads(fa.read_text()), json.loads(fb.read_text()), args.tol)
        print(f"{name}: {n} numbers, largest difference {worst:.3g}" + (f" ({where})" if where else ""))
        for line in lines:
            print(line)
        failed |= bool(lines)
    print("DIFFERENT" if failed else f"equal within {args.tol:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
