"""A dataset's feature maps computed into ``features.h5``: inputs decoded ahead, same-size batches, the
network in this process or in Ray actors, and the partial file an interrupted run resumes from.

Each stored entry (``rdfa.io.keys``) is a group holding ``fmap`` ``(h, w, K)`` and, as attributes,
what its network input was (:func:`input_attrs`) and, written last, the ``record`` it was computed
from (:func:`entry_record`): an entry whose record still matches is kept on resume.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from .backbones import build_backbone, stored_feature_maps
from .download import sha256_file
from .images import SizePolicy, load_rgb, prepare_input
from .stage import worker_map

log = logging.getLogger("rdfa.features")


def batch_size(size: int, device: str) -> int:
    """Images per network forward: ``runtime.batch_size`` (``size``), or for 0 the measured best of the device.

    On this project's CPU (2 cores, oneDNN, 512x512 inputs) batches were slower than one image at a time
    (EfficientNet-Lite0 bf16: 35 ms per image alone, 57 ms in batches of 8: ``bench/forward.py``); GPUs
    need batches to be kept busy.
    """
    if size:
        return size
    return 1 if device == "cpu" else 16


def network_digest(conf: dict) -> str:
    """The whole file's digest: what the network is (each entry's record covers its input)."""
    return hashlib.sha256(json.dumps({k: conf[k] for k in ("backbone", "weights", "dtype", "precision")},
                                     sort_keys=True).encode()).hexdigest()


def entry_record(file_hash: str, box, policy: dict) -> str:
    """What an entry is computed from, as one string (compared on resume)."""
    return json.dumps({"sha256": file_hash, "box": None if box is None else list(box), "size": policy},
                      sort_keys=True)


def discard_stale_partial(partial: Path, digest: str) -> None:
    """Remove ``partial`` when it was made with another network configuration or is unreadable."""
    if not partial.exists():
        return
    try:
        with h5py.File(partial, "r") as f:
            stale = f.attrs.get("config") != digest
    except OSError:
        stale = True  # a partial file cut mid-write: start over
    if stale:
        log.info("discarding %s: made with another network configuration or unreadable", partial)
        partial.unlink()


def pending_entries(f: h5py.File, todo: list, images: Path, policy: dict) -> tuple[list, list, dict]:
    """What is left to compute in the open partial file ``f``: ``(work, links, records)``.

    ``work``: the entries to compute (those absent, incomplete or whose record changed are removed
    from ``f``); ``links``: the entries stored as links to another; ``records``: each computed
    entry's record by key.
    """
    hashes: dict[str, str] = {}
    kept = redone = 0
    work, links, records = [], [], {}
    for entry in todo:
        if entry.same_as is not None:
            links.append(entry)
            continue
        if entry.name not in hashes:
            hashes[entry.name] = sha256_file(images / entry.name)
        records[entry.key] = record = entry_record(hashes[entry.name], entry.box, policy)
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
                 kept, f.filename, redone)
    return work, links, records


def write_entry(f: h5py.File, entry, attrs: dict, fmap: np.ndarray, record: str, compression: dict) -> None:
    """One computed entry: its map, the attributes of its input, and its record last."""
    group = f.create_group(entry.key)
    # 90 % of a map is ReLU zeros: Zstandard level 1 stores it in about a twelfth
    # of the space and reads back twice as fast as gzip (rdfa.io.map_compression).
    group.create_dataset("fmap", data=fmap, chunks=fmap.shape, **compression)
    group.attrs["name"] = entry.name
    for key, value in attrs.items():
        group.attrs[key] = value
    group.attrs["record"] = record


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


def backbone_info(backbone) -> dict:
    """What the backbone is: name, device, channels, stride."""
    return {"name": backbone.name, "device": backbone.device, "channels": backbone.channels,
            "stride": backbone.stride}


def log_backbone(info: dict, precision: str, batch: int) -> None:
    log.info("backbone %s on %s in %s (K=%d, stride %d), up to %d images of one size per forward",
             info["name"], info["device"], precision, info["channels"], info["stride"], batch)


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
        return backbone_info(backbone), done


def ray_maps(work: list, conf: dict, images: Path, rt, num_gpus: int, batch: int, described: dict):
    """:func:`computed_maps` of the entries ``work`` computed by Ray actors (``runtime.executor: ray``, ``rt``
    the runtime settings), each with its own backbone on one GPU (``num_gpus``) or one CPU; ``described``
    gets what the backbone is."""
    # a weight file's path made absolute for the actors (their directory differs); "random" is no file
    actor_conf = dict(conf, weights=str(Path(conf["weights"]).absolute())
                      if conf["weights"] not in (None, "random") else conf["weights"])
    setup = (actor_conf, images, "cuda" if num_gpus else "cpu", rt.threads or 1)
    jobs = [work[i:i + batch] for i in range(0, len(work), batch)]
    with worker_map(rt.workers, _Network.start, setup, num_gpus=num_gpus,
                    executor="ray", ray_address=rt.ray_address) as run:
        for job, (info, done) in zip(jobs, run(_Network.maps, jobs, max(1, 4 // batch))):
            described.update(info)
            for entry, (attrs, fmap) in zip(job, done):
                yield entry, attrs, fmap
