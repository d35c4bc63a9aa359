"""Reading ``params.yaml`` and checking the parameters a stage uses."""
from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from ..settings import ParamError  # noqa: F401  (defined with the typed settings)


def load_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path}: parameter file not found")
    with open(path) as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ParamError(f"{path}: expected a mapping at the top level")
    return params


def _raw(params):
    """The parsed file behind a :class:`rdfa.settings.Settings` (stages not yet reading typed settings)."""
    return params if isinstance(params, dict) else params.params


def get(params: dict, key: str, default=...):
    """``params['a']['b']`` for ``key='a.b'``; missing keys raise ``ParamError`` unless ``default`` is given."""
    node = _raw(params)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not ...:
                return default
            raise ParamError(f"params.yaml: missing parameter '{key}'")
        node = node[part]
    return node


def get_int(params: dict, key: str, minimum: int | None = None, default=...) -> int:
    value = get(params, key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(f"params.yaml: '{key}' must be an integer (got {value!r})")
    if minimum is not None and value < minimum:
        raise ParamError(f"params.yaml: '{key}' must be >= {minimum} (got {value})")
    return value


def get_float(params: dict, key: str, positive: bool = False, default=...) -> float:
    value = get(params, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError(f"params.yaml: '{key}' must be a number (got {value!r})")
    if positive and not value > 0:
        raise ParamError(f"params.yaml: '{key}' must be > 0 (got {value})")
    return float(value)


#: The ``runtime:`` group: settings that must not change results (no stage declares them in
#: dvc.yaml, so changing one re-runs nothing), with their defaults.
RUNTIME_DEFAULTS = {"device": "auto", "threads": 0, "blas_threads": 0, "workers": 0, "batch_size": 0,
                    "chunk_rows": 16384, "shard_images": 2000, "executor": "local", "ray_address": None}
#: ``runtime.executor``: where the per-image stages run their jobs (:func:`rdfa.io.stage.worker_map`).
EXECUTORS = ("local", "ray")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def runtime(params: dict) -> dict:
    """The checked ``runtime:`` group, defaults filled in.

    ``device``, ``threads`` (torch CPU threads), ``blas_threads``, ``workers``
    (processes of the per-image CPU stages, 0 = all cores), ``batch_size``
    (images per network forward, images of one size only; 0 = 1 on a CPU,
    16 on a GPU: see :func:`batch_size`), ``chunk_rows``
    (rows per block of the chunked matrix products of whitening and search), ``shard_images``
    (distractor images per shard file: the unit of resumption),
    ``executor`` (``local``: this machine's processes; ``ray``: actors on a Ray
    cluster) and ``ray_address`` (the cluster to connect to: ``ray://<head>:10001``,
    ``auto``, or null for a Ray started on this machine).
    """
    group = _raw(params).get("runtime", {}) or {}
    if not isinstance(group, dict):
        raise ParamError(f"params.yaml: 'runtime' must be a mapping (got {group!r})")
    unknown = sorted(set(group) - set(RUNTIME_DEFAULTS))
    if unknown:
        raise ParamError(f"params.yaml: unknown key(s) in 'runtime': {', '.join(unknown)} "
                         f"(known: {', '.join(RUNTIME_DEFAULTS)})")
    out = dict(RUNTIME_DEFAULTS, **group)
    device = out["device"]
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ParamError(f"params.yaml: 'runtime.device' must be auto, cpu, cuda, cuda:N or mps (got {device!r})")
    for key in ("threads", "blas_threads", "workers", "batch_size"):
        get_int({"runtime": out}, f"runtime.{key}", 0)
    get_int({"runtime": out}, "runtime.chunk_rows", 1)
    get_int({"runtime": out}, "runtime.shard_images", 1)
    if out["executor"] not in EXECUTORS:
        raise ParamError(f"params.yaml: 'runtime.executor' must be {' or '.join(EXECUTORS)} "
                         f"(got {out['executor']!r})")
    address = out["ray_address"]
    if address is not None and (not isinstance(address, str) or not address.strip() or " " in address.strip()):
        raise ParamError("params.yaml: 'runtime.ray_address' must be a Ray cluster address (ray://<head>:10001, "
                         f"<head>:6379 or auto) or null for a Ray started on this machine (got {address!r})")
    return out


def executor_options(params: dict) -> dict:
    """The keyword arguments of :func:`rdfa.io.stage.worker_map` that ``runtime:`` decides:
    ``worker_map(workers, initializer, initargs, **executor_options(params))``."""
    rt = runtime(params)
    return {"executor": rt["executor"], "ray_address": rt["ray_address"]}


def worker_count(params: dict) -> int:
    """``runtime.workers``, its 0 made concrete for the local executor: this machine's cores.

    With ``runtime.executor: ray`` a 0 stays 0, which :func:`rdfa.io.stage.worker_map` reads as
    one actor per CPU of the cluster.
    """
    rt = runtime(params)
    if rt["workers"] or rt["executor"] == "ray":
        return rt["workers"]
    return os.cpu_count() or 1


def get_bool(params: dict, key: str, default=...) -> bool:
    """A true/false parameter. Strings such as ``"no"`` are refused rather than
    taken as true (``bool("no")`` is True), so a typo cannot flip a setting."""
    value = get(params, key, default)
    if not isinstance(value, bool):
        raise ParamError(f"params.yaml: '{key}' must be true or false (got {value!r})")
    return value


def batch_size(runtime_group: dict, device: str) -> int:
    """Images per network forward: ``runtime.batch_size``, or for 0 the measured best of the device.

    On this project's CPU (2 cores, oneDNN, 512x512 inputs) batches were slower than one image at a time
    (EfficientNet-Lite0 bf16: 35 ms per image alone, 57 ms in batches of 8: ``bench/forward.py``); GPUs
    need batches to be kept busy.
    """
    size = runtime_group["batch_size"]
    if size:
        return size
    return 1 if device == "cpu" else 16


def whitening_setting(params: dict):
    """The :class:`rdfa.whitening.Whitening` of ``whitening.mode``, ``whitening.shrink``, ``whitening.power``.

    Defaults: the paper's PCA-whitening (``mode: pca``), ``shrink: 1.0``, ``power: 0.5``. The
    values are checked by ``Whitening`` itself, whose message names the key.
    """
    from rdfa.whitening import Whitening

    try:
        return Whitening(get(params, "whitening.mode", "pca"), get_float(params, "whitening.shrink", default=1.0),
                         get_float(params, "whitening.power", default=0.5))
    except ValueError as err:
        raise ParamError(f"params.yaml: {err}") from None


def training_dataset(params: dict, dataset: str) -> str:
    """The dataset whose database ``dataset`` learns its whitening (and K -> K' basis) on.

    ``whitening.train_on`` maps dataset -> dataset; a dataset missing from the
    map learns on itself. The training set must be listed in ``datasets``
    (so that the pipeline computes its descriptors) and learn on itself.
    """
    mapping = get(params, "whitening.train_on", {}) or {}
    if not isinstance(mapping, dict):
        raise ParamError(f"params.yaml: 'whitening.train_on' must map dataset -> dataset (got {mapping!r})")
    source = mapping.get(dataset, dataset)
    if source is None:
        source = dataset
    if not isinstance(source, str) or not source:
        raise ParamError(f"params.yaml: 'whitening.train_on.{dataset}' must be a dataset name (got {source!r})")
    if source == dataset:
        return dataset
    listed = get(params, "datasets", []) or []
    if source not in listed:
        raise ParamError(f"params.yaml: 'whitening.train_on.{dataset}' is {source!r}, which is not in 'datasets' "
                         f"({', '.join(map(str, listed)) or 'empty'}): add it there so that its descriptors exist")
    onward = mapping.get(source, source)
    if onward not in (None, source):
        raise ParamError(f"params.yaml: 'whitening.train_on.{dataset}' is {source!r}, which itself learns on "
                         f"{onward!r}: a training set must learn on itself")
    return source
