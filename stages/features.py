#!/usr/bin/env python3
"""Stage `features`: CNN feature maps of every database image and query, into HDF5.

Keys follow ``rdfa.io.keys``: ``db/<name>``, ``query/<i>`` (cropped to its
box) and ``full/<i>`` (a boxed query uncropped); entries with the same input
are soft links to the first. Each holds ``fmap`` ``(h, w, K)`` and, as
attributes, the network input size ``input_hw``, the ``scale`` ``(sy, sx)`` from the original image, the ``crop``
box cut from the resized image, and the ``record`` it was computed from (the
image file's sha256, the box, the size policy). The size policy
(``features.size.<dataset>``) is applied to the whole image and a query's box
is cut at that scale, so queries keep the database's scale.

The file is built as ``features.h5.partial`` and renamed when complete; an
interrupted run resumes from the partial file, keeping only the entries whose
record still matches.

With ``runtime.executor: ray`` the network runs in Ray actors (one GPU each when
the cluster has GPUs, else one CPU), each building the backbone once; they send
back the stored maps and their input attributes, and this process writes the
same file, partial file and resume included.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys

import h5py
from tqdm import tqdm

from rdfa.io import map_compression
from rdfa.io.backbones import build_backbone, feature_config
from rdfa.io.feature_maps import (
    backbone_info,
    batch_size,
    computed_maps,
    discard_stale_partial,
    load_input,
    log_backbone,
    network_digest,
    pending_entries,
    prefetched,
    ray_maps,
    write_entry,
)
from rdfa.io.gnd import NO_QUERIES, load_gnd
from rdfa.io.images import SizePolicy
from rdfa.io.keys import entries, link
from rdfa.io.stage import ray_gpus, run_stage
from rdfa.settings import Settings

log = logging.getLogger("rdfa.features")


def main(dataset: str, settings: Settings, paths) -> None:
    conf = feature_config(settings, dataset)
    policy = SizePolicy(**conf["size"])
    rt = settings.runtime
    gnd = load_gnd(paths.data, check_files=True, need_queries=False)
    if not gnd["qimlist"]:
        log.info("%s: %s: the database images only", dataset, NO_QUERIES)
    todo = entries(gnd)
    log.info("dataset %s: %d database images, %d queries (%d entries, %d stored as links); config %s",
             dataset, len(gnd["imlist"]), len(gnd["qimlist"]), len(todo),
             sum(e.same_as is not None for e in todo), json.dumps(conf))
    backbone = described = None
    if rt.executor == "ray":
        # The network runs in Ray actors (one GPU each when the cluster has GPUs); this process writes the file.
        num_gpus = 1 if rt.device not in ("cpu", "mps") and ray_gpus(rt.ray_address) else 0
        batch = batch_size(rt.batch_size, "cuda" if num_gpus else "cpu")
        described = {}
    else:
        import torch

        torch.set_num_threads(rt.threads or os.cpu_count() or 1)
        backbone = build_backbone(conf["backbone"], conf["weights"], rt.device, conf["precision"])
        batch = batch_size(rt.batch_size, backbone.device)

    digest = network_digest(conf)
    partial = paths.features.with_name(paths.features.name + ".partial")
    paths.features.parent.mkdir(parents=True, exist_ok=True)
    discard_stale_partial(partial, digest)
    enlarged = 0
    compression = map_compression()
    with h5py.File(partial, "a") as f:
        # In this order, as before the Ray executor: the same bytes, so the same hash in dvc.lock.
        f.attrs["config"] = digest
        if backbone is not None:
            f.attrs["backbone"] = backbone.name
        f.attrs["precision"] = conf["precision"]
        f.attrs["batch_size"] = batch  # a runtime setting (not in the digest): for the record
        if backbone is not None:
            f.attrs["stride"] = backbone.stride
            log_backbone(backbone_info(backbone), conf["precision"], batch)
        f.attrs["size_policy"] = json.dumps(policy.as_dict())
        work, links, records = pending_entries(f, todo, paths.images, policy.as_dict())
        if backbone is None:
            computed = ray_maps(work, conf, paths.images, rt, num_gpus, batch, described)
        else:
            load = functools.partial(load_input, paths.images, policy, backbone.stride)
            inputs = prefetched(work, load, ahead=2 * batch + 2, threads=rt.workers or os.cpu_count() or 1)
            computed = computed_maps(backbone, inputs, conf["dtype"], paths.images, batch)
        with tqdm(total=len(work), desc=f"features {dataset}", unit="img") as progress:
            for done, (entry, attrs, fmap) in enumerate(computed, 1):
                if described and "backbone" not in f.attrs:
                    f.attrs["backbone"], f.attrs["stride"] = described["name"], described["stride"]
                    log_backbone(described, conf["precision"], batch)
                enlarged += attrs["enlarged"] > 1
                write_entry(f, entry, attrs, fmap, records[entry.key], compression)
                if done % batch == 0 or done == len(work):
                    f.flush()
                progress.update(1)
        for entry in links:
            link(f, entry)
    if enlarged:
        log.warning("%d query crops were smaller than the stride at their image's scale and were enlarged", enlarged)
    os.replace(partial, paths.features)
    log.info("wrote %s", paths.features)


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.features]))
