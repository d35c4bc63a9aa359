#!/usr/bin/env python3
"""Benchmark the hot loops of the pipeline; prints a table of times and ratios.

Second-order pooling (eq. 5) does one batched eigendecomposition of 2^L
K'xK' matrices per image; multithreaded BLAS adds overhead to such small
problems (and slows down badly when the cores are shared), which is why
stages/descriptors.py pins BLAS to one thread. Ratios are against the
baseline measured in the same process.

    python bench/bench_pooling.py [--images 40] [--repeat 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from rdfa.clustering import fast_global_kmeans
from rdfa.pooling import reduce_local, second_order


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40, help="images per measurement")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    # One image: a 16x22 map of K=1280 channels, 8 regions, K'=128 (the synth defaults).
    fmaps = [np.maximum(rng.normal(size=(16, 22, 1280)), 0) for _ in range(4)]
    masks = rng.uniform(size=(8, 16, 22)) < 0.4
    masks[-1] = True
    components = np.linalg.qr(rng.normal(size=(1280, 128)))[0]
    beta = rng.uniform(0.5, 3, size=1280)
    alpha = rng.uniform(size=(16, 22))
    locals_ = [reduce_local(f, beta, components) for f in fmaps]

    def pool():
        for i in range(args.images):
            second_order(locals_[i % 4], masks, alpha, 1e-3)

    blas = [f"{i['internal_api']} ({i['num_threads']} threads)" for i in threadpool_info() if i["user_api"] == "blas"]
    rows = []
    base = best_of(pool, args.repeat)
    rows.append(("eq. 5 pooling, BLAS default threads", base, 1.0))
    with threadpool_limits(limits=1, user_api="blas"):
        pinned = best_of(pool, args.repeat)
    rows.append(("eq. 5 pooling, BLAS pinned to 1 thread", pinned, pinned / base))

    points = rng.uniform(0, 512, size=(4000, 2))
    km = best_of(lambda: fast_global_kmeans(points, 3), args.repeat)
    rows.append(("fast global k-means, 4000 points, L=3", km, None))

    print(f"BLAS: {', '.join(blas) or 'none found'}")
    print(f"{'what':45s} {'seconds':>9s} {'per image':>10s} {'ratio':>7s}")
    for name, secs, ratio in rows:
        per = secs / args.images if "pooling" in name else secs
        print(f"{name:45s} {secs:9.3f} {per * 1000:8.1f}ms {'' if ratio is None else f'{ratio:7.2f}'}")


if __name__ == "__main__":
    main()
