#!/usr/bin/env python3
"""Per-image cost of each step of describing an image, one process, one thread.

    python bench/describe.py --dataset synth --images 50 --json describe.json [--root .]

Run in a project folder after ``dvc repro`` (``--root``, default the current folder): it reads the
dataset's images (``data/<ds>``), its network and size policy (``features.h5``), its fitted K -> K'
basis (``pca.h5``) and whitening (``whitened.h5``) as ``rdfa search`` does (``rdfa.io.index.load_index``),
and describes the first ``--images`` database images with the functions ``rdfa.io.describe.describe_image``
chains, timing each on its own:

- ``decode``: ``rdfa.io.images.load_rgb`` and ``prepare_input`` (the size policy);
- ``network``: ``rdfa.io.backbones.stored_feature_map`` (the map in the stored precision);
- ``points``: ``rdfa.saliency.image_points`` (detection, alpha, ranking);
- ``regions``: ``rdfa.regions.image_regions`` (fast global k-means and the hull masks);
- ``descriptors``: ``rdfa.pooling.region_descriptors`` (eq. 5);
- ``whitening``: ``rdfa.whitening.whitened`` (eq. 6).

One torch thread, one BLAS thread (threadpoolctl), one OpenCV thread. The first image is described once
before timing (allocations, oneDNN's first-call set-up), and its rows are compared with
``describe_image``'s: the steps timed are the steps the pipeline runs. Writes the median ms per image of
each step as JSON (``ms_per_image``, ``cpu``, ``n_images`` and some context) and prints a markdown table.
Run it on a quiet machine (see docs/speed.md).

    python bench/describe.py --dataset synth --images 50 --detectors --json detectors.json

``--detectors``: the salient-point variants of issue 25 item 2 on the same images (network inputs and
stored-precision maps as above), each timed at one thread: pyhesaff as the points stage runs it
(``today``); without affine adaptation (``affine_invariance=False``; the method keeps only positions);
with a 9-pixel instead of 41-pixel normalised patch for the SIFT descriptors it computes and we drop
(``patchSize``; it also decides which points lie too close to the border); on the network input shrunk
2x and 4x (``rdfa.io.images.resize_to``, positions mapped back with ``rdfa.regions.rescale_points``;
N_min as it is, or divided by the shrink factor squared); and today's points cut to a smaller ``N_max``.
Per variant: ms per image for detection + ranking (``rdfa.saliency.salient_points``) and for the
regions of its points, the median number of points detected and kept, how many images fell back to
alpha, the overlap (Jaccard) of the feature-grid cells holding the variant's selected points with those
holding today's, and the
share of images whose region masks equal today's.

    python bench/describe.py --dataset synth --images 50 --methods --json methods.json

``--methods``: the per-image cost of the distractor pass with Table 1's other methods (issue 24 item 5),
in the same run and on the same images: ``before`` is what the pass did for O2_R alone (decode,
``describe_image``, its rows to float16), ``after`` adds every built-in method's vectors whitened with the
methods stage's fits (``rdfa.methods.table1.DistractorMethods``, as ``stages/distractors.py`` builds
it from ``method_fits.h5``) and their float16 cast. Each image is described once and timed before
and after its methods, in the same call; prints the medians and the median of the per-image ratios.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

STEPS = ("decode", "network", "points", "regions", "descriptors", "whitening")
#: CPU flags that decide how fast the network runs in bf16 (oneDNN's kernels).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU's model name and which of :data:`ISA_FLAGS` it has, e.g.
    ``"AMD EPYC (avx2 avx512f avx512_bf16; no amx_tile amx_bf16)"``."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = platform.processor() or platform.machine(), set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    have = [f for f in ISA_FLAGS if f in flags]
    lacks = [f for f in ISA_FLAGS if f not in flags]
    return f"{model} ({' '.join(have) or 'none of ' + ' '.join(ISA_FLAGS)}" + (
        f"; no {' '.join(lacks)})" if lacks and have else ")")


def one_cpu() -> None:
    """Pin this process to one CPU: pyhesaff carries its own OpenCV, whose threads no setting here reaches."""
    import os

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})


def median_ms(times: dict[str, list[float]]) -> dict[str, float]:
    return {step: round(1000.0 * float(np.median(times[step])), 3) for step in STEPS}


def table(result: dict) -> str:
    """The markdown table of a result: median ms per image of each step, its share of the total."""
    ms = result["ms_per_image"]
    total = sum(ms.values())
    lines = [f"| step ({result['dataset']}, {result['n_images']} images, median) | ms/image | share |",
             "|---|---:|---:|"]
    lines += [f"| {step} | {ms[step]:.1f} | {100.0 * ms[step] / total:.0f} % |" for step in STEPS]
    lines.append(f"| **total** | **{total:.1f}** | |")
    lines.append(f"| points + regions / network | {(ms['points'] + ms['regions']) / ms['network']:.2f}x | |")
    return "\n".join(lines)


class Setup:
    """What describing the dataset's images needs, loaded as ``rdfa search`` loads it, at one thread."""

    def __init__(self, root: Path, dataset: str, n_images: int):
        import cv2
        import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS first, so that the limit reaches it too)
        import torch

        from rdfa.io.backbones import build_backbone
        from rdfa.io.describe import Describer
        from rdfa.io.gnd import load_gnd
        from rdfa.io.index import load_index
        from rdfa.settings import load_settings

        one_cpu()
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        index = load_index(root, dataset, load_settings(root / "params.yaml"))
        self.index, self.dataset = index, dataset
        self.describer = Describer(index.policy, index.dtype, index.components, index.whitening,
                                   index.whitening_mode, index.conf)
        self.conf = self.describer.conf
        self.backbone = build_backbone(index.backbone_name, index.weights, "cpu", index.precision)
        self.names = list(load_gnd(index.paths.data, need_queries=False)["imlist"])[:n_images]
        if not self.names:
            raise SystemExit(f"{index.paths.gnd}: no database images")

    def context(self) -> dict:
        import torch

        return {"cpu": cpu_description(), "n_images": len(self.names), "dataset": self.dataset,
                "backbone": self.index.backbone_name, "precision": self.index.precision, "threads": 1,
                "settings": {"n_max": self.conf.n_max, "n_min": self.conf.n_min, "L": self.conf.n_clusters},
                "torch": torch.__version__,
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "command": " ".join(["python", "bench/describe.py"] + sys.argv[1:])}


def measure(root: Path, dataset: str, n_images: int) -> dict:
    """Median ms per image of each step of ``describe_image`` (module docstring)."""
    import torch
    from threadpoolctl import threadpool_limits

    from rdfa.io.backbones import stored_feature_map
    from rdfa.io.describe import describe_image
    from rdfa.io.images import load_rgb, prepare_input
    from rdfa.pooling import region_descriptors
    from rdfa.regions import image_regions
    from rdfa.saliency import image_points
    from rdfa.whitening import whitened

    setup = Setup(root, dataset, n_images)
    describer, backbone, conf, images = setup.describer, setup.backbone, setup.conf, setup.index.paths.images
    times = {step: [] for step in STEPS}
    counts = {"points": [], "regions": []}

    def describe(name: str):
        """The steps of describe_image for a database image (no box), each timed."""
        clock = [time.perf_counter()]

        def lap(step: str) -> None:
            clock.append(time.perf_counter())
            times[step].append(clock[-1] - clock[-2])

        prepared = prepare_input(load_rgb(images / name), describer.policy, backbone.stride, name)
        lap("decode")
        fmap = stored_feature_map(backbone, prepared.image, describer.dtype, name)
        lap("network")
        points = image_points(prepared.image, fmap, conf.n_max, conf.n_min, conf.fallback, conf.detector).points
        lap("points")
        regions = image_regions(points, conf.n_clusters, prepared.image.shape[:2], fmap.shape[:2], conf.min_cells,
                                conf.max_iter)
        lap("regions")
        rows = region_descriptors(fmap, regions.masks, describer.components, conf.beta_eps, conf.log_eps)
        lap("descriptors")
        rows = whitened(rows, describer.whitening, describer.whitening_mode)
        lap("whitening")
        counts["points"].append(len(points))
        counts["regions"].append(len(regions.masks))
        return rows

    with threadpool_limits(limits=1, user_api="blas"), torch.inference_mode():
        first = setup.names[0]
        rows = describe(first)
        expected = describe_image(describer, backbone, load_rgb(images / first), first).rows
        if rows.shape != expected.shape or not np.array_equal(rows, expected):
            raise SystemExit(f"{first}: the timed steps do not give describe_image's rows: bench/describe.py "
                             "no longer follows rdfa.io.describe.describe_image")
        for values in (*times.values(), *counts.values()):
            values.clear()
        for name in setup.names:
            describe(name)
    return {"ms_per_image": median_ms(times), **setup.context(),
            "median_points": float(np.median(counts["points"])),
            "median_regions": float(np.median(counts["regions"]))}


def methods_cost(root: Path, dataset: str, n_images: int) -> dict:
    """Median ms per image of the distractor pass before / after Table 1's other methods (module docstring)."""
    import torch
    from threadpoolctl import threadpool_limits

    from rdfa.io.describe import describe_image
    from rdfa.io.distractors import distractor_methods
    from rdfa.io.images import load_rgb
    from rdfa.methods import names
    from rdfa.settings import load_settings

    setup = Setup(root, dataset, n_images)
    settings = load_settings(root / "params.yaml")
    builtin = tuple(names()[:10])  # Table 1's ten (plugins register after them)
    methods, _ = distractor_methods(replace_methods(settings, builtin), setup.index.paths, setup.describer.components)
    times: dict = {"before": [], "after": []}

    def once(name: str) -> None:
        """One image as the pass describes it, timed before and after the methods (the same call: a load
        on the machine weighs on both alike)."""
        start = time.perf_counter()
        found = describe_image(setup.describer, setup.backbone, load_rgb(setup.index.paths.images / name), name)
        found.rows.astype(np.float16)
        times["before"].append(time.perf_counter() - start)
        for by_key in methods.vectors(name, found.fmap, found.masks, found.pooled).values():
            for rows in by_key.values():
                rows.astype(np.float16)
        times["after"].append(time.perf_counter() - start)

    with threadpool_limits(limits=1, user_api="blas"), torch.inference_mode():
        once(setup.names[0])  # warm-up
        for values in times.values():
            values.clear()
        for name in setup.names:
            once(name)
    ms = {kind: round(1000.0 * float(np.median(t)), 2) for kind, t in times.items()}
    extra = np.asarray(times["after"]) - np.asarray(times["before"])
    ms["methods"] = round(1000.0 * float(np.median(extra)), 2)
    ratio = float(np.median(np.asarray(times["after"]) / np.asarray(times["before"])))
    return {"ms_per_image": ms, "ratio": round(ratio, 4), "methods": list(methods.fits), **setup.context()}


def replace_methods(settings, chosen: tuple):
    """``settings`` with ``methods.distractor_methods`` = ``chosen``."""
    from dataclasses import replace

    return replace(settings, methods=replace(settings.methods, distractor_methods=chosen))


def methods_table(result: dict) -> str:
    ms = result["ms_per_image"]
    return "\n".join([f"| distractor pass ({result['dataset']}, {result['n_images']} images, median) | ms/image |",
                      "|---|---:|", f"| before: O2_R's rows only | {ms['before']:.1f} |",
                      f"| after: + {len(result['methods'])} methods ({', '.join(result['methods'])}) | "
                      f"{ms['after']:.1f} |", f"| the methods alone | {ms['methods']:.1f} |",
                      f"| **after / before** (median of the per-image ratios) | **{result['ratio']:.3f}** |"])


#: Detector variants: (name, pyhesaff options, shrink factor of the network input).
#: Detector variants: (name, pyhesaff options, shrink factor of the network input, N_min divisor). A shrunk
#: image has about shrink^2 times fewer points; "N_min / 4" keeps the alpha fallback as rare as today's.
DETECTORS = (("today", {}, 1, 1), ("no affine adaptation", {"affine_invariance": False}, 1, 1),
             ("descriptor patch 9 px", {"patchSize": 9}, 1, 1),
             ("shrunk 2x", {}, 2, 1), ("shrunk 2x, N_min / 4", {}, 2, 4),
             ("shrunk 2x, patch 9 px, N_min / 4", {"patchSize": 9}, 2, 4),
             ("shrunk 2x, no affine, N_min / 4", {"affine_invariance": False}, 2, 4),
             ("shrunk 4x, N_min / 16", {}, 4, 16))
#: N_max values tried on today's points (the default's effect on the regions step).
N_MAX = (500, 1000, 2000)


def grid_cells(points: np.ndarray, image_hw, grid_hw) -> set:
    """The feature-grid cells ``(row, col)`` holding the ``(x, y)`` points (pixel ``x`` covers
    ``[x - 0.5, x + 0.5]``, cell ``c`` covers ``[c W_I / W, (c + 1) W_I / W)`` of that axis)."""
    cols = np.clip(((points[:, 0] + 0.5) * grid_hw[1] / image_hw[1]).astype(int), 0, grid_hw[1] - 1)
    rows = np.clip(((points[:, 1] + 0.5) * grid_hw[0] / image_hw[0]).astype(int), 0, grid_hw[0] - 1)
    return set(zip(rows.tolist(), cols.tolist()))


def detectors(root: Path, dataset: str, n_images: int) -> dict:
    """Issue 25 item 2's measurements (module docstring): one row per variant."""
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    from rdfa.io.backbones import stored_feature_map
    from rdfa.io.images import load_rgb, prepare_input, resize_to
    from rdfa.regions import image_regions, rescale_points
    from rdfa.saliency import detect_hessian_affine, salient_points
    from rdfa.weights import spatial_weights

    setup = Setup(root, dataset, n_images)
    conf, backbone = setup.conf, setup.backbone
    rows = {name: {"points_ms": [], "regions_ms": [], "detected": [], "kept": [], "fallback": 0, "cells": [],
                   "same_regions": 0} for name in [d[0] for d in DETECTORS] + [f"N_max {n}" for n in N_MAX]}

    def regions_of(points, image_hw, grid_hw, row):
        start = time.perf_counter()
        found = image_regions(points.astype(np.float32), conf.n_clusters, image_hw, grid_hw, conf.min_cells,
                              conf.max_iter)
        row["regions_ms"].append(time.perf_counter() - start)
        return found

    def record(row, points, used, image_hw, grid_hw, reference, reference_regions):
        row["kept"].append(len(points))
        row["fallback"] += int(used)
        cells = grid_cells(points, image_hw, grid_hw)
        row["cells"].append(len(cells & reference) / max(len(cells | reference), 1))
        found = regions_of(points, image_hw, grid_hw, row)
        row["same_regions"] += int(found.masks.shape == reference_regions.masks.shape
                                   and np.array_equal(found.masks, reference_regions.masks))

    with threadpool_limits(limits=1, user_api="blas"), torch.inference_mode():
        for i, name in enumerate(setup.names[:1] + setup.names):  # the first image twice: a warm-up
            prepared = prepare_input(load_rgb(setup.index.paths.images / name), setup.describer.policy,
                                     backbone.stride, name)
            image = prepared.image
            fmap = stored_feature_map(backbone, image, setup.describer.dtype, name)
            alpha = spatial_weights(fmap)
            image_hw, grid_hw = image.shape[:2], fmap.shape[:2]
            gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
            found = {}
            for variant, options, shrink, n_min_divisor in DETECTORS:
                start = time.perf_counter()
                small = gray if shrink == 1 else resize_to(gray, (round(image_hw[0] / shrink),
                                                                   round(image_hw[1] / shrink)))
                keypoints = detect_hessian_affine(small, **options)
                if shrink != 1:
                    keypoints = rescale_points(keypoints, (image_hw[1] / small.shape[1],
                                                           image_hw[0] / small.shape[0]))
                points, used = salient_points(keypoints, alpha, image_hw, conf.n_max,
                                              max(1, conf.n_min // n_min_divisor), conf.fallback)
                elapsed = time.perf_counter() - start
                found[variant] = (keypoints, points, used, elapsed)
            if i == 0:
                continue
            reference_points = found["today"][1]
            reference = grid_cells(reference_points, image_hw, grid_hw)
            reference_regions = image_regions(reference_points.astype(np.float32), conf.n_clusters, image_hw,
                                              grid_hw, conf.min_cells, conf.max_iter)
            for variant, (keypoints, points, used, elapsed) in found.items():
                row = rows[variant]
                row["points_ms"].append(elapsed)
                row["detected"].append(len(keypoints))
                record(row, points, used, image_hw, grid_hw, reference, reference_regions)
            for n_max in N_MAX:
                row = rows[f"N_max {n_max}"]
                keypoints, _, _, elapsed = found["today"]  # the same detection; N_max only cuts the ranking
                points, used = salient_points(keypoints, alpha, image_hw, n_max, min(conf.n_min, n_max),
                                              conf.fallback)
                row["points_ms"].append(elapsed)
                row["detected"].append(len(keypoints))
                record(row, points, used, image_hw, grid_hw, reference, reference_regions)
    summary = {}
    for variant, row in rows.items():
        summary[variant] = {
            "points_ms": round(1000.0 * float(np.median(row["points_ms"])), 2),
            "regions_ms": round(1000.0 * float(np.median(row["regions_ms"])), 2),
            "median_detected": float(np.median(row["detected"])),
            "median_kept": float(np.median(row["kept"])),
            "fallback_images": row["fallback"],
            "cells_jaccard": round(float(np.mean(row["cells"])), 4),
            "same_regions_share": round(row["same_regions"] / len(setup.names), 4),
        }
    return {"detectors": summary, **setup.context()}


def detector_table(result: dict) -> str:
    n = result["n_images"]
    lines = [f"| variant ({result['dataset']}, {n} images, median) | points ms | regions ms | detected | kept | "
             "alpha fallback | cells vs today (Jaccard) | regions equal today's |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, r in result["detectors"].items():
        lines.append(f"| {variant} | {r['points_ms']:.1f} | {r['regions_ms']:.1f} | {r['median_detected']:.0f} | "
                     f"{r['median_kept']:.0f} | {r['fallback_images']}/{n} | {r['cells_jaccard']:.3f} | "
                     f"{100 * r['same_regions_share']:.0f} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synth")
    parser.add_argument("--images", type=int, default=50, help="the first N database images (default 50)")
    parser.add_argument("--json", type=Path, help="write the result here as JSON")
    parser.add_argument("--root", type=Path, default=Path("."), help="project folder after `dvc repro`")
    parser.add_argument("--detectors", action="store_true",
                        help="compare the salient-point variants of issue 25 instead (module docstring)")
    parser.add_argument("--methods", action="store_true",
                        help="the distractor pass's cost with Table 1's other methods, as a ratio (module docstring)")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be at least 1")
    if args.detectors and args.methods:
        parser.error("--detectors and --methods measure different things: one at a time")
    run, show = ((detectors, detector_table) if args.detectors else (methods_cost, methods_table) if args.methods
                 else (measure, table))
    result = run(args.root, args.dataset, args.images)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['cpu']}, {result['backbone']} {result['precision']}, one thread, {result['date']}")
    print(show(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
