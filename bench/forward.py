#!/usr/bin/env python3
"""Bare network forward: milliseconds per image by precision and batch size, one table.

    python bench/forward.py [--backbone efficientnet_lite0] [--side 512] [--images 32]
                            [--batches 1,4,8] [--precisions fp32,bf16] [--threads 0]

Real photos (COIL-100's, resized to ``--side`` x ``--side`` as the features stage
does at min_side 512) go through ``rdfa.io.backbones`` exactly as the stage
calls it (channels_last input and weights, autocast for bf16/fp16); each cell
runs once untimed to warm up, then over ``--images`` images. The first cell
is the baseline for the ratios. Run it alone: other processes on the cores
make every number meaningless.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_images(folder: Path, n: int, side: int) -> np.ndarray:
    import cv2

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[::97][:n]
    if len(files) < n:
        files = (files * n)[:n]
    return np.stack([cv2.resize(cv2.imread(str(f))[:, :, ::-1], (side, side), interpolation=cv2.INTER_CUBIC)
                     for f in files])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--images-from", type=Path, default=ROOT.parent / "shared/datasets/coil100/images")
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    args = parser.parse_args(argv)
    import torch

    from rdfa.io.stage import keep_freed_memory

    keep_freed_memory()  # as every stage (run_stage): without it, 47 instead of 33 ms per image here

    from rdfa.io.backbones import build_backbone

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    images = load_images(args.images_from, args.images, args.side)
    rows, base = [], None
    for precision in args.precisions.split(","):
        backbone = build_backbone(args.backbone, args.weights, "cpu", precision)
        for batch in (int(b) for b in args.batches.split(",")):
            backbone.feature_maps(images[:batch])  # warm-up (oneDNN picks its kernels)
            start = time.perf_counter()
            for i in range(0, len(images), batch):
                backbone.feature_maps(images[i:i + batch])
            ms = 1000 * (time.perf_counter() - start) / len(images)
            base = base or ms
            rows.append((precision, batch, ms, base / ms))
            print(f"  {precision} batch {batch}: {ms:.1f} ms/image", file=sys.stderr)
    print(f"\n{args.backbone}, {args.side}x{args.side}, {args.images} images, "
          f"{torch.get_num_threads()} torch threads\n")
    print("| precision | batch | ms / image | images / s | speed-up vs first row |")
    print("|---|---:|---:|---:|---:|")
    for precision, batch, ms, ratio in rows:
        print(f"| {precision} | {batch} | {ms:.1f} | {1000 / ms:.1f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
