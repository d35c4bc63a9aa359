#!/usr/bin/env python3
"""Per-image cost of every stage as the database grows: the same small set at 1x, 4x and 16x.

    python bench/scaling.py [--source data/synth] [--sizes 1,4,16] [--queries 8] [--base N] [--keep]
    python bench/scaling.py --source ../shared/datasets/coil100/images --base 200
    python bench/scaling.py --base 24 --queries 2 --sizes 1,2 --set whitening.D=64 --set 'methods.D=[32,64]'

Builds a ``custom`` dataset (the canonical layout: ``images/`` + ``gnd.json``,
see docs/your-own-images.md) per size from a small image set: the
database is the set's first ``--base`` database images repeated k times under
distinct names (hard links where the file system allows, else copies), the
queries are the same ``--queries`` queries at every size, each positive in
every copy. The source is a dataset folder in the canonical layout (default
``data/synth`` of this checkout, there after ``dvc repro``), or any folder of
images (then each of the first ``--queries`` images is its own query, without
a box, relevant to itself in every copy). Each size runs ``bench/stages.py
custom`` in a scratch workspace of its own: a copy of this checkout's files
(``git ls-files``, with uncommitted changes and untracked files that are not
ignored; no outputs) whose ``params.yaml`` points ``sources.custom`` at the
built folder, with ``datasets: [custom]`` and ``features.size.custom`` taken
from the source's dataset (``--size-policy``). Every other parameter is this
checkout's, unless ``--set KEY=VALUE`` changes it (in the scratch copies only):
the set must give more database regions than ``pca.k_prime`` and
``whitening.D`` (checked before anything runs).

Prints the milliseconds per image (database images + queries) of each stage
at each size and the ratio of the largest size to the smallest (flat = 1:
cost linear in the number of images), writes the records ``{stage, copies,
images, seconds, ms_per_image, peak_rss_mb}`` to ``--out`` (default
``bench/results/scaling.json``; ``dvc plots show bench/results/scaling.json -x
images -y ms_per_image``) and each size's own ``bench/stages.py`` output
beside it (``scaling_<k>x.json``). Scratch workspaces go to a temporary folder
(``--scratch``), removed at the end unless ``--keep``. Takes about k times a
fresh run of the set, summed over the sizes: run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Stage outputs: not copied into a scratch workspace (the run makes them).
OUTPUT_DIRS = ("data", "features", "results", "metrics", "plots", "reports", "bench/results")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def source_set(source: Path, base: int | None, n_queries: int) -> tuple[Path, dict]:
    """``(images folder, gnd)`` of the set to replicate: the first ``base`` database images and ``n_queries``
    queries whose positives lie among them (ground-truth indices renumbered)."""
    if (source / "gnd.json").is_file():
        gnd = json.loads((source / "gnd.json").read_text())
        images = source / "images"
        imlist = gnd["imlist"][:base] if base else gnd["imlist"]
        queries, entries = [], []
        for name, entry in zip(gnd["qimlist"], gnd["gnd"]):
            ok = [i for i in entry.get("ok", []) if i < len(imlist)]
            if ok and len(queries) < n_queries:
                queries.append(name)
                entries.append({"ok": ok, "junk": [i for i in entry.get("junk", []) if i < len(imlist)],
                                "bbx": entry.get("bbx")})
        if not queries:
            raise ValueError(f"{source}: no query has a positive among the first {len(imlist)} database images")
        return images, {"imlist": imlist, "qimlist": queries, "gnd": entries}
    names = sorted(p.name for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not names:
        raise ValueError(f"{source}: neither a dataset folder (gnd.json) nor a folder of images")
    imlist = names[:base] if base else names
    queries = imlist[:n_queries]
    return source, {"imlist": imlist, "qimlist": queries,
                    "gnd": [{"ok": [i], "junk": [], "bbx": None} for i in range(len(queries))]}


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def replicate(images: Path, gnd: dict, copies: int, out: Path) -> dict:
    """The set with its database ``copies`` times (``c03_<name>``), its queries once, as a custom folder."""
    (out / "images").mkdir(parents=True)
    n = len(gnd["imlist"])
    imlist = [f"c{c:02d}_{name}" for c in range(copies) for name in gnd["imlist"]]
    for c in range(copies):
        for name in gnd["imlist"]:
            link_or_copy(images / name, out / "images" / f"c{c:02d}_{name}")
    in_db = set(gnd["imlist"])
    qimlist = []
    for name in gnd["qimlist"]:
        if name in in_db:  # a query that is a database image stays one (the first copy)
            qimlist.append(f"c00_{name}")
        else:
            qimlist.append(name)
            if not (out / "images" / name).exists():
                link_or_copy(images / name, out / "images" / name)
    entries = [{"ok": [c * n + i for c in range(copies) for i in e["ok"]],
                "junk": [c * n + i for c in range(copies) for i in e.get("junk", [])], "bbx": e.get("bbx")}
               for e in gnd["gnd"]]
    new = {"imlist": imlist, "qimlist": qimlist, "gnd": entries}
    (out / "gnd.json").write_text(json.dumps(new))
    return new


def set_param(params: dict, assignment: str) -> None:
    """``KEY=VALUE`` (dotted key, YAML value) into ``params``, as ``dvc exp run -S`` would."""
    import yaml

    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise ValueError(f"--set {assignment!r}: expected KEY=VALUE, e.g. whitening.D=128")
    node = params
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = yaml.safe_load(value)


def scratch_workspace(dest: Path, folder: Path, size_policy: dict, overrides=()) -> None:
    """A copy of this checkout's files without outputs, its params.yaml pointed at ``folder`` as ``custom``
    (and ``overrides``, ``KEY=VALUE`` each)."""
    import yaml

    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if any(rel == d or rel.startswith(d + "/") for d in OUTPUT_DIRS) and not rel.endswith(".gitkeep"):
            continue
        src = REPO / rel
        if src.is_file():  # a listed file deleted in the working tree is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = ["custom"]
    params.setdefault("sources", {})["custom"] = str(folder.resolve())
    params.setdefault("features", {}).setdefault("size", {})["custom"] = size_policy
    for assignment in overrides:
        set_param(params, assignment)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def table(recs: list[dict], sizes: list[int]) -> str:
    stages = list(dict.fromkeys(r["stage"] for r in recs))
    by = {(r["stage"], r["copies"]): r for r in recs}
    images = {k: next((r["images"] for r in recs if r["copies"] == k), None) for k in sizes}
    head = ["stage"] + [f"{k}x ({images[k]} images) ms/image" for k in sizes] + [f"{sizes[-1]}x / {sizes[0]}x"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    totals = {k: 0.0 for k in sizes}
    for stage in stages + ["total"]:
        cells, per = [stage], {}
        for k in sizes:
            if stage == "total":
                per[k] = totals[k] if images[k] else None
            else:
                r = by.get((stage, k))
                per[k] = r["ms_per_image"] if r and r["ms_per_image"] is not None else None
                if per[k] is not None and not stage.startswith("features: "):
                    totals[k] += per[k]
            cells.append("" if per[k] is None else f"{per[k]:.1f}")
        first, last = per[sizes[0]], per[sizes[-1]]
        cells.append(f"{last / first:.2f}" if first and last is not None else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(REPO / "data" / "synth"),
                    help="a dataset folder (images/ + gnd.json) or a folder of images (default: data/synth)")
    ap.add_argument("--sizes", default="1,4,16", help="replication factors (default 1,4,16)")
    ap.add_argument("--base", type=int, default=None, help="database images of the set (default: all)")
    ap.add_argument("--queries", type=int, default=8, help="queries, the same at every size (default 8)")
    ap.add_argument("--size-policy", default=None, help="whose features.size the custom set gets (default: the "
                    "source's dataset name where params.yaml has one, else custom's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a parameter of the scratch workspaces (repeatable), e.g. whitening.D=128 for a small set")
    ap.add_argument("--stages", default=None, help="passed to bench/stages.py (default: every stage)")
    ap.add_argument("--no-forward", action="store_true", help="passed to bench/stages.py")
    ap.add_argument("--scratch", default=None, help="folder for the sets and workspaces (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "scaling.json"))
    args = ap.parse_args(argv)
    import yaml

    source = Path(args.source)
    if not source.is_dir():
        hint = " (run `dvc repro` first)" if source.resolve() == (REPO / "data" / "synth").resolve() else ""
        print(f"bench/scaling.py: {source} is not a folder{hint}", file=sys.stderr)
        return 2
    sizes = sorted({int(k) for k in args.sizes.split(",")})
    images, gnd = source_set(source, args.base, args.queries)
    policies = (yaml.safe_load((REPO / "params.yaml").read_text()).get("features") or {}).get("size") or {}
    name = args.size_policy or (source.parent.name if source.name == "images" else source.name)
    policy_name = name if name in policies else "custom"
    if policy_name not in policies:
        print(f"bench/scaling.py: params.yaml has no features.size.{policy_name}", file=sys.stderr)
        return 2
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for assignment in args.set:
        set_param(params, assignment)
    # PCA (K') and whitening (D) are fitted on the database's regions, at most 2^L per image: a smaller
    # set fails there, after the long features stage. Refuse it now.
    most = len(gnd["imlist"]) * 2 ** int(params["regions"]["L"])
    need = max(int(params["pca"]["k_prime"]), int(params["whitening"]["D"]))
    if most <= need:
        print(f"bench/scaling.py: {len(gnd['imlist'])} database images give at most {most} regions, too few to "
              f"fit pca.k_prime / whitening.D ({need}): raise --base or lower them with --set", file=sys.stderr)
        return 2
    scratch = Path(args.scratch) if args.scratch else Path(tempfile.mkdtemp(prefix="rdfa-scaling-"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"scaling: {len(gnd['imlist'])} database images x {sizes}, {len(gnd['qimlist'])} queries, from {source}; "
          f"size policy of {policy_name}; scratch {scratch}", flush=True)
    recs, status = [], 0
    try:
        for k in sizes:
            folder = scratch / f"{k}x" / "set"
            workspace = scratch / f"{k}x" / "workspace"
            for path in (folder, workspace):
                if path.exists():
                    shutil.rmtree(path)
            replicate(images, gnd, k, folder)
            scratch_workspace(workspace, folder, policies[policy_name], args.set)
            size_out = out.with_name(f"{out.stem}_{k}x.json")
            cmd = [sys.executable, str(REPO / "bench" / "stages.py"), "custom", "--workspace", str(workspace),
                   "--out", str(size_out)] + (["--stages", args.stages] if args.stages else []) + \
                  (["--no-forward"] if args.no_forward else [])
            print(f"scaling: {k}x: {' '.join(cmd[1:])}", flush=True)
            start = time.perf_counter()
            status = subprocess.run(cmd).returncode
            print(f"scaling: {k}x took {time.perf_counter() - start:.0f} s", flush=True)
            if status != 0:
                print(f"scaling: {k}x failed; stopping (its logs: {size_out.with_suffix('.logs')})", file=sys.stderr)
                break
            for r in json.loads(size_out.read_text()):
                recs.append({"stage": r["stage"], "copies": k, "images": r["images"], "seconds": r["seconds"],
                             "ms_per_image": round(1000 * r["seconds"] / r["images"], 3) if r["images"] else None,
                             "peak_rss_mb": r["peak_rss_mb"]})
            if not args.keep:
                shutil.rmtree(scratch / f"{k}x")
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    done = sorted({r["copies"] for r in recs})
    if done:
        text = table(recs, done)
        print(text)
        out.write_text(json.dumps(recs, indent=1) + "\n")
        out.with_suffix(".md").write_text(text)
        print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
