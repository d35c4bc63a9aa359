#!/usr/bin/env python3
"""The measurements behind two choices of the speed work, on a dataset's own files.

    python bench/kernels.py compression --features features/coil100/features.h5 [--maps 400]
    python bench/kernels.py fit --descriptors features/coil100/descriptors.h5 [--k 512]
    python bench/kernels.py malloc [--dataset coil100] [--maps 1000]
    python bench/kernels.py eq5 [--dataset coil100] [--maps 640]
    python bench/kernels.py pool [--dataset coil100] [--maps 1280]

``compression``: how the feature maps are stored (``rdfa.io.map_compression``): size and read time per map
under each HDF5 filter, on the first ``--maps`` database maps. ``fit``: the PCA of the whole-image second-
order descriptors (O2_W's fit, the largest of the Table 1 stage) in float64 and in float32 (what
``rdfa.whitening.StreamingPCA`` does with float32 rows), one BLAS thread: seconds and the agreement of
eigenvalues and axes. ``malloc``: the methods stage's per-image pooling (read a map and its regions, every
built-in method of the maps: ``rdfa.methods.table1.describe``) of the first ``--maps`` database images of a
dataset, run in a fresh process with glibc's default allocator and with ``rdfa.io.stage.keep_freed_memory``
(what every stage calls): seconds, kernel seconds and page faults. ``eq5``: the descriptors stage's arithmetic
on the first ``--maps`` database maps in chunks of 32 images, one BLAS thread, each step the old way and the
current way: eq. 4 as one dense product against ``rdfa.pooling.reduce_local`` (all-zero channels left out),
and eq. 5's logs as ``regularized_log(second_moments(...))`` (every region K' x K') against
``rdfa.pooling.log_second_moments`` (regions of fewer positions than K' by their small Gram matrix): seconds
and the max abs difference of the descriptors. ``pool``: the methods stage's pooling worker on the first
``--maps`` database entries, one process, one BLAS thread: reading a map and its masks with h5py's objects and
with ``rdfa.io.keys.read_array``, each built-in method of the maps (``rdfa.methods.table1.describe``), and the
worker's whole loop (``rdfa.io.table1``: read, describe every method), in ms per map. Prints a markdown table
each; run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import h5py  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import rdfa.io  # noqa: E402,F401  (registers the HDF5 filters)


def compression(args) -> None:
    import hdf5plugin

    with h5py.File(args.features, "r") as f:
        keys = list(f["db"])[:args.maps]
        maps = [f["db"][k]["fmap"][()] for k in keys]
    raw = sum(m.nbytes for m in maps)
    filters = {"none": {}, "gzip 1": {"compression": "gzip", "compression_opts": 1}, "lzf": {"compression": "lzf"},
               "blosc lz4 + shuffle": dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)),
               "lz4": dict(hdf5plugin.LZ4()), "zstd 1": dict(hdf5plugin.Zstd(clevel=1))}
    print(f"| filter ({len(maps)} maps of {maps[0].shape} {maps[0].dtype}) | smaller than raw | write ms/map | "
          "read ms/map |\n|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in filters.items():
            path = Path(tmp) / "maps.h5"
            start = time.perf_counter()
            with h5py.File(path, "w") as f:
                for key, m in zip(keys, maps):
                    f.create_dataset(key, data=m, chunks=m.shape, **options)
            write = time.perf_counter() - start
            with h5py.File(path, "r") as f:
                f[keys[0]][()]
                start = time.perf_counter()
                for key in keys:
                    f[key][()]
                read = time.perf_counter() - start
            print(f"| {name} | {raw / os.path.getsize(path):.1f}x | {1000 * write / len(keys):.2f} | "
                  f"{1000 * read / len(keys):.2f} |")


def fit(args) -> None:
    from scipy.linalg import eigh

    with h5py.File(args.descriptors, "r") as f:
        offsets = f["db/offsets"][()]
        x = f["db/desc"][offsets[1:] - 1]  # each image's whole-image row: O2_W's training vectors
    k = min(args.k, len(x) - 1)
    results = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for dtype in (np.float64, np.float32):
            start = time.perf_counter()
            centred = (x - x.mean(0, dtype=np.float64)).astype(dtype)
            gram = centred @ centred.T
            values, vectors = eigh(gram, subset_by_index=[len(gram) - k, len(gram) - 1], driver="evr",
                                   check_finite=False)
            results[dtype] = (time.perf_counter() - start, values.astype(np.float64), vectors.astype(np.float64))
    (t64, v64, e64), (t32, v32, e32) = results[np.float64], results[np.float32]
    cosines = np.abs(np.sum(e64 * e32, axis=0))
    print(f"| {x.shape[0]} x {x.shape[1]} vectors, top {k} axes | seconds | \n|---|---:|\n| float64 | {t64:.1f} |\n"
          f"| float32 | {t32:.1f} |\n\neigenvalues: max relative difference {np.max(np.abs(v32 - v64) / v64):.1e}; "
          f"axes: smallest |cos| {cosines.min():.5f}")


#: One pooling pass in a fresh process (argv: dataset, maps, keep); prints seconds, kernel seconds, page faults.
MALLOC_CHILD = """
import resource, sys, time
import h5py
import rdfa.io  # registers the HDF5 filters
from rdfa.io.gnd import load_gnd
from rdfa.io.keys import masks_for
from rdfa.io.stage import Paths, blas_threads, keep_freed_memory
from rdfa.methods import Image, methods
from rdfa.methods.table1 import describe
dataset, maps, keep = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
if keep:
    keep_freed_memory()
paths = Paths(".", dataset)
pooled = [m for m in methods() if m.stored is None]
keys = [f"db/{name}" for name in load_gnd(paths.data, need_queries=False)["imlist"][:maps]]
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
with h5py.File(paths.features, "r") as features, h5py.File(paths.regions, "r") as regions, blas_threads(1):
    for key in keys:
        fmap = features[f"{key}/fmap"][()]
        image = Image(key, fmap, masks_for(key, fmap.shape, regions, paths.regions))
        for method in pooled:
            describe(method, image)
after = resource.getrusage(resource.RUSAGE_SELF)
print(len(keys), time.perf_counter() - start, after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt)
"""


def malloc(args) -> None:
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    print(f"| {args.dataset}: pooling of the methods stage, one process | images | seconds | kernel seconds | "
          "page faults per image |\n|---|---:|---:|---:|---:|")
    for label, keep in (("glibc defaults", "0"), ("keep_freed_memory", "1")):
        out = subprocess.run([sys.executable, "-c", MALLOC_CHILD, args.dataset, str(args.maps), keep], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        n, seconds, kernel, faults = int(out[0]), float(out[1]), float(out[2]), int(out[3])
        print(f"| {label} | {n} | {seconds:.1f} | {kernel:.1f} | {faults / max(n, 1):,.0f} |")


def eq5(args) -> None:
    from rdfa.io.keys import masks_for
    from rdfa.io.stage import Paths
    from rdfa.pooling import (
        GRAM_STEP,
        l2_normalize,
        log_second_moments,
        reduce_local,
        regularized_log,
        second_moments,
        upper_triangle,
    )
    from rdfa.settings import load_settings
    from rdfa.weights import channel_weights, spatial_weights

    settings = load_settings("params.yaml")
    paths = Paths(".", args.dataset)
    with h5py.File(paths.pca, "r") as f:
        components = f["components"][()]
    with h5py.File(paths.features, "r") as features, h5py.File(paths.regions, "r") as regions:
        keys = [f"db/{name}" for name in list(features["db"])[:args.maps]]
        maps = [np.asarray(features[f"{key}/fmap"][()], dtype=np.float64) for key in keys]
        masks = [masks_for(key, fmap.shape, regions, paths.regions) for key, fmap in zip(keys, maps)]
    beta_eps, log_eps = settings.weights.beta_eps, settings.descriptors.log_eps
    betas = [channel_weights(fmap, beta_eps) for fmap in maps]
    alphas = [spatial_weights(fmap) for fmap in maps]
    kp = components.shape[1]
    timings, outputs = {}, {}
    with threadpool_limits(1):
        for label, reduce in (("eq. 4, one dense product", lambda f, b: (f * b) @ components),
                              ("eq. 4, reduce_local", lambda f, b: reduce_local(f, b, components))):
            start = time.perf_counter()
            outputs[label] = [reduce(fmap, beta) for fmap, beta in zip(maps, betas)]
            timings[label] = time.perf_counter() - start
        locals_ = outputs["eq. 4, reduce_local"]
        chunks = [slice(i, i + 32) for i in range(0, len(maps), 32)]
        for label, logs in (
                ("eq. 5, regularized_log(second_moments)", lambda c: regularized_log(np.concatenate(
                    [second_moments(x, m, a) for x, m, a in zip(locals_[c], masks[c], alphas[c])]), log_eps)),
                ("eq. 5, log_second_moments", lambda c: log_second_moments(locals_[c], masks[c], alphas[c], log_eps))):
            start = time.perf_counter()
            outputs[label] = np.concatenate([l2_normalize(upper_triangle(logs(c))) for c in chunks])
            timings[label] = time.perf_counter() - start
    sizes = np.concatenate([m.reshape(len(m), -1).sum(1) for m in masks])
    small = np.mean(-(-sizes // GRAM_STEP) * GRAM_STEP < kp)
    print(f"| {args.dataset}, {len(maps)} maps, {len(sizes)} regions (K' = {kp}; {small:.0%} with fewer positions "
          "than K') | seconds | max abs difference |\n|---|---:|---:|")
    ref4 = outputs["eq. 4, one dense product"]
    diff4 = max(float(np.abs(a - b).max()) for a, b in zip(ref4, outputs["eq. 4, reduce_local"]))
    old, new = outputs["eq. 5, regularized_log(second_moments)"], outputs["eq. 5, log_second_moments"]
    diff5 = float(np.abs(old - new).max())
    for label, diff in (("eq. 4, one dense product", "-"), ("eq. 4, reduce_local", f"{diff4:.1e}"),
                        ("eq. 5, regularized_log(second_moments)", "-"), ("eq. 5, log_second_moments", f"{diff5:.1e}")):
        print(f"| {label} | {timings[label]:.2f} | {diff} |")


def pool(args) -> None:
    from rdfa.io import table1
    from rdfa.io.gnd import load_gnd
    from rdfa.io.keys import read_array
    from rdfa.io.stage import Paths, keep_freed_memory
    from rdfa.methods import Image, MethodSettings, methods
    from rdfa.methods.table1 import describe
    from rdfa.settings import load_settings

    keep_freed_memory()
    s = load_settings("params.yaml")
    settings = MethodSettings(s.methods.gem_p, s.methods.crow_a, s.methods.crow_b, s.methods.rmac_levels,
                              s.methods.rmac_overlap, s.weights.beta_eps)
    paths = Paths(".", args.dataset)
    keys = table1.group_keys(load_gnd(paths.data, need_queries=False), "db")[:args.maps]
    pooled = [m for m in methods() if m.stored is None]
    timings: dict[str, float] = {}

    def timed(label, step, items):
        start = time.perf_counter()
        out = [step(item) for item in items]
        timings[label] = (time.perf_counter() - start) / max(len(items), 1) * 1e3
        return out

    with threadpool_limits(1), h5py.File(paths.features, "r") as features, h5py.File(paths.regions, "r") as regions:
        timed("read a map and its masks, h5py objects",
              lambda key: (features[f"{key}/fmap"][()], regions[key]["masks"][()]), keys)
        inputs = timed("read a map and its masks, rdfa.io.keys.read_array",
                       lambda key: (read_array(features, f"{key}/fmap"), read_array(regions, f"{key}/masks")), keys)
        images = [Image(key, fmap, masks, settings) for key, (fmap, masks) in zip(keys, inputs)]
        timed("float32, float64 copies, alpha, beta (once per map)",
              lambda image: (image.fmap64, image.alpha, image.beta), images)
        for method in pooled:
            timed(f"{method.name} (rdfa.methods.table1.describe)", lambda image: describe(method, image), images)
    table1._open(paths, settings, [m.name for m in pooled], None)
    start = time.perf_counter()
    for first in range(0, len(keys), table1.CHUNK_IMAGES):
        table1._pool(keys[first:first + table1.CHUNK_IMAGES])
    timings["the pooling worker's loop (rdfa.io.table1)"] = (time.perf_counter() - start) / max(len(keys), 1) * 1e3
    print(f"| {args.dataset}, {len(keys)} database entries, one process | ms per map |\n|---|---:|")
    for label, ms in timings.items():
        print(f"| {label} | {ms:.3f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("compression")
    c.add_argument("--features", type=Path, required=True)
    c.add_argument("--maps", type=int, default=400)
    f = sub.add_parser("fit")
    f.add_argument("--descriptors", type=Path, required=True)
    f.add_argument("--k", type=int, default=512)
    m = sub.add_parser("malloc")
    m.add_argument("--dataset", default="coil100")
    m.add_argument("--maps", type=int, default=1000)
    e = sub.add_parser("eq5")
    e.add_argument("--dataset", default="coil100")
    e.add_argument("--maps", type=int, default=640)
    p = sub.add_parser("pool")
    p.add_argument("--dataset", default="coil100")
    p.add_argument("--maps", type=int, default=1280)
    args = parser.parse_args(argv)
    {"compression": compression, "fit": fit, "malloc": malloc, "eq5": eq5, "pool": pool}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
