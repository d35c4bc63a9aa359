#!/usr/bin/env python3
"""Build an objects-in-clutter test folder (canonical layout) from COIL-100 and scikit-image photos.

Independent of the ``synth`` generator, for checking protocol changes on data
the method was not tuned on: each database image is a 640x480 photo background
with one target object (a COIL-100 object view, enlarged 1.1-2x) and 2-4
clutter objects from other COIL-100 objects; each query is a separate scene
with its object at a view angle no database image uses, and a box around it.

    python bench/make_clutter.py --coil ../shared/datasets/coil100/images --out /tmp/clutter

Then ``sources.custom: /tmp/clutter`` and ``datasets: [custom]``.

``--distractors N`` also writes N distractor scenes to ``<out>_distractors/`` (outside ``<out>``:
the dataset's source digest covers every file of its folder), made like the database images but
around objects obj1..obj25, which no target and no clutter object of the dataset is (so none is a
positive of any query), from a random stream of their own (the dataset is the same with or without
them). Use them as a folder distractor set, e.g. ``sources.clutter_distractors:
/tmp/clutter_distractors`` and ``distractors: {custom: clutter_distractors}``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
               "retina", "colorwheel", "motorcycle_left", "cat", "logo", "page", "text", "grass", "gravel",
               "brick")


def backgrounds(rng: np.random.Generator, size_hw: tuple[int, int]):
    import skimage.data

    photos = []
    for name in BACKGROUNDS:
        try:
            img = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - a photo missing from this skimage build
            continue
        if isinstance(img, tuple):
            img = img[0]
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(img[:, :, :3]).astype(np.uint8))

    def draw() -> np.ndarray:
        img = photos[rng.integers(len(photos))]
        h, w = img.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        out = cv2.resize(img[y:y + ch, x:x + cw], (size_hw[1], size_hw[0]), interpolation=cv2.INTER_AREA)
        if rng.uniform() < 0.5:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    return draw


def available_angles(folder: Path) -> dict[int, list[int]]:
    """Views present per object (the shared copy lacks a few of the 7,200)."""
    out: dict[int, list[int]] = {}
    for path in folder.glob("obj*__*.png"):
        obj, angle = path.stem[3:].split("__")
        out.setdefault(int(obj), []).append(int(angle))
    return {k: sorted(v) for k, v in out.items()}


def nearest_view(views: dict[int, list[int]], obj: int, angle: int) -> int:
    return min(views[obj], key=lambda a: (min(abs(a - angle), 360 - abs(a - angle)), a))


def coil_view(folder: Path, obj: int, angle: int) -> np.ndarray:
    img = cv2.imread(str(folder / f"obj{obj}__{angle}.png"), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(folder / f"obj{obj}__{angle}.png")
    return img[:, :, ::-1]


def paste(canvas: np.ndarray, obj: np.ndarray, scale: float, xy: tuple[int, int]) -> list[int]:
    """Paste the non-black part of a COIL view, scaled, with its top-left at ``xy``; return its box."""
    side = int(round(128 * scale))
    view = cv2.resize(obj, (side, side), interpolation=cv2.INTER_LINEAR)
    mask = cv2.GaussianBlur((view.max(axis=2) > 25).astype(np.float32), (5, 5), 0)[:, :, None]
    x, y = xy
    region = canvas[y:y + side, x:x + side]
    region[:] = (mask * view + (1 - mask) * region).astype(np.uint8)
    ys, xs = np.nonzero(mask[:, :, 0] > 0.5)
    return [int(x + xs.min()), int(y + ys.min()), int(x + xs.max() + 1), int(y + ys.max() + 1)]


def scene(rng, draw_bg, coil: Path, views: dict, target: int, angle: int, clutter_objs: list[int]):
    h, w = 480, 640
    canvas = draw_bg()
    for obj in rng.choice(clutter_objs, size=rng.integers(2, 5), replace=False):
        scale = rng.uniform(0.8, 1.6)
        side = int(round(128 * scale))
        view = int(rng.choice(views[int(obj)]))
        paste(canvas, coil_view(coil, int(obj), view), scale,
              (int(rng.integers(0, w - side)), int(rng.integers(0, h - side))))
    scale = rng.uniform(1.1, 2.0)
    side = int(round(128 * scale))
    box = paste(canvas, coil_view(coil, target, nearest_view(views, target, angle)), scale,
                (int(rng.integers(0, w - side)), int(rng.integers(0, h - side))))
    return canvas, box


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coil", type=Path, default=Path("../shared/datasets/coil100/images"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--objects", type=int, default=40, help="target objects (one query each)")
    ap.add_argument("--per-object", type=int, default=10, help="database images per target object")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--distractors", type=int, default=0, help="distractor scenes to write to <out>_distractors")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    draw_bg = backgrounds(rng, (480, 640))
    views = available_angles(args.coil)
    targets = list(range(101 - args.objects, 101))           # obj61..obj100 by default
    clutter = list(range(26, 101 - args.objects))            # never a target; obj1..25 left alone
    images = args.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    imlist, qimlist, gnd = [], [], []
    owner = []
    for t in targets:
        # database views spread over the circle; the query's view lies between two of them
        angles = (np.arange(args.per_object) * (360 // args.per_object) // 5 * 5).tolist()
        for k, angle in enumerate(angles):
            img, _ = scene(rng, draw_bg, args.coil, views, t, int(angle), clutter)
            name = f"db_obj{t}_{k}.jpg"
            cv2.imwrite(str(images / name), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
            imlist.append(name)
            owner.append(t)
    for t in targets:
        img, box = scene(rng, draw_bg, args.coil, views, t, 15, clutter)  # 15 degrees: no database view
        name = f"query_obj{t}.jpg"
        cv2.imwrite(str(images / name), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        qimlist.append(name)
        gnd.append({"ok": [i for i, o in enumerate(owner) if o == t], "junk": [], "bbx": box})
    (args.out / "gnd.json").write_text(json.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, indent=1))
    print(f"{args.out}: {len(imlist)} database images, {len(qimlist)} queries")
    if args.distractors:
        rng = np.random.default_rng(args.seed + 1)  # the dataset above does not depend on this stream
        draw_bg = backgrounds(rng, (480, 640))
        folder = args.out.with_name(args.out.name + "_distractors")
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(args.distractors):
            featured = int(rng.integers(1, 26))  # obj1..obj25: neither a target nor clutter of the dataset
            img, _ = scene(rng, draw_bg, args.coil, views, featured, int(rng.choice(views[featured])), clutter)
            cv2.imwrite(str(folder / f"distractor_{k:05d}.jpg"), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        print(f"{folder}: {args.distractors} distractor scenes")


if __name__ == "__main__":
    main()
