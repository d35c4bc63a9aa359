"""The embedded default dataset ``synth`` and its training split: object retrieval scenes made from a seed.

Everything comes from the sample photographs that scikit-image bundles inside
its package folder (no download). A fixed catalogue of recognisable patches of
those photos (a face, a cat, a cup, a rocket, a coin cluster, ...) supplies the
*objects*; ``n_objects`` of them are picked by the seed and become the queries.

* A **query** image is a scene holding its object almost frontally on a
  background of its own, and carries the box of the object's outline (``bbx``).
* A **database** scene holds one object (two thirds of the scenes) or two to
  three objects that hardly overlap, each seen under another position, scale
  and viewpoint (perspective warp, in-plane rotation) and another lighting
  (gain, gamma, colour cast, shading), covering 5 to 50 percent of the image,
  with mild blur and noise. Some scenes also hold a tiny copy of another
  object: that scene is ``junk`` for the object's query.
* ``n_distractors`` database scenes hold no query object at all.

Backgrounds and clutter are real image content, never noise: mosaics of
colour-shifted crops of the photos, the brick/grass/gravel textures warped and
colourised, and "distractor objects" (patches of the photos that are not query
objects, including unpicked catalogue entries) pasted under the objects, so a
global descriptor of a scene is not dominated by its object. Crops used for
backgrounds and clutter never touch the picked objects' boxes.

**The training split** ``synth_train`` holds database scenes only
(``train_NNNN.jpg``; ``qimlist`` and ``gnd`` are empty), to learn the
whitening off the test set without showing it the test set's objects. It is
told which test split to keep away from (option ``test: {seed, n_objects}``,
default synth's defaults; :func:`picked_objects` gives that split's query
objects from those two numbers alone) and is made of what those queries do not
use: as objects, the catalogue entries left unpicked plus, up to as many
objects as the test split has, photo crops that touch no picked object's box;
backgrounds and clutter as above, also away from the picked boxes. Placement,
lighting, blur and noise come from the same helpers as synth's database, so
the statistics match (same size, a sixth of the scenes without an object, a
third of the others with two or three). Its random streams differ from
synth's, so even the same seed gives other images.

:func:`plan_synth` (:func:`plan_synth_train`) draws the geometry (which object
where, its outline, its visible area) from the seed; :func:`render_scene`
paints one planned scene of either; :func:`make_synth`
(:func:`make_synth_train`) writes the canonical dataset folder (``images/``
and ``gnd.json``, see :mod:`rdfa.io.gnd`) atomically. The same seed and
parameters give byte-identical files.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from rdfa.io.atomic import atomic_path
from rdfa.io.gnd import validate_gnd

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# Source material
# --------------------------------------------------------------------------

#: Bundled scikit-image sample files used here (name -> file in skimage/data).
SOURCES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "horse": "horse.png",
    "motorcycle_left": "motorcycle_left.png",
    "camera": "camera.png",
    "coins": "coins.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "retina": "retina.jpg",
    "ihc": "ihc.png",
    "color": "color.png",
    "logo": "logo.png",
    "clock_motion": "clock_motion.png",
    "moon": "moon.png",
    "cell": "cell.png",
    "page": "page.png",
    "text": "text.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
}
# motorcycle_right is left out on purpose: it shows the same motorcycle as
# motorcycle_left, so its crops would put query objects into the clutter.

#: Grey textures, always free for backgrounds (no object is cut from them).
TEXTURES = ("brick", "grass", "gravel")


@dataclass(frozen=True)
class CatalogueObject:
    label: str
    source: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in the source photo (exclusive end)


#: Hand-picked, recognisable patches; entries cut from one photo never overlap.
CATALOGUE: tuple[CatalogueObject, ...] = (
    CatalogueObject("astronaut_face", "astronaut", (150, 15, 305, 200)),
    CatalogueObject("mission_patch", "astronaut", (128, 342, 222, 428)),
    CatalogueObject("shuttle_model", "astronaut", (352, 0, 470, 285)),
    CatalogueObject("flag", "astronaut", (0, 0, 100, 240)),
    CatalogueObject("helmet", "astronaut", (280, 345, 505, 512)),
    CatalogueObject("cat", "chelsea", (60, 0, 420, 300)),
    CatalogueObject("espresso_cup", "coffee", (165, 10, 430, 300)),
    CatalogueObject("rocket", "rocket", (282, 120, 378, 427)),
    CatalogueObject("launch_tower", "rocket", (0, 0, 110, 400)),
    CatalogueObject("horse", "horse", (0, 0, 400, 328)),
    CatalogueObject("front_wheel", "motorcycle_left", (500, 110, 690, 455)),
    CatalogueObject("engine", "motorcycle_left", (330, 235, 485, 365)),
    CatalogueObject("seat", "motorcycle_left", (140, 150, 330, 235)),
    CatalogueObject("rear_wheel", "motorcycle_left", (118, 240, 300, 405)),
    CatalogueObject("garage_shelf", "motorcycle_left", (340, 40, 495, 140)),
    CatalogueObject("cameraman", "camera", (150, 60, 335, 240)),
    CatalogueObject("tripod", "camera", (215, 295, 420, 512)),
    CatalogueObject("skyline", "camera", (345, 110, 512, 245)),
    CatalogueObject("coins_top", "coins", (0, 20, 190, 150)),
    CatalogueObject("coins_bottom", "coins", (195, 150, 384, 303)),
    CatalogueObject("galaxies", "hubble_deep_field", (40, 330, 330, 520)),
    CatalogueObject("optic_disc", "retina", (120, 500, 420, 900)),
    CatalogueObject("gland", "ihc", (245, 300, 400, 490)),
    CatalogueObject("tissue", "ihc", (0, 0, 240, 240)),
    CatalogueObject("colour_wheel", "color", (0, 0, 371, 370)),
    CatalogueObject("logo", "logo", (0, 0, 500, 500)),
    CatalogueObject("clock", "clock_motion", (120, 70, 300, 240)),
    CatalogueObject("moon_crater", "moon", (60, 20, 400, 210)),
    CatalogueObject("cell", "cell", (330, 280, 520, 470)),
    CatalogueObject("page", "page", (0, 0, 384, 191)),
)


def _data_dir() -> Path:
    import skimage.data

    return Path(os.path.dirname(skimage.data.__file__))


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """One bundled sample photo as a read-only ``uint8`` RGB array (H, W, 3)."""
    path = _data_dir() / SOURCES[name]
    if not path.is_file():
        raise FileNotFoundError(f"scikit-image sample photo {path} is missing (it should ship in the wheel)")
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, im)
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    arr.setflags(write=False)
    return arr


# --------------------------------------------------------------------------
# Plan: geometry drawn from the seed
# --------------------------------------------------------------------------


@dataclass
class Instance:
    """One query object painted into a scene."""

    query: int                 # query index (= object index in plan.objects)
    role: str                  # "ok" (clearly visible) or "junk" (tiny)
    quad: np.ndarray           # (4, 2) float64 outline corners in image pixels (TL, TR, BR, BL of the patch)
    area_frac: float           # visible area / image area (after clipping and occlusion)
    visible: float             # visible area / area of the whole outline
    photometric: dict = field(default_factory=dict)

    def bbox(self, width: int, height: int) -> list[int]:
        """Axis-aligned box of the outline, clipped to the image, as integer ``[x1, y1, x2, y2]``."""
        x1, y1 = np.floor(self.quad.min(axis=0))
        x2, y2 = np.ceil(self.quad.max(axis=0))
        return [int(np.clip(x1, 0, width)), int(np.clip(y1, 0, height)),
                int(np.clip(x2, 0, width)), int(np.clip(y2, 0, height))]


@dataclass
class Scene:
    name: str                  # file name under images/
    kind: str                  # "query", "object" or "distractor"
    stream: int                # 1 for queries, 0 for the database, 2 for the training split (seeds the renderer)
    index: int                 # position in qimlist / imlist
    instances: list[Instance]  # in painting order (later ones on top)


@dataclass
class SynthPlan:
    seed: int
    width: int
    height: int
    objects: list[int]         # catalogue index of each query object
    queries: list[Scene]
    db: list[Scene]

    @property
    def picked(self) -> list[int]:
        """Catalogue indices whose boxes backgrounds and clutter must avoid: the query objects."""
        return self.objects

    def object_of(self, q: int) -> CatalogueObject:
        """The patch painted for ``Instance.query == q``."""
        return CATALOGUE[self.objects[q]]

    def gnd(self) -> dict:
        ok: list[list[int]] = [[] for _ in self.objects]
        junk: list[list[int]] = [[] for _ in self.objects]
        for scene in self.db:
            for inst in scene.instances:
                (ok if inst.role == "ok" else junk)[inst.query].append(scene.index)
        entries = []
        for q, scene in enumerate(self.queries):
            inst = scene.instances[0]
            entries.append({
                "ok": sorted(set(ok[q])),
                "junk": sorted(set(junk[q]) - set(ok[q])),
                "bbx": inst.bbox(self.width, self.height),
            })
        return {"imlist": [s.name for s in self.db],
                "qimlist": [s.name for s in self.queries],
                "gnd": entries}


# Placement settings: area range (fraction of the image), max in-plane
# rotation (degrees), corner jitter (fraction of sqrt(area)), min visible share.
_QUERY_AREA = (0.12, 0.40)
_DB_AREA = (0.06, 0.45)
_MIN_AREA, _MAX_AREA = 0.05, 0.50
_JUNK_AREA = (0.004, 0.02)
_JUNK_PROB = 0.2
_MIN_VISIBLE = 0.6
_MAX_OVERLAP = 0.08


# The checks below are shared by the test split (``synth``) and the training
# split (``synth_train``); ``prefix`` is put before each parameter's name so a
# message names the parameter as its caller knows it (``data.synth_train.``).


def _check_ints(prefix: str, values: dict[str, object]) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ValueError(f"{prefix}{name} must be an integer, got {value!r}")


def _check_seed(prefix: str, seed: int) -> None:
    if seed < 0:
        raise ValueError(f"{prefix}seed must be >= 0, got {seed}")


def _check_n_objects(prefix: str, n_objects: int) -> None:
    if n_objects < 2:
        raise ValueError(f"{prefix}n_objects must be >= 2, got {n_objects}")
    if n_objects > len(CATALOGUE):
        raise ValueError(
            f"{prefix}n_objects={n_objects} exceeds the {len(CATALOGUE)} objects the bundled sample photos "
            f"provide")


def _check_image(prefix: str, width: int, height: int, quality: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if not 64 <= value <= 8192:
            raise ValueError(f"{prefix}{name} must be in [64, 8192], got {value}")
    if not 0.25 <= width / height <= 4:
        raise ValueError(f"{prefix}width/{prefix}height aspect {width}/{height} is too extreme "
                         f"(keep it within 1:4)")
    if not 1 <= quality <= 100:
        raise ValueError(f"{prefix}quality must be in [1, 100], got {quality}")


def _check_params(seed, n_objects, n_db, n_distractors, width, height, quality) -> None:
    _check_ints("", {"seed": seed, "n_objects": n_objects, "n_db": n_db, "n_distractors": n_distractors,
                     "width": width, "height": height, "quality": quality})
    _check_seed("", seed)
    _check_n_objects("", n_objects)
    if n_distractors < 0:
        raise ValueError(f"n_distractors must be >= 0, got {n_distractors}")
    if n_db < n_distractors:
        raise ValueError(f"n_db ({n_db}) must be >= n_distractors ({n_distractors})")
    if n_db - n_distractors < 2 * n_objects:
        raise ValueError(
            f"n_db ({n_db}) leaves {n_db - n_distractors} object scenes after {n_distractors} distractors; "
            f"need at least 2 per object ({2 * n_objects})")
    _check_image("", width, height, quality)


def _box_size(box: tuple[int, int, int, int]) -> tuple[int, int]:
    """(width, height) of an ``x1, y1, x2, y2`` box with exclusive end."""
    x1, y1, x2, y2 = box
    return x2 - x1, y2 - y1


def _boxes_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection of the axis-aligned boxes of two outlines over the smaller box."""
    ax1, ay1 = a.min(0)
    ax2, ay2 = a.max(0)
    bx1, by1 = b.min(0)
    bx2, by2 = b.max(0)
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((ax2 - ax1) * (ay2 - ay1), (bx2 - bx1) * (by2 - by1))
    return float(iw * ih / max(smaller, 1e-9))


def _visible_in_image(quad: np.ndarray, width: int, height: int) -> float:
    rect = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    area, _ = cv2.intersectConvexConvex(quad.astype(np.float32), rect)
    return float(area)


def _sample_quad(rng: np.random.Generator, patch_wh: tuple[int, int], area_range: tuple[float, float],
                 width: int, height: int, *, max_rot: float, jitter: float, min_visible: float,
                 inside: bool, others: list[np.ndarray] = (), max_overlap: float = _MAX_OVERLAP,
                 tries: int = 60, floor: float | None = None) -> np.ndarray | None:
    """Draw a convex outline for a patch: size, rotation, perspective and position.

    The outline's area inside the image lies in ``area_range`` (fractions of the
    image), at least ``min_visible`` of it is inside the image (all of it with
    ``inside``), and its box overlaps the boxes of ``others`` by at most
    ``max_overlap`` of the smaller one. ``None`` when no draw fits. A patch too
    elongated for the image at ``area_range[0]`` may come out smaller, down to
    ``floor`` (a fraction of the image, default ``area_range[0]``).
    """
    pw, ph = patch_wh
    img_area = float(width * height)
    lo, hi = area_range[0] * img_area, area_range[1] * img_area
    floor = lo if floor is None else min(lo, floor * img_area)
    # The largest area at which the (unrotated) patch still fits in the image.
    fit = min(width / pw, height / ph) ** 2 * pw * ph * (0.8 if inside else 0.95)
    lo_draw = max(floor, min(lo, fit * 0.9))
    hi_draw = max(min(hi, fit), lo_draw * 1.02)
    for _ in range(tries):
        area = math.exp(rng.uniform(math.log(lo_draw), math.log(hi_draw)))
        s = math.sqrt(area / (pw * ph))
        theta = math.radians(rng.uniform(-max_rot, max_rot))
        c, si = math.cos(theta), math.sin(theta)
        base = np.array([[-pw, -ph], [pw, -ph], [pw, ph], [-pw, ph]], np.float64) * (0.5 * s)
        corners = base @ np.array([[c, si], [-si, c]])
        corners += rng.uniform(-jitter, jitter, size=(4, 2)) * math.sqrt(area)
        mn, mx = corners.min(0), corners.max(0)
        size = mx - mn
        slack = 0.0 if inside else 0.2
        centre = np.empty(2)
        for d, extent in enumerate((width, height)):
            a = -mn[d] - slack * size[d]
            b = extent - mx[d] + slack * size[d]
            centre[d] = rng.uniform(a, b) if b > a else 0.5 * (a + b)
        quad = corners + centre
        if not cv2.isContourConvex(quad.astype(np.float32)):
            continue
        own = abs(cv2.contourArea(quad.astype(np.float32)))
        if own <= 0:
            continue
        if inside:
            if quad.min() < 0 or quad[:, 0].max() > width or quad[:, 1].max() > height:
                continue
            vis = own
        else:
            vis = _visible_in_image(quad, width, height)
        if vis / own < min_visible or not floor <= vis <= hi:
            continue
        if any(_boxes_overlap(quad, o) > max_overlap for o in others):
            continue
        return quad
    return None


def _raster_visibility(quads: list[np.ndarray], width: int, height: int, supersample: int = 4) -> list[float]:
    """Visible area (pixels) of each outline, clipped to the image and to the ones painted after it.

    Rasterised on a ``supersample``-times finer grid so the area is close to
    the exact polygon area (``fillConvexPoly`` fills boundary pixels).
    """
    ss = supersample
    allpts = np.concatenate(quads)
    x0, y0 = np.clip(np.floor(allpts.min(0)), 0, None).astype(int)
    x1 = int(np.clip(np.ceil(allpts[:, 0].max()), 0, width))
    y1 = int(np.clip(np.ceil(allpts[:, 1].max()), 0, height))
    areas = [0.0] * len(quads)
    if x1 <= x0 or y1 <= y0:
        return areas
    # Only the region holding the outlines (inside the image) is rasterised.
    cover = np.zeros(((y1 - y0) * ss, (x1 - x0) * ss), np.uint8)
    for i in range(len(quads) - 1, -1, -1):
        mask = np.zeros_like(cover)
        # Continuous x maps to fine-grid pixel centre ss*(x - x0) - 0.5; 4 fractional bits.
        pts = np.round(((quads[i] - (x0, y0)) * ss - 0.5) * 16).astype(np.int32)
        cv2.fillConvexPoly(mask, pts, 1, lineType=cv2.LINE_8, shift=4)
        mask &= 1 - cover
        areas[i] = float(np.count_nonzero(mask)) / (ss * ss)
        cover |= mask
    return areas


def _photometric(rng: np.random.Generator, strength: float) -> dict:
    """Lighting change of one object: gamma, gain, colour cast, offset, shading."""
    return {
        "gamma": float(math.exp(rng.uniform(-0.35, 0.35) * strength)),
        "gain": float(1 + rng.uniform(-0.3, 0.3) * strength),
        "colour": [float(v) for v in 1 + rng.uniform(-0.15, 0.15, 3) * strength],
        "offset": float(rng.uniform(-0.05, 0.05) * strength),
        "shade": [float(v) for v in rng.uniform(-0.3, 0.3, 2) * strength],
    }


def _place_scene(rng: np.random.Generator, objs: list[int], sizes: list[tuple[int, int]], junk_obj: int | None,
                 width: int, height: int) -> list[Instance]:
    """Place the objects of one database scene (retrying until all constraints hold).

    ``objs`` and ``junk_obj`` index ``sizes``, the (width, height) of each object's patch.
    """
    k = len(objs)
    upper = min(_DB_AREA[1], 0.75 / k)
    for attempt in range(200):
        if attempt and attempt % 50 == 0:
            upper = max(_DB_AREA[0] * 1.2, upper * 0.8)
        quads: list[np.ndarray] = []
        for q in objs:
            quad = _sample_quad(rng, sizes[q], (_DB_AREA[0] if k == 1 else _MIN_AREA, upper),
                                width, height, max_rot=30, jitter=0.10, min_visible=0.7, inside=False,
                                others=quads, floor=_MIN_AREA)
            if quad is None:
                break
            quads.append(quad)
        if len(quads) < k:
            continue
        junk_quad = None
        if junk_obj is not None:
            junk_quad = _sample_quad(rng, sizes[junk_obj], _JUNK_AREA, width, height,
                                     max_rot=40, jitter=0.10, min_visible=0.9, inside=False,
                                     others=quads, max_overlap=0.0)
        # The tiny junk copy is painted first (under the others), so it never hides them.
        order = ([junk_quad] if junk_quad is not None else []) + quads
        roles = (["junk"] if junk_quad is not None else []) + ["ok"] * k
        who = ([junk_obj] if junk_quad is not None else []) + list(objs)
        areas = _raster_visibility(order, width, height)
        img_area = width * height
        own = [abs(cv2.contourArea(qd.astype(np.float32))) for qd in order]
        if not all(_MIN_AREA <= a / img_area <= _MAX_AREA and a / o >= _MIN_VISIBLE
                   for a, o, role in zip(areas, own, roles) if role == "ok"):
            continue
        instances = [Instance(q, role, qd, a / img_area, a / o, _photometric(rng, 1.0))
                     for q, role, qd, a, o in zip(who, roles, order, areas, own)]
        return instances
    raise RuntimeError(f"could not place objects {objs} in a {width}x{height} scene")


def _assign_objects(rng: np.random.Generator, n_scenes: int, n_objects: int) -> list[list[int]]:
    """Objects of each object scene: a third hold 2-3, counts balanced over objects."""
    n_multi = int(round(n_scenes / 3))
    ks = [1] * (n_scenes - n_multi) + [min(int(rng.integers(2, 4)), n_objects) for _ in range(n_multi)]
    ks = [ks[i] for i in rng.permutation(n_scenes)]
    pool: list[int] = []
    scenes = []
    for k in ks:
        objs: list[int] = []
        while len(objs) < k:
            if not any(o not in objs for o in pool):
                pool.extend(int(o) for o in rng.permutation(n_objects))
            j = next(j for j, o in enumerate(pool) if o not in objs)
            objs.append(pool.pop(j))
        scenes.append(objs)
    return scenes


def _plan_db(rng: np.random.Generator, n_scenes: int, n_empty: int, sizes: list[tuple[int, int]],
             width: int, height: int, prefix: str, stream: int) -> list[Scene]:
    """Database scenes ``<prefix>_NNNN.jpg``: ``n_empty`` hold no object, the others 1-3 of ``sizes``' objects.

    Shared by the test split's database and the training split, so both have
    the same mix of single- and multi-object scenes, tiny copies and geometry.
    """
    n_objects = len(sizes)
    contents = _assign_objects(rng, n_scenes - n_empty, n_objects) + [[] for _ in range(n_empty)]
    order = rng.permutation(n_scenes)
    digits = max(4, len(str(n_scenes - 1)))
    db = []
    for index, slot in enumerate(order):
        objs = contents[int(slot)]
        name = f"{prefix}_{index:0{digits}d}.jpg"
        if not objs:
            db.append(Scene(name, "distractor", stream, index, []))
            continue
        junk_obj = None
        others = [o for o in range(n_objects) if o not in objs]
        if others and rng.random() < _JUNK_PROB:
            junk_obj = int(others[int(rng.integers(len(others)))])
        db.append(Scene(name, "object", stream, index, _place_scene(rng, objs, sizes, junk_obj, width, height)))
    return db


def _plan_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 7001]))


def _pick_objects(rng: np.random.Generator, n_objects: int) -> list[int]:
    return [int(i) for i in rng.permutation(len(CATALOGUE))[:n_objects]]


def picked_objects(seed: int = 0, n_objects: int = 24) -> list[int]:
    """Catalogue indices of the query objects that ``synth`` with this seed and ``n_objects`` picks.

    They are the first draw of :func:`plan_synth`, so they depend on nothing
    else (not on ``n_db``, ``n_distractors`` or the image size): the training
    split needs only these two numbers to keep away from the test split's objects.
    """
    return _pick_objects(_plan_rng(seed), n_objects)


def plan_synth(*, seed: int = 0, n_objects: int = 24, n_db: int = 240, n_distractors: int = 40,
               width: int = 512, height: int = 384) -> SynthPlan:
    """Draw the whole dataset's geometry from ``seed`` (no pixels yet)."""
    _check_params(seed, n_objects, n_db, n_distractors, width, height, 90)
    rng = _plan_rng(seed)
    objects = _pick_objects(rng, n_objects)
    sizes = [_box_size(CATALOGUE[obj].box) for obj in objects]

    queries = []
    for q, obj in enumerate(objects):
        quad = _sample_quad(rng, sizes[q], _QUERY_AREA, width, height, max_rot=8, jitter=0.04,
                            min_visible=1.0, inside=True, tries=500, floor=_MIN_AREA)
        if quad is None:
            raise RuntimeError(f"could not place query object {CATALOGUE[obj].label} in {width}x{height}")
        n = _raster_visibility([quad], width, height)[0]
        inst = Instance(q, "ok", quad, n / (width * height), 1.0, _photometric(rng, 0.4))
        queries.append(Scene(f"q_{q:02d}.jpg", "query", 1, q, [inst]))

    db = _plan_db(rng, n_db, n_distractors, sizes, width, height, "db", 0)
    return SynthPlan(int(seed), width, height, objects, queries, db)


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


Box = tuple[int, int, int, int]


def _forbidden_boxes(objects: list[int]) -> dict[str, list[Box]]:
    """Source photo -> boxes of the given catalogue entries (the areas crops must not touch)."""
    forbidden: dict[str, list[Box]] = {}
    for obj in objects:
        forbidden.setdefault(CATALOGUE[obj].source, []).append(CATALOGUE[obj].box)
    return forbidden


def _crop_box(rng: np.random.Generator, aspect: float, forbidden: dict[str, list[Box]],
              min_side: int = 32) -> tuple[str, Box]:
    """A random box (aspect = w/h, both sides >= ``min_side``) of a photo, touching no ``forbidden`` box.

    Falls back to a square of a grey texture (no object is cut from those)
    when 40 draws fail. Returns (photo name, ``x1, y1, x2, y2``).
    """
    sources = list(SOURCES)
    for _ in range(40):
        name = sources[int(rng.integers(len(sources)))]
        ih, iw = load_photo(name).shape[:2]
        h = rng.uniform(0.2, 0.7) * ih
        w = h * aspect
        if w > iw:
            w = rng.uniform(0.5, 1.0) * iw
            h = w / aspect
        if w < min_side or h < min_side:
            continue
        x1 = int(rng.uniform(0, iw - w + 1))
        y1 = int(rng.uniform(0, ih - h + 1))
        x2, y2 = min(iw, x1 + int(round(w))), min(ih, y1 + int(round(h)))
        if any(x1 < bx2 and bx1 < x2 and y1 < by2 and by1 < y2
               for bx1, by1, bx2, by2 in forbidden.get(name, ())):
            continue
        return name, (x1, y1, x2, y2)
    name = TEXTURES[int(rng.integers(len(TEXTURES)))]
    img = load_photo(name)
    side = int(rng.integers(96, 256))
    x1, y1 = int(rng.integers(0, img.shape[1] - side)), int(rng.integers(0, img.shape[0] - side))
    return name, (x1, y1, x1 + side, y1 + side)


def _cut(source: str, box: Box) -> np.ndarray:
    """The float RGB pixels (0..1) of ``box`` in photo ``source``."""
    x1, y1, x2, y2 = box
    return load_photo(source)[y1:y2, x1:x2].astype(np.float32) / 255.0


class _Material:
    """Object patches and a sampler of crops that avoid the picked objects.

    ``objects``: the catalogue indices whose boxes crops must not touch (a
    split's query objects); the other entries are ``spare`` (clutter material).
    """

    def __init__(self, objects: list[int]):
        self.objects = objects
        self._patches: dict[tuple[str, Box], np.ndarray] = {}
        self.forbidden = _forbidden_boxes(objects)
        self.spare = [i for i in range(len(CATALOGUE)) if i not in set(objects)]

    def patch(self, obj: CatalogueObject) -> np.ndarray:
        """The float RGB pixels of a catalogue entry (or any box of a photo), cut once per material."""
        key = (obj.source, obj.box)
        if key not in self._patches:
            self._patches[key] = _cut(obj.source, obj.box)
        return self._patches[key]

    def crop(self, rng: np.random.Generator, aspect: float) -> np.ndarray:
        """A float RGB crop (aspect = w/h) of a photo, touching no picked object's box."""
        return _cut(*_crop_box(rng, aspect, self.forbidden))


def _colour_shift(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    if rng.random() < 0.3:  # partly desaturate before the cast so grey and colour sources mix
        grey = img.mean(axis=2, keepdims=True)
        img = img + (grey - img) * rng.uniform(0.3, 1.0)
    gamma = math.exp(rng.uniform(-0.4, 0.4) * strength)
    gain = (1 + rng.uniform(-0.3, 0.3) * strength) * (1 + rng.uniform(-0.25, 0.25, 3) * strength)
    out = np.power(np.clip(img, 0, 1), gamma) * gain.astype(np.float32)
    return np.clip(out, 0, 1).astype(np.float32)


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    w, h = max(1, int(w)), max(1, int(h))
    interp = cv2.INTER_AREA if w < img.shape[1] and h < img.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def _mosaic(rng: np.random.Generator, mat: _Material, width: int, height: int) -> np.ndarray:
    """Guillotine-split canvas, each cell filled with a colour-shifted photo crop."""
    cells = [(0, 0, width, height)]
    n_cells = int(rng.integers(3, 9))
    while len(cells) < n_cells:
        i = max(range(len(cells)), key=lambda j: (cells[j][2] - cells[j][0]) * (cells[j][3] - cells[j][1]))
        x1, y1, x2, y2 = cells.pop(i)
        t = rng.uniform(0.3, 0.7)
        if x2 - x1 >= y2 - y1:
            xm = x1 + max(1, int((x2 - x1) * t))
            cells += [(x1, y1, xm, y2), (xm, y1, x2, y2)]
        else:
            ym = y1 + max(1, int((y2 - y1) * t))
            cells += [(x1, y1, x2, ym), (x1, ym, x2, y2)]
    canvas = np.empty((height, width, 3), np.float32)
    for x1, y1, x2, y2 in cells:
        crop = mat.crop(rng, (x2 - x1) / (y2 - y1))
        canvas[y1:y2, x1:x2] = _colour_shift(_resize(crop, x2 - x1, y2 - y1), rng)
    return canvas


def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A bundled grey texture, scaled, rotated and colourised with two random colours."""
    tex = load_photo(TEXTURES[int(rng.integers(len(TEXTURES)))])[..., 0].astype(np.float32) / 255.0
    scale = rng.uniform(0.4, 1.3)
    m = cv2.getRotationMatrix2D((tex.shape[1] / 2, tex.shape[0] / 2), rng.uniform(0, 360), scale)
    m[:, 2] += (width / 2 - tex.shape[1] / 2, height / 2 - tex.shape[0] / 2)
    t = cv2.warpAffine(tex, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    lo, hi = np.percentile(t, (2, 98))
    t = np.clip((t - lo) / max(hi - lo, 1e-3), 0, 1)
    c0 = rng.uniform(0.0, 0.45, 3).astype(np.float32)
    c1 = rng.uniform(0.5, 1.0, 3).astype(np.float32)
    return c0 + (c1 - c0) * t[..., None]


def _smooth_field(rng: np.random.Generator, width: int, height: int, cells: int = 4) -> np.ndarray:
    small = rng.random((cells, cells + 1)).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, mat: _Material, width: int, height: int) -> np.ndarray:
    kind = rng.random()
    if kind < 0.45:
        bg = _mosaic(rng, mat, width, height)
    elif kind < 0.65:
        bg = _texture(rng, width, height)
    else:  # texture and mosaic in irregular regions of a smooth random field
        a, b = _texture(rng, width, height), _mosaic(rng, mat, width, height)
        f = _smooth_field(rng, width, height)
        w = np.clip((f - 0.5) * 6 + 0.5, 0, 1)[..., None]
        bg = a * w + b * (1 - w)
    # Low-frequency illumination across the scene.
    light = 0.8 + 0.4 * _smooth_field(rng, width, height, cells=2)
    return np.clip(bg * light[..., None], 0, 1).astype(np.float32)


def _apply_photometric(patch: np.ndarray, p: dict) -> np.ndarray:
    h, w = patch.shape[:2]
    out = np.power(np.clip(patch, 0, 1), p["gamma"]) * (p["gain"] * np.asarray(p["colour"], np.float32))
    u = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    v = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    shade = 1 + p["shade"][0] * u + p["shade"][1] * v
    out = out * shade[..., None] + p["offset"]
    return np.clip(out, 0, 1).astype(np.float32)


def _paste(canvas: np.ndarray, patch: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """Warp ``patch`` onto ``quad`` of ``canvas`` (in place); return the alpha map."""
    height, width = canvas.shape[:2]
    ph, pw = patch.shape[:2]
    scale = math.sqrt(abs(cv2.contourArea(quad.astype(np.float32))) / (pw * ph))
    if scale < 0.8:  # shrink first so the perspective warp does not alias
        f = min(1.0, scale * 1.25)
        patch = _resize(patch, round(pw * f), round(ph * f))
        ph, pw = patch.shape[:2]
    src = np.array([[-0.5, -0.5], [pw - 0.5, -0.5], [pw - 0.5, ph - 0.5], [-0.5, ph - 0.5]], np.float32)
    # Outlines use continuous coordinates (pixel i spans [i, i+1]); OpenCV puts pixel centres at integers.
    m = cv2.getPerspectiveTransform(src, (quad - 0.5).astype(np.float32))
    warped = cv2.warpPerspective(patch, m, (width, height), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = cv2.warpPerspective(np.ones((ph, pw), np.float32), m, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # ``warped`` is premultiplied by the same bilinear weights as ``alpha``.
    canvas *= 1 - alpha[..., None]
    canvas += warped
    return alpha


def _clutter(rng: np.random.Generator, mat: _Material, canvas: np.ndarray, count: int) -> None:
    """Paste ``count`` distractor objects: spare catalogue entries or free photo crops."""
    height, width = canvas.shape[:2]
    for _ in range(count):
        if mat.spare and rng.random() < 0.35:
            patch = mat.patch(CATALOGUE[mat.spare[int(rng.integers(len(mat.spare)))]])
        else:
            patch = mat.crop(rng, math.exp(rng.uniform(-0.5, 0.5)))
        quad = _sample_quad(rng, (patch.shape[1], patch.shape[0]), (0.02, 0.15), width, height,
                            max_rot=40, jitter=0.1, min_visible=0.4, inside=False, tries=20)
        if quad is not None:
            _paste(canvas, _colour_shift(patch, rng, 0.7), quad)


def render_scene(plan: SynthPlan | TrainPlan, scene: Scene, material: _Material | None = None
                 ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Paint one planned scene: ``uint8`` RGB image and, per instance, its visible alpha map."""
    mat = material or _Material(plan.picked)
    w, h = plan.width, plan.height
    rng = np.random.default_rng(np.random.SeedSequence([plan.seed, 7002, scene.stream, scene.index]))
    canvas = _background(rng, mat, w, h)
    n_clutter = {"query": (1, 3), "object": (0, 3), "distractor": (2, 5)}[scene.kind]
    _clutter(rng, mat, canvas, int(rng.integers(*n_clutter)))
    visible: list[np.ndarray] = []
    for inst in scene.instances:
        patch = _apply_photometric(mat.patch(plan.object_of(inst.query)), inst.photometric)
        alpha = _paste(canvas, patch, inst.quad)
        for v in visible:
            v *= 1 - alpha
        visible.append(alpha.copy())
    mild = 0.4 if scene.kind == "query" else 1.0
    if rng.random() < 0.6:
        sigma = rng.uniform(0.3, 1.1) * mild
        canvas = cv2.GaussianBlur(canvas, (0, 0), sigmaX=sigma, sigmaY=sigma)
    noise = rng.uniform(0.0, 0.015) * mild
    canvas = canvas + rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(noise)
    img = np.clip(np.rint(canvas * 255), 0, 255).astype(np.uint8)
    return img, visible


def scene_material(plan: SynthPlan | TrainPlan) -> _Material:
    """The patches and crops :func:`render_scene` paints ``plan``'s scenes with (cut once, reused)."""
    return _Material(plan.picked)


def _save_jpeg(img: np.ndarray, path: Path, quality: int) -> None:
    Image.fromarray(img, "RGB").save(path, "JPEG", quality=int(quality), optimize=False)


@contextlib.contextmanager
def _cv2_single_thread() -> Iterator[None]:
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _write_dataset(out_dir: Path, plan: SynthPlan | TrainPlan, scenes: list[Scene], gnd: dict, quality: int,
                   desc: str, *, need_queries: bool = True) -> None:
    """Render ``scenes`` into ``out_dir/images/`` and write ``gnd``, all or nothing.

    The folder is built in a temporary sibling and renamed when complete, so
    an interrupted run leaves either the previous folder or none. ``gnd`` is
    validated against the written files first (``need_queries=False`` for a
    training-only split, which has no queries).
    """
    mat = _Material(plan.picked)
    with atomic_path(out_dir, directory=True) as tmp:
        images = tmp / "images"
        images.mkdir()
        for scene in tqdm(scenes, desc=desc, unit="img", leave=False):
            img, _ = render_scene(plan, scene, mat)
            _save_jpeg(img, images / scene.name, quality)
        validate_gnd(gnd, str(out_dir / "gnd.json"), images, need_queries=need_queries)
        with open(tmp / "gnd.json", "w") as f:
            json.dump(gnd, f, indent=1)
            f.write("\n")


#: The options of :func:`make_synth` (params.yaml's ``data.synth`` block).
SYNTH_OPTIONS = ("seed", "n_objects", "n_db", "n_distractors", "width", "height", "quality")
_SYNTH_PARAM = "data.synth."


def make_synth(out_dir: str | os.PathLike, *, seed: int = 0, n_objects: int = 24, n_db: int = 240,
               n_distractors: int = 40, width: int = 512, height: int = 384, quality: int = 92,
               **unknown: object) -> dict:
    """Write the ``synth`` dataset to ``out_dir`` (``images/`` + ``gnd.json``) and return its gnd.

    The folder appears only when complete (built in a temporary sibling, then
    renamed); an existing ``out_dir`` is replaced. Raises ``ValueError`` naming
    the offending parameter for nonsensical settings. The data stage passes
    params.yaml's ``data.synth`` block as keywords, so ``unknown`` ones are
    refused naming ``data.synth.<key>`` (a TypeError before).
    """
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(_SYNTH_PARAM + str(k) for k in sorted(unknown))} "
                         f"(known: {', '.join(SYNTH_OPTIONS)})")
    _check_params(seed, n_objects, n_db, n_distractors, width, height, quality)
    out_dir = Path(out_dir)
    log.info("synth: seed=%d, %d objects, %d database images (%d distractors), %dx%d -> %s",
             seed, n_objects, n_db, n_distractors, width, height, out_dir)
    with _cv2_single_thread():
        plan = plan_synth(seed=seed, n_objects=n_objects, n_db=n_db, n_distractors=n_distractors,
                          width=width, height=height)
        log.info("synth: objects %s", ", ".join(CATALOGUE[o].label for o in plan.objects))
        gnd = plan.gnd()
        _write_dataset(out_dir, plan, plan.queries + plan.db, gnd, quality, "synth")
    n_ok = [len(e["ok"]) for e in gnd["gnd"]]
    log.info("synth: wrote %d queries and %d database images; %d-%d positives per query",
             len(gnd["qimlist"]), len(gnd["imlist"]), min(n_ok), max(n_ok))
    return gnd


# --------------------------------------------------------------------------
# Training split
# --------------------------------------------------------------------------

#: The test split's parameters the training split assumes when its ``test``
#: option leaves them out: synth's own defaults (:func:`plan_synth`).
TEST_DEFAULTS: dict[str, int] = {"seed": 0, "n_objects": 24}
#: Options of :func:`make_synth_train` (params.yaml ``data.synth_train``).
TRAIN_OPTIONS = ("seed", "n_images", "width", "height", "quality", "test")
_TRAIN_PARAM = "data.synth_train."
#: Share of training scenes without an object (more clutter instead): synth's
#: default share of distractor scenes (40 of 240), so the statistics match.
_TRAIN_EMPTY_SHARE = 40 / 240
#: Shortest side of a photo crop used as a training object (catalogue patches
#: are at least 85 pixels), so it is not blown up far beyond its resolution.
_TRAIN_CROP_MIN_SIDE = 80


@dataclass
class TrainPlan:
    """The training split's geometry: database scenes only, made of what the test split does not use."""

    seed: int
    width: int
    height: int
    picked: list[int]               # catalogue indices of the test split's query objects: never shown here
    objects: list[CatalogueObject]  # training objects (``Instance.query`` indexes them): spare entries, crops
    db: list[Scene]

    def object_of(self, q: int) -> CatalogueObject:
        """The patch painted for ``Instance.query == q``."""
        return self.objects[q]

    def gnd(self) -> dict:
        """The canonical ground truth of a training-only dataset: its images, and no queries."""
        return {"imlist": [s.name for s in self.db], "qimlist": [], "gnd": []}


def _check_train_params(seed, n_images, width, height, quality, test, param: str = _TRAIN_PARAM) -> tuple[int, int]:
    """Check the training split's options; return the test split's ``(seed, n_objects)``, defaults filled.

    Messages name the parameter as params.yaml does (``param`` + key: ``data.synth_train.<key>``).
    """
    p = param
    if test is None:
        test = {}
    if not isinstance(test, Mapping):
        raise ValueError(f"{p}test must be a mapping {{seed, n_objects}} (the test split's parameters), "
                         f"got {test!r}")
    unknown = sorted(set(test) - set(TEST_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(p + 'test.' + str(k) for k in unknown)} "
                         f"(known: {', '.join(TEST_DEFAULTS)})")
    test = {**TEST_DEFAULTS, **test}
    _check_ints(p, {"seed": seed, "n_images": n_images, "width": width, "height": height, "quality": quality})
    _check_ints(p + "test.", test)
    _check_seed(p, seed)
    if n_images < 1:
        raise ValueError(f"{p}n_images must be >= 1, got {n_images}")
    _check_seed(p + "test.", test["seed"])
    _check_n_objects(p + "test.", test["n_objects"])
    _check_image(p, width, height, quality)
    return int(test["seed"]), int(test["n_objects"])


def plan_synth_train(*, seed: int = 1, n_images: int = 240, width: int = 512, height: int = 384,
                     test: Mapping[str, int] | None = None, quality: int = 90, param: str = _TRAIN_PARAM) -> TrainPlan:
    """Draw the training split's geometry from ``seed`` (no pixels yet).

    ``test`` (``seed``, ``n_objects``; default :data:`TEST_DEFAULTS`) names the
    test split whose query objects must stay out. The training objects are the
    catalogue entries it leaves unpicked plus, up to as many objects as the
    test split has, photo crops that touch none of its objects' boxes; they are
    spread over the scenes exactly as synth's database spreads its objects
    (:func:`_plan_db`). The random streams differ from synth's (7003 here, 7001
    there; renderer stream 2), so equal seeds do not give equal draws.

    ``quality`` (the JPEG quality the scenes will be coded at) is only checked here;
    ``param`` is how error messages name the options (``data.synth_train.`` for the data
    stage, ``data.<set>.`` for a generated distractor set).
    """
    test_seed, test_n_objects = _check_train_params(seed, n_images, width, height, quality, test, param)
    picked = picked_objects(test_seed, test_n_objects)
    forbidden = _forbidden_boxes(picked)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7003]))
    objects = [CATALOGUE[i] for i in range(len(CATALOGUE)) if i not in set(picked)]
    for k in range(max(0, test_n_objects - len(objects))):
        aspect = math.exp(rng.uniform(-0.7, 0.7))
        source, box = _crop_box(rng, aspect, forbidden, min_side=_TRAIN_CROP_MIN_SIDE)
        objects.append(CatalogueObject(f"crop_{k:02d}", source, box))
    sizes = [_box_size(obj.box) for obj in objects]
    n_empty = int(round(n_images * _TRAIN_EMPTY_SHARE))
    db = _plan_db(rng, n_images, n_empty, sizes, width, height, "train", 2)
    return TrainPlan(int(seed), width, height, picked, objects, db)


def make_synth_train(out_dir: str | os.PathLike, *, seed: int = 1, n_images: int = 240, width: int = 512,
                     height: int = 384, quality: int = 92, test: Mapping[str, int] | None = None,
                     **unknown: object) -> dict:
    """Write the training split ``synth_train`` to ``out_dir`` (``images/`` + ``gnd.json``); return its gnd.

    ``n_images`` database scenes ``train_NNNN.jpg`` made like synth's database
    (see :func:`plan_synth_train`) and no queries: ``qimlist`` and ``gnd`` are
    empty, since the split exists to learn the whitening away from the test
    set. Written atomically, byte-identical for equal options, like
    :func:`make_synth`. The data stage passes params.yaml's ``data.synth_train``
    block as keywords, so ``unknown`` ones are refused naming
    ``data.synth_train.<key>``, as every other bad option is.
    """
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(_TRAIN_PARAM + k for k in sorted(unknown))} "
                         f"(known: {', '.join(TRAIN_OPTIONS)})")
    test_seed, test_n_objects = _check_train_params(seed, n_images, width, height, quality, test)
    out_dir = Path(out_dir)
    log.info("synth_train: seed=%d, %d images, %dx%d, away from the objects of synth seed=%d n_objects=%d -> %s",
             seed, n_images, width, height, test_seed, test_n_objects, out_dir)
    with _cv2_single_thread():
        plan = plan_synth_train(seed=seed, n_images=n_images, width=width, height=height,
                                test={"seed": test_seed, "n_objects": test_n_objects})
        spare = [obj.label for obj in plan.objects if obj in CATALOGUE]
        log.info("synth_train: objects %s and %d photo crops", ", ".join(spare), len(plan.objects) - len(spare))
        gnd = plan.gnd()
        _write_dataset(out_dir, plan, plan.db, gnd, quality, "synth_train", need_queries=False)
    log.info("synth_train: wrote %d images", len(gnd["imlist"]))
    return gnd
