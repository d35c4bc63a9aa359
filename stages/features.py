#!/usr/bin/env python3
"""Stage `features`: CNN feature maps of every database image and query, into HDF5.

Database images go to ``db/<name>``, queries (cropped to their box, as in the
standard Oxford/Paris protocol) to ``query/<name>``; each holds ``fmap``
``(h, w, K)`` float16 and the network input size ``input_hw``. The file is
built as ``features.h5.partial`` and renamed when complete; an interrupted run
resumes from the partial file when its configuration is unchanged.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys

import h5py
import numpy as np
from tqdm import tqdm

from rdfa.io.backbones import build_backbone
from rdfa.io.gnd import load_gnd
from rdfa.io.images import load_rgb, prepare
from rdfa.io.params import get, get_int
from rdfa.io.stage import run_stage

log = logging.getLogger("rdfa.features")


def feature_config(params: dict) -> dict:
    """The parameters that decide what this stage computes (logged and hashed)."""
    max_side = get(params, "features.max_side", None)
    min_side = get(params, "features.min_side", None)
    for key, value in (("features.max_side", max_side), ("features.min_side", min_side)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"params.yaml: '{key}' must be a positive integer or null (got {value!r})")
    return {
        "backbone": get(params, "features.backbone"),
        "weights": get(params, "features.weights", None),
        "max_side": max_side,
        "min_side": min_side,
        "dtype": get(params, "features.dtype", "float16"),
    }


def jobs(gnd: dict) -> list[tuple[str, str, list | None]]:
    """(group key, image file, box) for every image the stage must process."""
    out = [(f"db/{name}", name, None) for name in gnd["imlist"]]
    out += [(f"query/{name}", name, entry.get("bbx")) for name, entry in zip(gnd["qimlist"], gnd["gnd"])]
    return out


def main(dataset: str, params: dict, paths) -> None:
    conf = feature_config(params)
    if conf["dtype"] not in ("float16", "float32"):
        raise ValueError(f"params.yaml: 'features.dtype' must be float16 or float32 (got {conf['dtype']!r})")
    torch_threads = get_int(params, "features.threads", 0, default=0) or os.cpu_count() or 1
    import torch

    torch.set_num_threads(torch_threads)
    gnd = load_gnd(paths.data, check_files=True)
    log.info("dataset %s: %d database images, %d queries; config %s",
             dataset, len(gnd["imlist"]), len(gnd["qimlist"]), json.dumps(conf))
    backbone = build_backbone(conf["backbone"], conf["weights"], get(params, "features.device", "auto"))
    log.info("backbone %s on %s (K=%d, stride %d)", backbone.name, backbone.device, backbone.channels, backbone.stride)

    digest = hashlib.sha256(json.dumps(conf, sort_keys=True).encode()).hexdigest()
    partial = paths.features.with_name(paths.features.name + ".partial")
    paths.features.parent.mkdir(parents=True, exist_ok=True)
    if partial.exists():
        try:
            with h5py.File(partial, "r") as f:
                stale = f.attrs.get("config") != digest
        except OSError:
            stale = True  # a partial file cut mid-write: start over
        if stale:
            log.info("discarding %s: made with another configuration or unreadable", partial)
            partial.unlink()
    todo = jobs(gnd)
    with h5py.File(partial, "a") as f:
        f.attrs["config"] = digest
        f.attrs["backbone"] = backbone.name
        f.attrs["stride"] = backbone.stride
        done = sum(1 for key, _, _ in todo if key in f and "input_hw" in f[key].attrs)
        if done:
            log.info("resuming: %d of %d images already extracted", done, len(todo))
        for key, name, box in tqdm(todo, desc=f"features {dataset}", unit="img"):
            if key in f:
                if "input_hw" in f[key].attrs:  # written last: the group is complete
                    continue
                del f[key]
            image = prepare(load_rgb(paths.images / name), conf["max_side"], conf["min_side"],
                            backbone.stride, str(paths.images / name), box)
            fmap = backbone.feature_map(image)
            if min(fmap.shape[:2]) < 1:
                raise ValueError(f"{paths.images / name}: empty feature map for a "
                                 f"{image.shape[1]}x{image.shape[0]} input")
            group = f.create_group(key)
            group.create_dataset("fmap", data=fmap.astype(conf["dtype"]))
            group.attrs["input_hw"] = np.array(image.shape[:2], dtype=np.int64)
            f.flush()
    os.replace(partial, paths.features)
    log.info("wrote %s", paths.features)


if __name__ == "__main__":
    sys.exit(run_stage(main, __doc__.splitlines()[0]))
