"""The ``rdfa`` command (also ``python -m rdfa``): search an indexed dataset with your own photos.

    rdfa search --dataset synth PHOTO [PHOTO ...] [--box X1 Y1 X2 Y2] [--top 10] [--qe] [--json] [--show out.png]

Run it in the project folder after ``dvc repro``. Each photo is described as
the pipeline describes a query (``rdfa.io.index``) and the database ranked by
eq. 7 (eq. 8 with ``--qe``). The model and the index are loaded once per call.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

#: Height of the thumbnails in ``--show``'s picture, in pixels.
SHOW_HEIGHT = 200


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rdfa", description="Regional Deep Feature Aggregation: use the index "
                                     "that `dvc repro` built.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    search = commands.add_parser(
        "search", help="search a dataset's database with your own photos",
        description="Describe each PHOTO as the pipeline describes a query (a box: R_M of the crop; no box: "
                    "all its candidate regions) and print the best-matching database images, with the box of the "
                    "best-matched region in each, in that image's pixels. Refuses a dataset whose pipeline has "
                    "not run or is out of date (`dvc status`).")
    search.add_argument("photos", nargs="+", metavar="PHOTO", help="image file(s) to search with")
    search.add_argument("--dataset", required=True, help="dataset to search (its pipeline must have run)")
    search.add_argument("--box", nargs=4, type=float, metavar=("X1", "Y1", "X2", "Y2"),
                        help="query box in the photo's pixels (one PHOTO only): the photo is described by this "
                             "region alone, as Oxford/Paris queries are")
    search.add_argument("--top", type=positive_int, default=10, help="results per photo (default: 10)")
    search.add_argument("--qe", action="store_true", help="rank again after region query expansion (eq. 8, "
                        "ranking.n_qe of params.yaml)")
    search.add_argument("--json", action="store_true", help="print one JSON line per photo")
    search.add_argument("--show", metavar="OUT.png", help="write a picture of each photo and its results, "
                        "the matched regions drawn")
    search.add_argument("--root", default=".", help="project folder holding dvc.yaml and params.yaml (default: .)")
    search.add_argument("--no-check", action="store_true", help="skip the `dvc status` check that the "
                        "dataset's outputs are up to date")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Each photo alternates torch (its feature map) with numpy and OpenCV work (points, k-means,
    # eq. 5). OpenMP's default is to keep its idle threads spinning, and they then take the cores
    # from that work: on this project's shared 2-core machine a photo took 2.2-2.8 s so, and
    # 0.3-0.7 s with passive waiting. Read when torch loads, so set before it is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="rdfa: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return search(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"rdfa search: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rdfa search: interrupted (Ctrl+C)", file=sys.stderr)
        return 130


def check_photos(paths: list[str]) -> None:
    """Refuse at once, before the index and the network are loaded, a photo that is missing, not an image,
    or a decompression bomb (named): only its header is read, not its pixels."""
    from .io.images import check_header

    for path in paths:
        check_header(path)


def stream_photos(paths: list[str]):
    """``(path, image)`` one photo at a time, decoded only when asked for: the caller searches it and lets it
    go before the next is decoded, so memory does not grow with the number of photos (40 photos of 12 Mpx
    all decoded first held 3.6 GB)."""
    from .io.images import load_rgb

    for path in paths:
        yield path, load_rgb(path)


def search(args) -> int:
    from .io.backbones import build_backbone
    from .io.hulls import RegionHulls
    from .io.index import SearchError, check_outputs_exist, check_up_to_date, load_index, search_photo
    from .io.stage import Paths
    from .settings import load_settings

    root = Path(args.root)
    if not (root / "dvc.yaml").is_file():
        raise SearchError(f"{root.resolve()}: no dvc.yaml here; run `rdfa search` in the project folder "
                          "or pass --root")
    if args.box is not None:
        if len(args.photos) != 1:
            raise SearchError(f"--box describes one photo, but {len(args.photos)} were given")
        x1, y1, x2, y2 = args.box
        bad = [name for name, v in zip(("X1", "Y1", "X2", "Y2"), args.box) if not math.isfinite(v)]
        if bad:
            raise SearchError(f"--box {x1:g} {y1:g} {x2:g} {y2:g}: {', '.join(bad)} must be finite numbers "
                              "(pixels of the photo)")
        if not (x2 > x1 and y2 > y1):
            raise SearchError(f"--box {x1:g} {y1:g} {x2:g} {y2:g}: needs X2 > X1 and Y2 > Y1")
    check_photos(args.photos)
    start = time.perf_counter()
    settings = load_settings(root / "params.yaml")
    check_outputs_exist(Paths(root, args.dataset))
    if not args.no_check:
        check_up_to_date(root, args.dataset)
    index = load_index(root, args.dataset, settings)
    if args.qe and index.conf.n_qe == 0:
        raise SearchError("--qe: ranking.n_qe is 0 in params.yaml, so there is no query expansion to apply")
    import torch

    torch.set_num_threads(index.runtime.threads or os.cpu_count() or 1)
    backbone = build_backbone(index.backbone_name, index.weights, index.runtime.device, index.precision)
    print(f"rdfa search: {args.dataset}: {len(index.imlist)} images, {len(index.db)} regions, "
          f"{index.backbone_name} on {backbone.device}; loaded in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    top = min(args.top, len(index.imlist))
    rows = []
    with RegionHulls(index.paths) as hulls:
        for path, image in stream_photos(args.photos):
            answer = search_photo(index, backbone, hulls, image, path, args.box, top, args.qe)
            if args.json:
                print(json.dumps({"query": path, "box": args.box, "qe": args.qe,
                                  "results": [vars(r) for r in answer.results],
                                  "seconds": round(answer.seconds, 3)}), flush=True)
            else:
                print(format_answer(path, answer, args.qe), flush=True)
            if args.show:  # thumbnails only: the photo itself is let go
                rows.append(show_row(index.paths.images, path, image, args.box, answer))
            del image, answer
    if args.show:
        from .io.plots import plot_retrieval_examples

        plot_retrieval_examples(rows, args.show, f"rdfa search on {args.dataset}{' with QE' if args.qe else ''}: "
                                "yellow = best-matched region")
        print(f"rdfa search: wrote {args.show}", file=sys.stderr)
    return 0


def format_answer(path: str, answer, qe: bool) -> str:
    """The results of one photo as a small table."""
    lines = [f"{path}: {answer.n_regions} region{'s' * (answer.n_regions != 1)}"
             f"{', region QE' if qe else ''}, {answer.seconds:.2f} s",
             f"{'rank':>4}  {'score':>6}  {'region (x1, y1, x2, y2)':<24}  name"]
    for r in answer.results:
        box = ", ".join(f"{v:.0f}" for v in r.region)
        lines.append(f"{r.rank:>4}  {r.score:6.4f}  {box:<24}  {r.name}")
    return "\n".join(lines)


def show_row(images_dir: Path, path: str, image, box, answer) -> dict:
    """One row of ``--show``'s picture: the photo (its box drawn) and its results, regions in thumbnail pixels."""
    from .io.images import load_rgb, thumbnail
    from .regions import rescale_points

    small, sx, sy = thumbnail(image, SHOW_HEIGHT)
    query = {"image": small, "name": Path(path).name,
             "box": None if box is None else [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]}
    results = []
    for result, polygon in zip(answer.results, answer.polygons):
        small, sx, sy = thumbnail(load_rgb(images_dir / result.name), SHOW_HEIGHT)
        results.append({"image": small, "name": result.name, "status": None,
                        "polygon": rescale_points(polygon, (sx, sy)),
                        "caption": f"{result.rank}. {result.name} ({result.score:.3f})"})
    return {"query": query, "results": results}
