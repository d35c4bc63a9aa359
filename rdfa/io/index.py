"""A dataset's pipeline outputs as a searchable index, for ``rdfa search``.

:func:`load_index` reads, once, what describing and searching a new photo
needs: the network and size policy recorded in ``features.h5``, the K -> K'
basis of ``pca.h5``, the whitening transform and the whitened database
regions of ``whitened.h5``, and the parameters of the per-image stages.
:func:`search_photo` then runs, for one photo, the functions the stages run
for every image (``rdfa.io.describe.describe_image``, then
``rdfa.search.search_one``): nothing here re-implements a step.
:func:`check_up_to_date` asks DVC whether the outputs are current.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..regions import bounding_box
from ..search import rank, search_one
from ..settings import RuntimeSettings, Settings
from ..whitening import PCA, Whitening
from .describe import DescribeConfig, DescribeError, Describer, describe_image
from .gnd import load_gnd
from .hulls import RegionHulls
from .images import SizePolicy
from .provenance import check_training_source, load_whitening
from .stage import Paths, blas_threads


class SearchError(ValueError):
    """The dataset cannot be searched (not run, out of date, ...); the message says why and what to do."""


#: The stages whose outputs a search reads or depends on, in dvc.yaml's order.
SEARCH_STAGES = ("data", "features", "points", "regions", "pca", "descriptors", "whitening", "ranking")


def required_files(paths: Paths) -> list[Path]:
    """The files a search reads."""
    return [paths.gnd, paths.features, paths.regions, paths.pca, paths.whitened]


def check_outputs_exist(paths: Paths) -> None:
    """Refuse a dataset whose pipeline has not run (a missing output), naming the file."""
    missing = [p for p in required_files(paths) if not p.is_file()]
    if missing:
        raise SearchError(f"dataset '{paths.dataset}': {missing[0]} not found: the pipeline has not run on "
                          f"it (add it to params.yaml's datasets and run `dvc repro`)")


def check_up_to_date(root: Path, dataset: str, timeout: float = 300) -> None:
    """Refuse outputs that ``dvc status`` reports as out of date for ``dataset``'s search stages.

    A changed parameter, stage script or input since the last ``dvc repro``
    means the index would describe a photo with other settings than its
    database (or with stale files): the message lists what DVC saw.
    """
    targets = [f"{stage}@{dataset}" for stage in SEARCH_STAGES]
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    try:
        proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", *targets], cwd=root, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SearchError(f"`dvc status` did not answer within {timeout:.0f} s; pass --no-check to skip "
                          "the check") from None
    if proc.returncode != 0:
        from .dvclock import explain

        advice = explain(root, proc.stderr + proc.stdout)  # DVC's own advises removing its lock even while held
        if advice is not None:
            raise SearchError(f"`dvc status` cannot read dataset '{dataset}''s state now: {advice}")
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise SearchError(f"`dvc status {' '.join(targets)}` failed in {root}: "
                          f"{detail[-1] if detail else 'exit status ' + str(proc.returncode)} "
                          f"(is '{dataset}' in params.yaml's datasets? pass --no-check to skip the check)")
    try:
        changes = json.loads(proc.stdout.strip() or "{}")
    except json.JSONDecodeError:
        raise SearchError(f"`dvc status --json` printed something else than JSON: {proc.stdout[:200]!r}") from None
    if changes:
        raise SearchError(f"dataset '{dataset}': the pipeline's outputs are out of date (`dvc status`: "
                          f"{describe_changes(changes)}); run `dvc repro` first, or pass --no-check to "
                          "search the outputs as they are")


def describe_changes(changes: dict) -> str:
    """``dvc status --json``'s answer in one line, e.g.
    ``regions@synth: changed deps (params.yaml: regions modified; stages/regions.py modified)``."""

    def what(value) -> str:
        if isinstance(value, dict):
            return "; ".join(f"{key}: {what(v)}" if isinstance(v, dict) else f"{key} {v}" for key, v in value.items())
        return str(value)

    parts = []
    for stage, items in changes.items():
        kinds = []
        for item in items if isinstance(items, list) else [items]:
            if isinstance(item, dict):
                kinds += [f"{kind} ({what(files)})" for kind, files in item.items()]
            else:
                kinds.append(str(item))
        parts.append(f"{stage}: {', '.join(kinds)}")
    return "; ".join(parts)


@dataclass
class Index:
    """What searching a dataset with a new photo needs, loaded once (see :func:`load_index`)."""

    paths: Paths
    imlist: list[str]
    backbone_name: str
    precision: str  # features.precision the maps were computed in: a new photo's map is computed the same way
    weights: str | None
    policy: SizePolicy
    dtype: str
    components: np.ndarray  # (K, K') basis of eq. 4
    whitening: PCA | None  # eq. 6, as fitted by the whitening stage (None: whitening.mode none)
    whitening_mode: Whitening  # how its axes are scaled
    db: np.ndarray  # (R, D) whitened database regions
    offsets: np.ndarray  # image i owns rows offsets[i]:offsets[i+1]
    conf: DescribeConfig
    runtime: RuntimeSettings


def load_index(root: str | Path, dataset: str, settings: Settings) -> Index:
    """Read ``dataset``'s pipeline outputs under ``root``; ``SearchError`` naming a missing or old file."""
    paths = Paths(root, dataset)
    check_outputs_exist(paths)
    gnd = load_gnd(paths.data, need_queries=False)
    with h5py.File(paths.features, "r") as f:
        if "backbone" not in f.attrs or "size_policy" not in f.attrs:
            raise SearchError(f"{paths.features}: no backbone or size policy recorded; re-run `dvc repro`")
        backbone_name = str(f.attrs["backbone"])
        precision = str(f.attrs.get("precision", "fp32"))  # files before features.precision: fp32
        policy = SizePolicy(**json.loads(f.attrs["size_policy"]))
        first = f"db/{gnd['imlist'][0]}/fmap"
        if first not in f:
            raise SearchError(f"{paths.features}: no entry '{first}'; re-run `dvc repro`")
        dtype = str(f[first].dtype)
    with h5py.File(paths.pca, "r") as f:
        components = f["components"][()]
    try:
        check_training_source(paths, dataset)
        pca, setting = load_whitening(paths.whitened)
    except ValueError as err:
        raise SearchError(str(err)) from None
    with h5py.File(paths.whitened, "r") as f:
        db, offsets = f["db/desc"][()], f["db/offsets"][()]
    if len(offsets) - 1 != len(gnd["imlist"]):
        raise SearchError(f"{paths.whitened}: {len(offsets) - 1} images, but {paths.gnd} lists "
                          f"{len(gnd['imlist'])}; re-run `dvc repro`")
    recorded = settings.features.backbone
    if recorded != backbone_name:
        raise SearchError(f"{paths.features} was made with backbone {backbone_name}, params.yaml says "
                          f"{recorded}; run `dvc repro`")
    return Index(paths, list(gnd["imlist"]), backbone_name, precision, settings.features.weights,
                 policy, dtype, components, pca, setting, db, offsets, DescribeConfig.from_settings(settings),
                 settings.runtime)


@dataclass
class Result:
    rank: int
    name: str
    score: float
    region: list[float]  # [x1, y1, x2, y2] in the database image's pixels


@dataclass
class Answer:
    """One photo's search: its top results, the query's regions, and the seconds it took after loading."""

    results: list[Result]
    n_regions: int
    seconds: float
    polygons: list  # per result: the best-matched region in the database image's pixels


def describe_photo(index: Index, backbone, image: np.ndarray, name: str, box=None) -> np.ndarray:
    """The whitened region descriptors of a photo, ``(M, D)``, exactly as the pipeline describes a query
    (``rdfa.io.describe.describe_image``: with a box, R_M of the crop; without, all its candidate regions)."""
    describer = Describer(index.policy, index.dtype, index.components, index.whitening, index.whitening_mode,
                          index.conf)
    try:
        return describe_image(describer, backbone, image, name, box).rows
    except DescribeError as err:
        raise SearchError(str(err)) from None


def search_photo(index: Index, backbone, hulls: RegionHulls, image: np.ndarray, name: str, box=None,
                 top: int = 10, qe: bool = False) -> Answer:
    """Describe ``image`` and rank the database (eq. 7; with ``qe``, region QE, eq. 8, then eq. 7 again).

    ``seconds`` covers the photo's own work after loading: feature map,
    points, regions, descriptors, the search and its results' boxes (not
    the decoding).
    """
    start = time.perf_counter()
    # One BLAS thread for eq. 5's many small eigendecompositions, as the descriptors stage.
    with blas_threads(1):
        query = describe_photo(index, backbone, image, name, box)
    n_qe = index.conf.n_qe if qe else 0
    with blas_threads(index.runtime.blas_threads or None):
        sim, best, sim_qe, best_qe = search_one(query, index.db, index.offsets, n_qe, index.conf.include_query,
                                               index.runtime.chunk_rows)
    if qe:
        sim, best = sim_qe, best_qe
    results, polygons = [], []
    for r, i in enumerate(rank(sim)[:top], start=1):
        polygon, image_hw = hulls.polygon(index.imlist[i], int(best[i] - index.offsets[i]))
        region = [round(v, 1) for v in bounding_box(polygon, image_hw)]
        results.append(Result(r, index.imlist[i], round(float(sim[i]), 6), region))
        polygons.append(polygon)
    return Answer(results, len(query), time.perf_counter() - start, polygons)
