"""Distractor shards on disk: ``features/<dataset>+<set>/shards/``, written by the distractors stage.

``shard_NNNNN.h5`` holds a run of the set's images: ``desc`` ``(R, D)``
float16 whitened region rows, ``offsets`` (image ``i`` owns rows
``offsets[i]:offsets[i + 1]``), ``boxes`` ``(R, 4)`` ``[x1, y1, x2, y2]`` in
the image's pixels, ``names``, ``image_hw``, and as attributes the digest of
everything it was computed from (``config``), its first image (``first``) and
``complete`` (written last); and per method of Table 1 the distractor pass keeps
(``methods.distractor_methods``, O2_R's rows being ``desc``), a group ``methods/<name>``
(:func:`rdfa.io.method_vectors.group_name`) with ``offsets`` and its whitened vectors under
:func:`rdfa.methods.table1.storage_keys`' names (``D<d>``, or ``plain``), float16. ``index.json``
lists the shards with their image and region counts, the digest, D and the methods kept.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np


def config_digest(record: dict) -> str:
    """The digest of what the shards are computed from (compared on resume and by the ranking stage)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def shard_file(folder: Path, index: int) -> Path:
    return folder / f"shard_{index:05d}.h5"


def shard_is_current(path: Path, digest: str, names: list[str]) -> bool:
    """A shard left by an earlier run is kept only when computed from the same everything and images."""
    try:
        with h5py.File(path, "r") as f:
            return (f.attrs.get("config") == digest and f.attrs.get("complete", False)
                    and [n.decode() if isinstance(n, bytes) else n for n in f["names"][()]] == names)
    except (OSError, KeyError):
        return False


def shard_regions(path: Path) -> int:
    """The number of region rows of a shard."""
    with h5py.File(path, "r") as f:
        return len(f["desc"])


def write_shard(path: Path, digest: str, first: int, names: list[str], described: list) -> int:
    """One shard of ``described`` images (``(rows, boxes, image_hw, methods)`` each, ``methods``
    ``{name: {storage key: vectors}}``), written to a temporary name and renamed; returns its number of
    regions."""
    from .method_vectors import group_name

    rows = np.concatenate([d[0] for d in described])
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("desc", data=rows)
        f.create_dataset("offsets", data=np.cumsum([0] + [len(d[0]) for d in described]))
        f.create_dataset("boxes", data=np.concatenate([d[1] for d in described]))
        f.create_dataset("names", data=np.array(names, dtype=h5py.string_dtype()))
        f.create_dataset("image_hw", data=np.array([d[2] for d in described], dtype=np.int32))
        for name in described[0][3] if described else {}:
            per_image = [d[3][name] for d in described]
            if not per_image[0]:
                continue  # no D of methods.D learnable: nothing to store (its cells say why)
            g = f.create_group(f"methods/{group_name(name)}")
            g.create_dataset("offsets", data=np.cumsum([0] + [len(next(iter(v.values()))) for v in per_image]))
            for key in per_image[0]:
                g.create_dataset(key, data=np.concatenate([v[key] for v in per_image]).astype(np.float16))
        f.attrs["config"] = digest
        f.attrs["first"] = first
        f.attrs["complete"] = True  # written last
    os.replace(tmp, path)
    return len(rows)


def read_shards(index_path: Path) -> tuple[list, dict]:
    """The shards of ``index.json`` as ``(path, None, offsets)`` (what :class:`rdfa.io.collection.Collection`
    takes), and the index; refused when a shard was computed with other settings than the index says."""
    if not index_path.is_file():
        raise ValueError(f"{index_path} not found: run the distractors stage first (`dvc repro`)")
    index = json.loads(index_path.read_text())
    shards = []
    for shard in index["shards"]:
        path = index_path.parent / shard["file"]
        with h5py.File(path, "r") as f:
            if f.attrs.get("config") != index["config"]:
                raise ValueError(f"{path}: computed with other settings than {index_path}; re-run the distractors "
                                 "stage")
            shards.append((path, None, f["offsets"][()]))
    return shards, index


def method_blocks(index_path: Path, index: dict, name: str) -> list:
    """The shards' blocks of method ``name``, as :func:`read_shards` gives O2_R's (with the dataset of its
    group: ``(path, None, offsets)``), for :class:`rdfa.io.collection.Collection` with ``dataset`` =
    ``methods/<group>/<key>``."""
    from .method_vectors import group_name

    blocks = []
    for shard in index["shards"]:
        path = index_path.parent / shard["file"]
        with h5py.File(path, "r") as f:
            group = f"methods/{group_name(name)}"
            if group not in f:
                raise ValueError(f"{path}: no vectors of method {name!r}; re-run the distractors stage")
            blocks.append((path, None, f[f"{group}/offsets"][()]))
    return blocks
