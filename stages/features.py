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
import hashlib
import json
import logging
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
from rdfa.io.stage import ray_gpus, run_stage, worker_map

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


def load_input(images, policy: SizePolicy, stride: int, entry):
    """``(entry, prepared network input)`` of one entry, its image read from the folder ``images``."""
    source = images / entry.name
    return entry, prepare_input(load_rgb(source), policy, stride, str(source), entry.box)


def input_attrs(prepared) -> dict:
    """The attributes of a stored map that say what its network input was."""
    return {"input_hw": np.array(prepared.image.shape[:2], dtype=np.int64),
            "crop": np.array(prepared.crop, dtype=np.int64),
            "scale": np.array(prepared.scale, dtype=np.float64),
            "enlarged": float(prepared.enlarged)}


def computed_maps(backbone, items, dtype: str, images, batch: int):
    """``(entry, input_attrs, stored map)`` of every ``(entry, prepared)`` of ``items``, in order, with up
    to ``batch`` consecutive inputs of one size per forward."""
    for group in same_size_batches(items, batch):
        stacked = np.stack([prepared.image for _, prepared in group])
        fmaps = stored_feature_maps(backbone, stacked, dtype, str(images / group[0][0].name))
        for (entry, prepared), fmap in zip(group, fmaps):
            yield entry, input_attrs(prepared), fmap


class _Network:
    """Per-actor state of the Ray executor: the backbone, built once per actor, and the settings."""

    backbone = None
    settings: tuple = ()

    @classmethod
    def start(cls, conf: dict, images, device: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        cls.backbone = build_backbone(conf["backbone"], conf["weights"], device, conf["precision"])
        cls.settings = (SizePolicy(**conf["size"]), conf["dtype"], images)

    @classmethod
    def maps(cls, job: list) -> tuple[dict, list]:
        """What the backbone is, and ``(input_attrs, stored map)`` of each entry of ``job``, in order (one
        forward per run of same-size inputs)."""
        policy, dtype, images = cls.settings
        backbone = cls.backbone
        items = [load_input(images, policy, backbone.stride, entry) for entry in job]
        done = [(attrs, fmap) for _, attrs, fmap in computed_maps(backbone, items, dtype, images, len(job))]
        return {"name": backbone.name, "device": backbone.device, "channels": backbone.channels,
                "stride": backbone.stride}, done


def ray_maps(work: list, conf: dict, paths, rt: dict, num_gpus: int, batch: int, described: dict):
    """:func:`computed_maps` of the entries ``work`` computed by Ray actors (``runtime.executor: ray``), each
    with its own backbone on one GPU (``num_gpus``) or one CPU; ``described`` gets what the backbone is."""
    actor_conf = dict(conf, weights=str(Path(conf["weights"]).absolute()) if conf["weights"] else None)
    setup = (actor_conf, paths.images, "cuda" if num_gpus else "cpu", rt["threads"] or 1)
    jobs = [work[i:i + batch] for i in range(0, len(work), batch)]
    with worker_map(rt["workers"], _Network.start, setup, num_gpus=num_gpus,
                    executor="ray", ray_address=rt["ray_address"]) as run:
        for job, (info, done) in zip(jobs, run(_Network.maps, jobs, max(1, 4 // batch))):
            described.update(info)
            for entry, (attrs, fmap) in zip(job, done):
                yield entry, attrs, fmap


def describe_backbone(f: h5py.File, info: dict, precision: str, batch: int) -> None:
    """The file's ``backbone`` and ``stride`` attributes (``info``: from :meth:`_Network.maps`), logged."""
    f.attrs["backbone"] = info["name"]
    f.attrs["stride"] = info["stride"]
    log_backbone(info, precision, batch)


def log_backbone(info: dict, precision: str, batch: int) -> None:
    log.info("backbone %s on %s in %s (K=%d, stride %d), up to %d images of one size per forward",
             info["name"], info["device"], precision, info["channels"], info["stride"], batch)


def main(dataset: str, params: dict, paths) -> None:
    conf = feature_config(params, dataset)
    policy = SizePolicy(**conf["size"])
    rt = runtime(params)
    gnd = load_gnd(paths.data, check_files=True, need_queries=False)
    if not gnd["qimlist"]:
        log.info("%s: %s: the database images only", dataset, NO_QUERIES)
    todo = entries(gnd)
    log.info("dataset %s: %d database images, %d queries (%d entries, %d stored as links); config %s",
             dataset, len(gnd["imlist"]), len(gnd["qimlist"]), len(todo),
             sum(e.same_as is not None for e in todo), json.dumps(conf))
    backbone = described = None
    if rt["executor"] == "ray":
        # The network runs in Ray actors (one GPU each when the cluster has GPUs); this process writes the file.
        num_gpus = 1 if rt["device"] not in ("cpu", "mps") and ray_gpus(rt["ray_address"]) else 0
        batch = batch_size(rt, "cuda" if num_gpus else "cpu")
        described = {}
    else:
        import torch

        torch.set_num_threads(rt["threads"] or os.cpu_count() or 1)
        backbone = build_backbone(conf["backbone"], conf["weights"], rt["device"], conf["precision"])
        batch = batch_size(rt, backbone.device)

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
            log_backbone({"name": backbone.name, "device": backbone.device, "channels": backbone.channels,
                          "stride": backbone.stride}, conf["precision"], batch)
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
        if backbone is None:
            computed = ray_maps(work, conf, paths, rt, num_gpus, batch, described)
        else:
            load = functools.partial(load_input, paths.images, policy, backbone.stride)
            inputs = prefetched(work, load, ahead=2 * batch + 2, threads=rt["workers"] or os.cpu_count() or 1)
            computed = computed_maps(backbone, inputs, conf["dtype"], paths.images, batch)
        with tqdm(total=len(work), desc=f"features {dataset}", unit="img") as progress:
            for done, (entry, attrs, fmap) in enumerate(computed, 1):
                if described and "backbone" not in f.attrs:
                    describe_backbone(f, described, conf["precision"], batch)
                enlarged += attrs["enlarged"] > 1
                group = f.create_group(entry.key)
                # 90 % of a map is ReLU zeros: Zstandard level 1 stores it in about a twelfth
                # of the space and reads back twice as fast as gzip (rdfa.io.map_compression).
                group.create_dataset("fmap", data=fmap, chunks=fmap.shape, **compression)
                group.attrs["name"] = entry.name
                for key, value in attrs.items():
                    group.attrs[key] = value
                group.attrs["record"] = records[entry.key]
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
