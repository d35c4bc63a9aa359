#!/usr/bin/env python3
"""Stage `distractors`: a distractor set's images to whitened region descriptors, in one pass, in shards.

For ``distractors: {<dataset>: <set>}``: every image of the set
(``rdfa.io.distractors``: R1M downloaded, a generated set, or a folder) goes
from decode to its whitened region descriptors in one call
(``rdfa.io.describe.describe_image``, the functions the per-image stages
run): the dataset's size policy and network, its salient points and
regions, eq. 5 with the dataset's K -> K' basis (``pca.h5``) and eq. 6 with
its fitted whitening (``whitened.h5``). Only what search needs is kept: the
D-dimensional region descriptors (float16) and each region's box; and the
vectors of Table 1's other methods (``methods.distractor_methods``), pooled
from the same map and regions by ``rdfa.methods``' functions and whitened
with the methods stage's fits (``method_fits.h5``), float16; nothing that
grows with the map size.

Writes ``features/<dataset>+<set>/shards/`` (``rdfa.io.shards``): ``shard_NNNNN.h5`` of
``runtime.shard_images`` images each (``desc`` ``(R, D)`` float16,
``offsets``, ``boxes`` ``(R, 4)`` ``[x1, y1, x2, y2]`` in the image's
pixels, ``names``, ``image_hw``, ``methods/<name>/``) and ``index.json`` (the
shards, their image and region counts, the methods kept, and the digest of
everything they were computed from). The folder is built as ``shards.partial/`` and renamed when complete;
an interrupted run keeps the shards whose digest still matches.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import h5py
from tqdm import tqdm

from rdfa.io.atomic import write_json
from rdfa.io.backbones import feature_config
from rdfa.io.collection_whitening import FILE as COLLECTION_FILE
from rdfa.io.collection_whitening import learn_on_collection
from rdfa.io.describe import DescribeConfig, Describer
from rdfa.io.distractors import DistractorSet, ShardDescriber, distractor_methods, resident_mb, stored_methods
from rdfa.io.images import SizePolicy
from rdfa.io.provenance import array_digest, check_training_source, load_whitening
from rdfa.io.shards import config_digest, shard_file, shard_is_current, shard_regions, write_shard
from rdfa.io.stage import placement, run_stage, worker_map
from rdfa.settings import Settings

log = logging.getLogger("rdfa.distractors")

#: Images per task of a worker process.
TASK_IMAGES = 8


def main(dataset: str, settings: Settings, paths) -> None:
    main_paths = paths.main
    options = settings.data_options(paths.set)
    source = settings.sources.get(paths.set)
    network = feature_config(settings, dataset)
    conf = DescribeConfig.from_settings(settings)
    rt = settings.runtime
    check_training_source(main_paths, dataset)
    for needed in (main_paths.pca, main_paths.whitened):
        if not needed.is_file():
            raise ValueError(f"{needed} not found: the distractors of '{dataset}' are described with its fitted "
                             f"basis and whitening (run the pipeline on '{dataset}' first: `dvc repro`)")
    with h5py.File(main_paths.pca, "r") as f:
        components = f["components"][()]
    whitening, mode = load_whitening(main_paths.whitened)
    with h5py.File(main_paths.whitened, "r") as f:
        dim = int(f.attrs["D"])
        transform = array_digest(f["transform/components"][()]) if "transform/components" in f else "none"
    images = DistractorSet(paths.set, source, options, Path(main_paths.data).parent.parent.absolute())
    describer = Describer(SizePolicy(**network["size"]), network["dtype"], components, whitening, mode, conf)
    per_image = {k: v for k, v in vars(conf).items() if k not in ("n_qe", "include_query")}  # search settings out
    partial = paths.shards.with_name(paths.shards.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    device, workers, num_gpus = placement(rt)
    fit, learned = settings.whitening.distractors.fit, None
    if fit == "collection":  # the whitening of the database plus a sample of the set, learned here
        first_pass = (network, describer, images.plan, getattr(images, "quality", 92), device)
        whitening, learned = learn_on_collection(settings, dataset, main_paths, images, first_pass, partial,
                                                 TASK_IMAGES, {"network": network, "describe": per_image,
                                                               "pca": array_digest(components)})
        describer = Describer(describer.policy, describer.dtype, components, whitening, mode, conf)
        transform = array_digest(whitening.components)
    methods, methods_record = distractor_methods(settings, main_paths, components)
    record = {"network": network, "describe": per_image, "pca": array_digest(components),
              "whitening": {"mode": mode.record(), "transform": transform, "fit": fit}, "images": images.record()}
    if methods is not None:  # (O2_R alone: the digest of the shards O2_R's path always wrote)
        record["methods"] = methods_record
    digest = config_digest(record)
    size = rt.shard_images
    n = len(images.names)
    starts = list(range(0, n, size))
    log.info("%s: %d distractor images for %s (%s source), %d shard(s) of up to %d images, D=%d, on %s, %s",
             paths.set, n, dataset, images.kind, len(starts), size, dim, device,
             f"{rt.executor} executor, {workers or 'one per CPU/GPU'} worker(s)")
    shards, kept = [], 0
    setup = (network, describer, images.plan, getattr(images, "quality", 92), device, methods,
             main_paths.root.absolute() / "plugins")
    with worker_map(workers, ShardDescriber.start, setup, num_gpus=num_gpus, **rt.executor_options()) as run, \
            tqdm(total=n, desc=f"distractors {paths.name}", unit="img") as progress:
        for index, first in enumerate(starts):
            names = images.names[first:first + size]
            path = shard_file(partial, index)
            if shard_is_current(path, digest, names):
                n_regions = shard_regions(path)
                kept += 1
                progress.update(len(names))
            else:
                started = time.perf_counter()
                jobs = list(images.jobs(first, first + len(names)))
                tasks = [jobs[i:i + TASK_IMAGES] for i in range(0, len(jobs), TASK_IMAGES)]
                described = []
                for part in run(ShardDescriber.describe, tasks, 1):
                    described.extend(part)
                    progress.update(len(part))
                n_regions = write_shard(path, digest, first, names, described)
                # Time and memory per shard: both should stay flat however many shards came before.
                seconds = time.perf_counter() - started
                mine = resident_mb([os.getpid()])
                workers_mb = resident_mb([p.pid for p in multiprocessing.active_children()])
                log.info("shard %d (images %d-%d): %.1f s, %.1f ms per image; resident memory: this process "
                         "%s MB, workers %s MB", index, first, first + len(names) - 1, seconds,
                         1000 * seconds / len(names), "/".join(f"{m:.0f}" for m in mine) or "-",
                         "/".join(f"{m:.0f}" for m in workers_mb) or "-")
            shards.append({"file": path.name, "first": first, "n_images": len(names), "n_regions": n_regions})
    if kept:
        log.info("resumed: %d shard(s) kept from %s", kept, partial)
    for stale in sorted(set(partial.glob("shard_*.h5")) - {partial / s["file"] for s in shards}):
        stale.unlink()
    if fit != "collection":
        (partial / COLLECTION_FILE).unlink(missing_ok=True)  # an earlier collection run's
    write_json(partial / "index.json", {
        "dataset": dataset, "set": paths.set, "config": digest, "D": dim, "dtype": "float16",
        "n_images": n, "n_regions": int(sum(s["n_regions"] for s in shards)), "shards": shards, "record": record,
        "whitening_fit": fit, "collection_fit": learned,
        "methods": {} if methods is None else stored_methods(methods)})
    if paths.shards.exists():
        shutil.rmtree(paths.shards)
    os.replace(partial, paths.shards)
    log.info("wrote %s: %d images, %d regions (%.2f per image)", paths.shards, n,
             sum(s["n_regions"] for s in shards), sum(s["n_regions"] for s in shards) / max(n, 1))


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.shards], distractors=True))
