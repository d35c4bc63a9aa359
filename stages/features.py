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
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
from tqdm import tqdm

from rdfa.io import map_compression
from rdfa.io.backbones import build_backbone, stored_feature_maps
from rdfa.io.describe import feature_config
from rdfa.io.gnd import NO_QUERIES, load_gnd
from rdfa.io.images import SizePolicy, load_rgb, prepare_input
from rdfa.io.keys import entries, link
from rdfa.io.params import batch_size, runtime
from rdfa.io.stage import run_stage

log = logging.getLogger("rdfa.features")


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def entry_record(file_hash: str, box, policy: dict) -> str:
    """What an entry is computed from, as one string (compared on resume)."""
    return json.dumps({"sha256": file_hash, "box": None if box is None else list(box), "size": policy},
                      sort_keys=True)


def prefetched(jobs: list, load, ahead: int, threads: int):
    """``load(job)`` for every job, in order, computed ``ahead`` jobs in advance by a thread pool.

    Decoding and resizing (OpenCV, which releases the GIL) overlap the network's forward
    pass; the bound keeps at most ``ahead`` decoded images in memory.
    """
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.submit(load, job))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def same_size_batches(items, size: int):
    """Consecutive runs of ``(entry, prepared)`` whose network inputs have one size, at most ``size`` long."""
    batch: list = []
    for item in items:
        if batch and (len(batch) == size or item[1].image.shape != batch[0][1].image.shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def main(dataset: str, params: dict, paths) -> None:
    conf = feature_config(params, dataset)
    policy = SizePolicy(**conf["size"])
    rt = runtime(params)
    import torch

    torch.set_num_threads(rt["threads"] or os.cpu_count() or 1)
    gnd = load_gnd(paths.data, check_files=True, need_queries=False)
    if not gnd["qimlist"]:
        log.info("%s: %s: the database images only", dataset, NO_QUERIES)
    todo = entries(gnd)
    log.info("dataset %s: %d database images, %d queries (%d entries, %d stored as links); config %s",
             dataset, len(gnd["imlist"]), len(gnd["qimlist"]), len(todo),
             sum(e.same_as is not None for e in todo), json.dumps(conf))
    backbone = build_backbone(conf["backbone"], conf["weights"], rt["device"], conf["precision"])
    batch = batch_size(rt, backbone.device)
    log.info("backbone %s on %s in %s (K=%d, stride %d), up to %d images of one size per forward",
             backbone.name, backbone.device, conf["precision"], backbone.channels, backbone.stride, batch)

    # The whole-file digest covers the network; each entry's record covers its input.
    digest = hashlib.sha256(json.dumps({k: conf[k] for k in ("backbone", "weights", "dtype", "precision")},
                                       sort_keys=True).encode()).hexdigest()
    partial = paths.features.with_name(paths.features.name + ".partial")
    paths.features.parent.mkdir(parents=True, exist_ok=True)
    if partial.exists():
        try:
            with h5py.File(partial, "r") as f:
                stale = f.attrs.get("config") != digest
        except OSError:
            stale = True  # a partial file cut mid-write: start over
        if stale:
            log.info("discarding %s: made with another network configuration or unreadable", partial)
            partial.unlink()
    policy_dict = policy.as_dict()
    hashes: dict[str, str] = {}

    def load(entry):
        source = paths.images / entry.name
        return entry, prepare_input(load_rgb(source), policy, backbone.stride, str(source), entry.box)

    enlarged = 0
    compression = map_compression()
    with h5py.File(partial, "a") as f:
        f.attrs["config"] = digest
        f.attrs["backbone"] = backbone.name
        f.attrs["precision"] = conf["precision"]
        f.attrs["batch_size"] = batch  # a runtime setting (not in the digest): for the record
        f.attrs["stride"] = backbone.stride
        f.attrs["size_policy"] = json.dumps(policy_dict)
        kept = redone = 0
        work, links, records = [], [], {}
        for entry in todo:
            if entry.same_as is not None:
                links.append(entry)
                continue
            if entry.name not in hashes:
                hashes[entry.name] = file_sha256(paths.images / entry.name)
            records[entry.key] = record = entry_record(hashes[entry.name], entry.box, policy_dict)
            existing = f.get(entry.key, getlink=True)
            if existing is not None:
                group = f.get(entry.key) if isinstance(existing, h5py.HardLink) else None
                if group is not None and group.attrs.get("record") == record:
                    kept += 1  # "record" is written last: the group is complete and current
                    continue
                redone += group is not None and "record" in group.attrs
                del f[entry.key]
            work.append(entry)
        if kept or redone:
            log.info("resumed: %d entries kept from %s, %d recomputed (their image, box or size policy changed)",
                     kept, partial, redone)
        threads = rt["workers"] or os.cpu_count() or 1
        inputs = prefetched(work, load, ahead=2 * batch + 2, threads=threads)
        with tqdm(total=len(work), desc=f"features {dataset}", unit="img") as progress:
            for group in same_size_batches(inputs, batch):
                images = np.stack([prepared.image for _, prepared in group])
                fmaps = stored_feature_maps(backbone, images, conf["dtype"], str(paths.images / group[0][0].name))
                for (entry, prepared), fmap in zip(group, fmaps):
                    enlarged += prepared.enlarged > 1
                    group = f.create_group(entry.key)
                    # 90 % of a map is ReLU zeros: Zstandard level 1 stores it in about a twelfth
                    # of the space and reads back twice as fast as gzip (rdfa.io.map_compression).
                    group.create_dataset("fmap", data=fmap, chunks=fmap.shape, **compression)
                    group.attrs["name"] = entry.name
                    group.attrs["input_hw"] = np.array(prepared.image.shape[:2], dtype=np.int64)
                    group.attrs["crop"] = np.array(prepared.crop, dtype=np.int64)
                    group.attrs["scale"] = np.array(prepared.scale, dtype=np.float64)
                    group.attrs["enlarged"] = float(prepared.enlarged)
                    group.attrs["record"] = records[entry.key]
                f.flush()
                progress.update(len(group))
        for entry in links:
            link(f, entry)
    if enlarged:
        log.warning("%d query crops were smaller than the stride at their image's scale and were enlarged", enlarged)
    os.replace(partial, paths.features)
    log.info("wrote %s", paths.features)


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0], outputs=lambda p: [p.features]))
