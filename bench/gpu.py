#!/usr/bin/env python3
"""GPU benchmark of the speed issue: backbone throughput, eq. 5 batched, exact search against 1M images.

One prepared script for the `device` tool's machine, which has torch and
numpy and nothing else of the project's requirements (no scipy, h5py, cv2,
torchvision, yaml, tqdm), no network, and this repository's tree. It imports
only torch, numpy, ``rdfa.io.backbones`` and ``rdfa.io.resnet`` (the project's
VGG19 and ResNet-101 definitions) and ``rdfa.torch_ops`` (eq. 5 and eq. 7 in
torch), plus ``rdfa.pooling`` / ``rdfa.search`` (numpy only) for the CPU
reference.

    python bench/gpu.py                   # the GPU machine: under 5 minutes on an H100 (--minutes 4.5)
    python bench/gpu.py --tiny            # CPU, tiny sizes, seconds: what CI runs (tests/test_bench_gpu.py)
    python bench/gpu.py --device cpu --cpu-threads 2 --minutes 20   # the full sizes on these 2 cores

It prints markdown tables, and writes them with all the numbers as JSON to
``--out``, else to ``$OUT/gpu.json`` when ``OUT`` is set (the device tool's
folder), with the tables beside it (``gpu.md``). Measured:

(a) Backbones: VGG19 (random weights, ``rdfa.io.backbones._vgg19_features`` up
    to the ReLU of conv5_4, as ``build_backbone``) at 1024x768 in fp32 with TF32
    off, fp32 with TF32 on (CUDA only; PyTorch's default is TF32 *on* for
    convolutions, off for matmuls: ``meta.tf32_defaults``), bf16 and fp16
    autocast, contiguous and channels_last, batches of 1, 8 and 32;
    EfficientNet-Lite0 (random weights) the same when ``efficientnet_lite_pytorch``
    imports (not installed there: copy its folder, 124 kB of pure torch, into
    ``bench/vendor/`` and it is found); ResNet-101 (random weights,
    ``rdfa.io.resnet`` up to ``layer4``: the map of ``features.backbone``
    resnet101 and resnet101_gem_sfm) the same, channels_last. The input is
    already on the device: bare forward, images per second, cuDNN autotuning
    on (``--no-cudnn-benchmark``).
(b) eq. 5: ``rdfa.torch_ops.second_order_torch`` on the device in float64 and
    float32, chunks of 4096 regions (16x16 grids, K' = 128, 8 regions per
    image), until all regions are done or a time cap; the NumPy path
    (``rdfa.pooling.second_order``, one image at a time as the descriptors
    stage does) on fewer regions, both as regions per second; the
    eigendecomposition alone; each with torch's eigensolver and, on CUDA
    where CuPy imports, CuPy's (``rdfa.torch_ops.batched_eigh``: torch 2.11
    decomposed batches of 128x128 one matrix at a time on an H200, 9x
    slower than CuPy); and the max abs difference from NumPy on the same
    regions (l2-normalised descriptors).
(d) The whole describe path per image at ``input_hw`` (issue 25 item 5), in images per second:
    the network (``--describe-model``, bf16, channels_last, batch ``--describe-batch``) on the
    device, its maps to the host in float16 (as the features stage stores them), eqs. 1, 2, 4, 5
    for 8 regions per image on the device (``rdfa.torch_ops.region_descriptors_torch``, float32)
    and eq. 6 (an 8256 x 512 product, host); on one CPU core the regions
    (``rdfa.regions.image_regions``: fast global k-means and hulls of ``--describe-points``
    random points, L = 3) and the salient points, whose time ``--points-ms`` is given: pyhesaff
    and OpenCV are not on the GPU machine (and its time depends on the photo), so it comes from
    ``bench/describe.py`` on real images (default: synth's quiet median at 512x384 times 4 for
    1024x768's pixels; docs/speed.md). End to end, with the CPU steps of different images in
    parallel on every core beside the device: the smaller of the device's rate and the cores'.
(c) Exact search (eq. 7): 70 one-row queries against 1,000,000 images x 8
    regions x D = 512 stored float16 on the device (8 GB), chunked, all
    queries at once, then the full ranking (stable sort); the CPU paths (the
    ranking stage's ``rdfa.search.image_similarities`` per query, and
    ``exact_search_torch`` on the CPU) on the first 20,000 images, scaled per
    image to 1M; the max abs difference of the similarities.

Each measurement that fails (out of memory, an unsupported dtype on a CPU)
is recorded with its error and the rest goes on; ``--minutes`` bounds the
whole run (the backbones get 55 % of it, eq. 5 the next 23 %, search the
rest; what does not fit is listed as skipped). Without CUDA it runs on the
CPU with the sizes given (the 1M index shrinks to fit half the free memory).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

# The GPU machine has this tree but no installed rdfa; and in a checkout whose environment has
# another checkout's rdfa installed, this tree's own code is the one to measure.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rdfa.io.backbones import _vgg19_features  # noqa: E402
from rdfa.io.resnet import resnet  # noqa: E402
from rdfa.torch_ops import batched_eigh, eigh_backend, exact_search_torch, region_weights, second_order_torch  # noqa: E402

#: Max abs difference from NumPy's eq. 5 that counts as agreement (l2-normalised descriptors;
#: float64 differs by rounding only, float32 by ~2e-5 at K' = 128: tests/test_torch_ops.py).
EQ5_TOLERANCE = {"float64": 1e-10, "float32": 1e-4}

FULL = {
    "input_hw": (768, 1024), "batches": (1, 8, 32), "seconds_per_config": 1.5, "warmup": 2, "min_iters": 3,
    "eq5_images": 4096, "eq5_grid": (16, 16), "k_prime": 128, "regions_per_image": 8, "eq5_chunk": 4096,
    "eq5_cpu_images": 40, "eq5_seconds": 15.0,
    "search_images": 1_000_000, "search_regions": 8, "dim": 512, "queries": 70, "search_cpu_images": 20_000,
    "search_cpu_queries": 10, "chunk_rows": 1 << 21, "describe_batches": 6,
}
TINY = {
    "input_hw": (32, 48), "batches": (2,), "seconds_per_config": 0.0, "warmup": 1, "min_iters": 1,
    "eq5_images": 12, "eq5_grid": (4, 5), "k_prime": 8, "regions_per_image": 4, "eq5_chunk": 16,
    "eq5_cpu_images": 4, "eq5_seconds": 2.0,
    "search_images": 3000, "search_regions": 4, "dim": 32, "queries": 5, "search_cpu_images": 1000,
    "search_cpu_queries": 3, "chunk_rows": 2048, "describe_batches": 1,
}
#: In the order measured: what the issue's goal needs first, should the budget run out.
PRECISIONS = ("bf16", "fp16", "fp32+tf32", "fp32")
LOG_EPS = 1e-2  # descriptors.log_eps's default


class Budget:
    """Wall-clock deadlines: the run stops starting new measurements at its section's share of --minutes."""

    def __init__(self, minutes: float):
        self.start = time.perf_counter()
        self.total = minutes * 60

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self, until_share: float) -> float:
        return self.total * until_share - self.elapsed()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]


def free_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30  # unknown: assume a modest machine


# --- (a) backbones --------------------------------------------------------------------------


@contextmanager
def precision(name: str, device: str):
    """fp32 with TF32 off or on (CUDA's conv and matmul flags, restored after), or bf16 / fp16 autocast."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = name == "fp32+tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        if name in ("bf16", "fp16"):
            dtype = torch.bfloat16 if name == "bf16" else torch.float16
            with torch.autocast(device_type=device.split(":")[0], dtype=dtype):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def vgg19_trunk():
    from torch import nn

    # Up to the ReLU after conv5_4 (index 35), exactly as rdfa.io.backbones.build_backbone cuts it.
    return nn.Sequential(*list(_vgg19_features().children())[:36])


def lite0_trunk(vendor: Path):
    """EfficientNet-Lite0's conv trunk with random weights, or None with the reason it is missing."""
    from torch import nn

    if vendor.is_dir() and str(vendor) not in sys.path:
        sys.path.append(str(vendor))  # a copied package folder, for a machine without it installed
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        return None, f"EfficientNet-Lite0 skipped: {error_text(err)} (copy the package folder into {vendor})"

    class Trunk(nn.Module):
        def __init__(self):
            super().__init__()
            # image_size=None: "same" padding computed per input, as rdfa.io.backbones builds it.
            self.net = EfficientNet.from_name("efficientnet-lite0", image_size=None)

        def forward(self, x):
            return self.net.extract_features(x)

    return Trunk(), None


def time_forward(model, x, device: str, seconds: float, warmup: int, min_iters: int) -> tuple[float, int]:
    """Seconds per forward pass of batch ``x`` (after warm-up), and the number of timed passes."""
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        sync(device)
        iters, start = 0, time.perf_counter()
        while True:
            model(x)
            iters += 1
            if iters >= min_iters:
                sync(device)
                if time.perf_counter() - start >= seconds:
                    break
        return (time.perf_counter() - start) / iters, iters


def bench_backbones(args, sizes, device: str, budget: Budget, notes: list) -> list[dict]:
    rows = []
    cuda = device.startswith("cuda")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    models = set(args.models.split(","))
    nets = [("vgg19", vgg19_trunk(), PRECISIONS, ("channels_last", "contiguous"))] if "vgg19" in models else []
    lite, why = lite0_trunk(Path(args.vendor)) if "efficientnet_lite0" in models else (None, None)
    if lite is None:
        if why:
            notes.append(why)
    else:
        # Not the paper's network: channels_last only, the layout the features stage uses.
        nets.append(("efficientnet_lite0", lite, PRECISIONS, ("channels_last",)))
    if "resnet101" in models:
        # ResNet-101's forward is its layer4 map (stride 32, 2048 channels), as build_backbone uses it.
        nets.append(("resnet101", resnet("resnet101"), PRECISIONS, ("channels_last",)))
    h, w = sizes["input_hw"]
    for name, model, precisions, formats in nets:
        model = model.eval().to(device)
        for fmt in formats:
            memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
            model = model.to(memory_format=memory_format)
            for prec in precisions:
                for batch in sizes["batches"]:
                    row = {"model": name, "input_hw": [h, w], "precision": prec, "tf32": prec == "fp32+tf32",
                           "memory_format": fmt, "batch": batch}
                    rows.append(row)
                    if prec == "fp32+tf32" and not cuda:
                        row["skipped"] = "TF32 is a CUDA setting"
                        continue
                    if budget.left(0.55) <= 0:
                        row["skipped"] = "time budget (--minutes)"
                        continue
                    try:
                        x = torch.randn(batch, 3, h, w, device=device).to(memory_format=memory_format)
                        if cuda:
                            torch.cuda.reset_peak_memory_stats(device)
                        with precision(prec, device):
                            per_pass, iters = time_forward(model, x, device, sizes["seconds_per_config"],
                                                           sizes["warmup"], sizes["min_iters"])
                        row.update(images_per_s=batch / per_pass, ms_per_image=1000 * per_pass / batch,
                                   timed_passes=iters)
                        if cuda:
                            row["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
                    except Exception as err:  # OOM, a dtype the CPU lacks...: recorded, the rest goes on
                        row["error"] = error_text(err)
                    finally:
                        x = None
                        if cuda:
                            torch.cuda.empty_cache()
        model.to("cpu")
    return rows


# --- (b) eq. 5 --------------------------------------------------------------------------------


def eq5_data(sizes, seed: int = 0):
    """A pool of random images (local descriptors, masks, alpha) that the batched runs cycle through."""
    rng = np.random.default_rng(seed)
    gh, gw = sizes["eq5_grid"]
    kp, m = sizes["k_prime"], sizes["regions_per_image"]
    pool = max(sizes["eq5_cpu_images"], 8)
    locals_ = rng.normal(size=(pool, gh, gw, kp)) + 0.3
    alphas = rng.uniform(size=(pool, gh, gw))
    masks = rng.uniform(size=(pool, m, gh, gw)) < 0.4
    masks[:, -1] = True  # R_M, the whole image
    weights = np.stack([region_weights(mk, a) for mk, a in zip(masks, alphas)])  # (pool, M, P)
    return locals_, alphas, masks, weights


def bench_eq5(sizes, device: str, budget: Budget, notes: list) -> dict:
    locals_, alphas, masks, weights = eq5_data(sizes)
    pool, m = len(locals_), sizes["regions_per_image"]
    kp = sizes["k_prime"]
    flat = locals_.reshape(pool, -1, kp)
    n_regions = sizes["eq5_images"] * m
    chunk = sizes["eq5_chunk"]
    rows, diffs = [], {}
    n_check = sizes["eq5_cpu_images"]
    check_owner = np.repeat(np.arange(n_check), m)
    check_weights = weights[:n_check].reshape(-1, flat.shape[1])

    reference = None
    try:
        from rdfa.pooling import second_order
    except ImportError as err:
        notes.append(f"eq. 5 NumPy path unavailable ({error_text(err)}): torch float64 on the CPU is the reference")
    else:
        start = time.perf_counter()
        reference = np.concatenate([second_order(locals_[i], masks[i], alphas[i], LOG_EPS) for i in range(n_check)])
        seconds = time.perf_counter() - start
        rows.append({"path": "numpy (rdfa.pooling, per image)", "device": "cpu", "dtype": "float64",
                     "regions": len(reference), "seconds": seconds, "regions_per_s": len(reference) / seconds})

    second_order_torch(flat[:1], check_weights[:m], LOG_EPS, owner=check_owner[:m], dtype=torch.float64)  # warm-up
    start = time.perf_counter()
    cpu_torch = second_order_torch(flat, check_weights, LOG_EPS, owner=check_owner, device="cpu",
                                   dtype=torch.float64, chunk=chunk).numpy()
    seconds = time.perf_counter() - start
    rows.append({"path": "torch batched (the NumPy regions)", "device": "cpu", "dtype": "float64",
                 "regions": len(cpu_torch),
                 "seconds": seconds, "regions_per_s": len(cpu_torch) / seconds})
    if reference is None:
        reference = cpu_torch
    else:
        diffs["cpu_torch_float64"] = float(np.abs(cpu_torch - reference).max())

    share = 0.78
    local_dev = None
    backends = ["torch"]
    if device.startswith("cuda") and eigh_backend(torch.zeros(1, device=device)) == "cupy":
        backends.insert(0, "cupy")  # rdfa.torch_ops.batched_eigh's default on CUDA
    for dtype_name in ("float64", "float32"):
        for backend in backends:
            dtype = getattr(torch, dtype_name)
            row = {"path": f"torch batched, {backend} eigh", "device": device, "dtype": dtype_name}
            rows.append(row)
            if budget.left(share) <= 0:
                row["skipped"] = "time budget (--minutes)"
                continue
            try:
                local_dev = torch.as_tensor(flat, device=device, dtype=dtype)
                w_dev = torch.as_tensor(weights.reshape(pool * m, -1), device=device, dtype=dtype)
                ours = second_order_torch(local_dev, w_dev[:len(check_owner)], LOG_EPS, owner=check_owner,
                                          device=device, dtype=dtype, chunk=chunk, eigh=backend)  # also the warm-up
                diffs[f"{device}_{backend}_{dtype_name}"] = float(np.abs(ours.double().cpu().numpy() - reference).max())
                # A second, warm run of the same regions estimates the rate, so that the timed run fits its
                # cap even where eigh is slow (one chunk of 4096 can take tens of seconds on some CUDA versions).
                start = time.perf_counter()
                second_order_torch(local_dev, w_dev[:len(check_owner)], LOG_EPS, owner=check_owner, device=device,
                                   dtype=dtype, chunk=chunk, eigh=backend)
                sync(device)
                per_region = (time.perf_counter() - start) / len(check_owner)
                cap = min(sizes["eq5_seconds"], max(budget.left(share), 0.0))
                n_timed = int(min(n_regions, max(len(check_owner), 0.8 * cap / max(per_region, 1e-9))))
                # Region b is region b % M of pool image (b // M) % pool: any number of regions from the pool.
                done = 0
                start = time.perf_counter()
                while done < n_timed:
                    stop = min(done + chunk, n_timed)
                    b = torch.arange(done, stop, device=device)
                    second_order_torch(local_dev, w_dev[b % (pool * m)], LOG_EPS, owner=(b // m) % pool,
                                       device=device, dtype=dtype, chunk=chunk, eigh=backend)
                    sync(device)
                    done = stop
                    if time.perf_counter() - start > cap:
                        break
                seconds = time.perf_counter() - start
                row.update(regions=done, seconds=seconds, regions_per_s=done / seconds)
                if done < n_regions:
                    row["note"] = f"{done} of {n_regions} regions, to fit {cap:.0f} s"
                # The eigendecomposition alone, on as many matrices as a chunk (at most as many as were timed).
                g = torch.as_tensor(np.einsum("mp,pi,pj->mij", check_weights[:m], flat[0], flat[0]),
                                    device=device, dtype=dtype) + torch.eye(kp, device=device, dtype=dtype)
                n_eigh = min(chunk, done)
                g = g.repeat((n_eigh + len(g) - 1) // len(g), 1, 1)[:n_eigh]
                batched_eigh(g[:2], backend)
                sync(device)
                start = time.perf_counter()
                batched_eigh(g, backend)
                sync(device)
                seconds = time.perf_counter() - start
                rows.append({"path": f"{backend} eigh alone", "device": device, "dtype": dtype_name,
                             "regions": len(g), "seconds": seconds, "regions_per_s": len(g) / seconds})
            except Exception as err:
                row["error"] = error_text(err)
            finally:
                local_dev = w_dev = g = None
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
    numpy_rate = rows[0]["regions_per_s"] if rows[0]["path"].startswith("numpy") else None
    for row in rows:
        if numpy_rate and "regions_per_s" in row:
            row["vs_numpy"] = row["regions_per_s"] / numpy_rate
    agree = {k: v <= EQ5_TOLERANCE["float32" if k.endswith("float32") else "float64"] for k, v in diffs.items()}
    return {"rows": rows, "max_abs_diff": diffs, "tolerance": EQ5_TOLERANCE, "within_tolerance": agree,
            "reference": "numpy" if numpy_rate else "torch cpu float64",
            "shape": {"grid": list(sizes["eq5_grid"]), "k_prime": kp, "regions_per_image": m,
                      "log_eps": LOG_EPS, "chunk": chunk}}


# --- (d) the describe path ------------------------------------------------------------------


def describe_trunk(name: str, vendor: Path):
    """The network of section (d) and its stride."""
    if name == "vgg19":
        return vgg19_trunk(), 16
    if name == "resnet101":
        return resnet("resnet101"), 32
    model, why = lite0_trunk(vendor)
    if model is None:
        raise RuntimeError(why)
    return model, 32


def region_masks(grid_hw: tuple[int, int], n: int = 8) -> np.ndarray:
    """``n`` boolean region masks on the grid (bands of growing width, the whole grid last): the
    shape of eq. 5's work, whatever the regions are."""
    h, w = grid_hw
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n - 1):
        masks[i, :, : max(1, (i + 1) * w // n)] = True
    masks[-1] = True
    return masks


def bench_describe(args, sizes, device: str, budget: Budget, notes: list) -> dict:
    """Section (d): the describe path per image (module text)."""
    from rdfa.regions import image_regions
    from rdfa.torch_ops import region_descriptors_torch

    h, w = sizes["input_hw"]
    batch, kp = (2 if args.tiny else args.describe_batch), sizes["k_prime"]
    n_points = min(args.describe_points, 300) if args.tiny else args.describe_points
    out = {"model": args.describe_model, "input_hw": [h, w], "batch": batch, "points": n_points,
           "points_ms_given": args.points_ms, "cores": os.cpu_count(), "rows": []}
    rng = np.random.default_rng(0)
    x = None
    try:
        model, stride = describe_trunk(args.describe_model, Path(args.vendor))
        model = model.eval().to(device).to(memory_format=torch.channels_last)
        x = torch.randn(batch, 3, h, w, device=device).to(memory_format=torch.channels_last)
        grid = (h // stride, w // stride)
        with torch.inference_mode(), precision("bf16", device):
            k = model(x[:1]).shape[1]
        components = np.linalg.qr(rng.standard_normal((k, kp)))[0]
        dim = kp * (kp + 1) // 2
        whitening = rng.standard_normal((dim, min(512, dim))).astype(np.float32)
        masks = [region_masks(grid)] * batch
        timings = {"network": 0.0, "maps to the host": 0.0, "eqs. 1, 2, 4, 5": 0.0, "eq. 6": 0.0}
        timed = 0
        for step in range(sizes["describe_batches"] + 1):  # the first batch is the warm-up
            if budget.left(0.88) <= 0:
                notes.append("(d) describe path: stopped by the time budget (--minutes)")
                break
            marks = [time.perf_counter()]
            with torch.inference_mode(), precision("bf16", device):
                fmaps = model(x)
            sync(device)
            marks.append(time.perf_counter())
            host = fmaps.float().permute(0, 2, 3, 1).to(torch.float16).cpu().numpy()
            marks.append(time.perf_counter())
            rows = region_descriptors_torch(list(host), masks, components, 1e-6, LOG_EPS, device=device,
                                            dtype=torch.float32)
            marks.append(time.perf_counter())
            np.concatenate(rows) @ whitening
            marks.append(time.perf_counter())
            if step:
                timed += batch
                for name, a, b in zip(timings, marks, marks[1:]):
                    timings[name] += b - a
        if not timed:
            raise RuntimeError("no batch timed within --minutes")
        for name, seconds in timings.items():
            out["rows"].append({"step": f"{name} ({device})", "ms_per_image": 1000 * seconds / timed})
        device_ms = 1000 * sum(timings.values()) / timed
        # The regions of random points over the input (k-means does the same work on any points of
        # that count), on one core; the points as given.
        n_runs = 3
        point_sets = [rng.uniform([0, 0], [w - 1, h - 1], size=(n_points, 2)) for _ in range(n_runs + 1)]
        image_regions(point_sets[0], 3, (h, w), grid)  # warm-up
        start = time.perf_counter()
        for pts in point_sets[1:]:
            image_regions(pts, 3, (h, w), grid)
        regions_ms = 1000 * (time.perf_counter() - start) / n_runs
        out["rows"].append({"step": "regions (one CPU core)", "ms_per_image": regions_ms})
        out["rows"].append({"step": "points (one CPU core, given: --points-ms)", "ms_per_image": args.points_ms})
        out["device_images_per_s"] = 1000 / device_ms
        out["cpu_images_per_s"] = os.cpu_count() * 1000 / (regions_ms + args.points_ms)
        out["images_per_s"] = min(out["device_images_per_s"], out["cpu_images_per_s"])
        out["bound_by"] = "device" if out["device_images_per_s"] <= out["cpu_images_per_s"] else "CPU cores"
    except Exception as err:  # recorded, the rest goes on
        out["error"] = error_text(err)
    finally:
        x = fmaps = None
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


# --- (c) exact search -----------------------------------------------------------------------


def random_index(n_rows: int, dim: int, device: str, seed: int = 0) -> torch.Tensor:
    """``(n_rows, dim)`` l2-normalised random descriptors stored float16, generated in blocks."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty((n_rows, dim), device=device, dtype=torch.float16)
    for start in range(0, n_rows, 1 << 20):
        stop = min(start + (1 << 20), n_rows)
        block = torch.randn((stop - start, dim), device=device, generator=gen)
        out[start:stop] = block / torch.linalg.vector_norm(block, dim=1, keepdim=True)
    return out


def bench_search(sizes, device: str, budget: Budget, notes: list) -> dict:
    per_image, dim, n_q = sizes["search_regions"], sizes["dim"], sizes["queries"]
    n_images = sizes["search_images"]
    fits = int(free_memory_bytes(device) * 0.5 // (per_image * dim * 2 + 8))
    if fits < n_images:
        notes.append(f"search: {n_images} images do not fit half the free memory of {device}: {fits} instead")
        n_images = max(fits, 1)
    cpu_images = min(sizes["search_cpu_images"], n_images)
    rows, out = [], {"images": n_images, "regions_per_image": per_image, "dim": dim, "queries": n_q,
                     "stored": "float16", "compute": "float32"}
    offsets = np.arange(n_images + 1, dtype=np.int64) * per_image
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(n_q, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    q_offsets = np.arange(n_q + 1)
    if budget.left(1.0) <= 0:
        return dict(out, rows=[{"path": "exact_search_torch", "device": device, "skipped": "time budget"}])
    index = None
    try:
        start = time.perf_counter()
        index = random_index(n_images * per_image, dim, device)
        sync(device)
        out["index_build_seconds"] = time.perf_counter() - start
        warm = min(10, n_images)
        exact_search_torch(queries, q_offsets, index[:per_image * warm], offsets[:warm + 1], device=device)
        sync(device)
        start = time.perf_counter()
        sim, best = exact_search_torch(queries, q_offsets, index, offsets, sizes["chunk_rows"], device)
        sync(device)

        def per_query(path: str, seconds: float) -> dict:
            return {"path": path, "device": device, "images": n_images, "queries": n_q, "seconds": seconds,
                    "ms_per_query": 1000 * seconds / n_q, "ms_per_query_1M": 1000 * seconds / n_q * 1e6 / n_images}

        rows.append(per_query("exact_search_torch (all queries at once)", time.perf_counter() - start))
        start = time.perf_counter()
        torch.sort(sim, dim=1, descending=True, stable=True)
        sync(device)
        rows.append(per_query("full ranking (stable sort) on the device", time.perf_counter() - start))
        start = time.perf_counter()
        sim.cpu(), best.cpu()
        rows.append({"path": "similarities and best regions to the host", "device": device, "images": n_images,
                     "queries": n_q, "seconds": time.perf_counter() - start})
        device_sim = sim[:, :cpu_images].cpu().numpy()
        device_best = best[:, :cpu_images].cpu().numpy()
        host = index[:cpu_images * per_image].float().cpu().numpy()
        sim = best = None
    except Exception as err:
        rows.append({"path": "exact_search_torch (all queries at once)", "device": device, "error": error_text(err)})
        host = device_sim = None
    finally:
        index = None
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    if host is None:
        host = random_index(cpu_images * per_image, dim, "cpu").float().numpy()
    cpu_offsets = offsets[:cpu_images + 1]

    # CPU: the ranking stage's per-query NumPy search, then torch on the CPU with all queries at once.
    n_cpu_q = min(sizes["search_cpu_queries"], n_q)
    try:
        from rdfa.search import image_similarities
    except ImportError as err:
        notes.append(f"search: NumPy path unavailable ({error_text(err)})")
    else:
        start = time.perf_counter()
        numpy_sim = np.stack([image_similarities(queries[j:j + 1], host, cpu_offsets)[0] for j in range(n_cpu_q)])
        seconds = time.perf_counter() - start
        rows.append({"path": "numpy (rdfa.search, per query)", "device": "cpu", "images": cpu_images,
                     "queries": n_cpu_q, "seconds": seconds, "ms_per_query": 1000 * seconds / n_cpu_q,
                     "ms_per_query_1M": 1000 * seconds / n_cpu_q * 1e6 / cpu_images})
        if device_sim is not None:
            out["max_abs_diff"] = float(np.abs(device_sim[:n_cpu_q] - numpy_sim).max())
    start = time.perf_counter()
    cpu_sim, cpu_best = exact_search_torch(queries, q_offsets, host, cpu_offsets, sizes["chunk_rows"], "cpu")
    seconds = time.perf_counter() - start
    rows.append({"path": "exact_search_torch (all queries at once)", "device": "cpu", "images": cpu_images,
                 "queries": n_q, "seconds": seconds, "ms_per_query": 1000 * seconds / n_q,
                 "ms_per_query_1M": 1000 * seconds / n_q * 1e6 / cpu_images})
    if device_sim is not None:
        out["max_abs_diff_torch_cpu"] = float(np.abs(device_sim - cpu_sim.numpy()).max())
        out["same_best_region"] = float((device_best == cpu_best.numpy()).mean())
    numpy_rows = [r for r in rows if r["path"].startswith("numpy")]
    for row in rows:
        if numpy_rows and "ms_per_query_1M" in row:
            row["vs_numpy"] = numpy_rows[0]["ms_per_query_1M"] / row["ms_per_query_1M"]
    return dict(out, rows=rows)


# --- output -----------------------------------------------------------------------------------


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def status(row: dict) -> str:
    return row.get("error") or (f"skipped: {row['skipped']}" if "skipped" in row else row.get("note", ""))


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"# bench/gpu.py on {meta['device_name']} ({meta['device']}), torch {meta['torch']}, "
             f"{meta['seconds']:.0f} s", ""]
    lines += [f"TF32 defaults of this torch: conv {meta['tf32_defaults']['cudnn']}, "
              f"matmul {meta['tf32_defaults']['matmul']}; cuDNN autotuning {meta['cudnn_benchmark']}; "
              f"CPU threads {meta['cpu_threads']}.", ""]
    lines += ["## (a) Backbones, bare forward, input on the device", "",
              "| model | input | precision | memory format | batch | images/s | ms/image | peak GPU MiB | note |",
              "|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in result["backbones"]:
        lines.append(f"| {r['model']} | {r['input_hw'][1]}x{r['input_hw'][0]} | {r['precision']} | "
                     f"{r['memory_format']} | {r['batch']} | {fmt(r.get('images_per_s'))} | "
                     f"{fmt(r.get('ms_per_image'))} | {fmt(r.get('peak_gpu_mib'))} | {status(r)} |")
    eq5 = result["eq5"]
    shape = eq5["shape"]
    lines += ["", f"## (b) eq. 5, {shape['grid'][0]}x{shape['grid'][1]} grids, K' = {shape['k_prime']}, "
              f"{shape['regions_per_image']} regions per image, chunks of {shape['chunk']}", "",
              "| path | device | dtype | regions | seconds | regions/s | vs NumPy | note |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    for r in eq5["rows"]:
        lines.append(f"| {r['path']} | {r['device']} | {r['dtype']} | {fmt(r.get('regions'))} | "
                     f"{fmt(r.get('seconds'))} | {fmt(r.get('regions_per_s'))} | {fmt(r.get('vs_numpy'))} | "
                     f"{status(r)} |")
    lines += ["", f"Max abs difference from the {eq5['reference']} reference (tolerance float64 "
              f"{EQ5_TOLERANCE['float64']:g}, float32 {EQ5_TOLERANCE['float32']:g}): " +
              ", ".join(f"{k} {v:.2g} ({'ok' if eq5['within_tolerance'][k] else 'OVER'})"
                        for k, v in eq5["max_abs_diff"].items())]
    s = result["search"]
    lines += ["", f"## (c) Exact search (eq. 7): {s['queries']} queries x {s['images']:,} images x "
              f"{s['regions_per_image']} regions, D = {s['dim']}, {s['stored']} stored, {s['compute']} products",
              "", "| path | device | images | queries | seconds | ms/query | ms/query at 1M images | vs NumPy | note |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in s["rows"]:
        lines.append(f"| {r['path']} | {r['device']} | {fmt(r.get('images'))} | {fmt(r.get('queries'))} | "
                     f"{fmt(r.get('seconds'))} | {fmt(r.get('ms_per_query'))} | {fmt(r.get('ms_per_query_1M'))} | "
                     f"{fmt(r.get('vs_numpy'))} | {status(r)} |")
    extra = [f"{k} {s[k]:.2g}" for k in ("max_abs_diff", "max_abs_diff_torch_cpu", "same_best_region") if k in s]
    if extra:
        lines += ["", "Device against CPU on the CPU's images: " + ", ".join(extra)]
    d = result.get("describe")
    if d:
        size = f"{d['input_hw'][1]}x{d['input_hw'][0]}"
        lines += ["", f"## (d) The describe path per image: {d['model']} bf16 at {size}, "
                  f"batch {d['batch']}, {d['points']} points per image, {d['cores']} CPU cores", "",
                  "| step | ms per image |", "|---|---:|"]
        lines += [f"| {r['step']} | {fmt(r['ms_per_image'])} |" for r in d["rows"]]
        if "images_per_s" in d:
            lines += ["", f"Device steps {fmt(d['device_images_per_s'])} images/s; CPU steps on {d['cores']} cores "
                      f"{fmt(d['cpu_images_per_s'])} images/s; end to end **{fmt(d['images_per_s'])} images/s** "
                      f"(bound by the {d['bound_by']})."]
        if d.get("error"):
            lines += ["", f"(d) failed: {d['error']}"]
    if meta["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in meta["notes"]]
    return "\n".join(lines) + "\n"


def output_path(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu.json"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU, seconds (what CI runs)")
    ap.add_argument("--device", default=None, help="auto (cuda if available), cpu, cuda, cuda:N (default: auto; "
                    "cpu with --tiny)")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget (default 4.5; 2 with --tiny)")
    ap.add_argument("--out", default=None, help="JSON path (default: $OUT/gpu.json when OUT is set)")
    ap.add_argument("--cpu-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--only", default="backbones,eq5,describe,search", help="comma-separated sections to run")
    ap.add_argument("--describe-model", default="vgg19", choices=("vgg19", "efficientnet_lite0", "resnet101"),
                    help="(d): the network of the describe path")
    ap.add_argument("--describe-batch", type=int, default=32, help="(d): images per forward")
    ap.add_argument("--describe-points", type=int, default=4000,
                    help="(d): salient points per image given to the regions (default N_max = 4000)")
    ap.add_argument("--points-ms", type=float, default=536.0,
                    help="(d): ms per image of the salient points on one core, from bench/describe.py (default: "
                         "synth's 134 ms at 512x384, quiet AMD EPYC, times 4 for 1024x768; hesaff_half: 74)")
    ap.add_argument("--models", default="vgg19,efficientnet_lite0,resnet101",
                    help="comma-separated backbones of section (a): vgg19, efficientnet_lite0, resnet101")
    ap.add_argument("--vendor", default=str(REPO / "bench" / "vendor"),
                    help="folder searched for efficientnet_lite_pytorch when it is not installed")
    ap.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false",
                    help="no cuDNN autotuning (the features stage sees many input sizes on Oxford/Paris)")
    args = ap.parse_args(argv)
    sizes = dict(TINY if args.tiny else FULL)
    device = args.device or ("cpu" if args.tiny else "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"bench/gpu.py: --device {device} but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    budget = Budget(args.minutes if args.minutes is not None else 2.0 if args.tiny else 4.5)
    sections = set(args.only.split(","))
    notes: list[str] = []
    if not device.startswith("cuda") and not args.tiny:
        notes.append("no CUDA device: everything ran on the CPU with the sizes given")
    meta = {
        "device": device, "tiny": args.tiny, "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor()
        or platform.machine(),
        "tf32_defaults": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "cudnn_benchmark": args.cudnn_benchmark, "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "numpy": np.__version__, "budget_minutes": budget.total / 60,
        "sizes": sizes, "notes": notes,
    }
    result = {"meta": meta, "backbones": [], "eq5": None, "describe": None, "search": None}
    if "backbones" in sections:
        result["backbones"] = bench_backbones(args, sizes, device, budget, notes)
    result["eq5"] = bench_eq5(sizes, device, budget, notes) if "eq5" in sections else {
        "rows": [], "max_abs_diff": {}, "tolerance": EQ5_TOLERANCE, "within_tolerance": {}, "reference": "-",
        "shape": {"grid": list(sizes["eq5_grid"]), "k_prime": sizes["k_prime"],
                  "regions_per_image": sizes["regions_per_image"], "log_eps": LOG_EPS, "chunk": sizes["eq5_chunk"]}}
    result["describe"] = bench_describe(args, sizes, device, budget, notes) if "describe" in sections else None
    result["search"] = bench_search(sizes, device, budget, notes) if "search" in sections else {
        "rows": [], "images": 0, "regions_per_image": sizes["search_regions"], "dim": sizes["dim"],
        "queries": sizes["queries"], "stored": "float16", "compute": "float32"}
    meta["seconds"] = budget.elapsed()
    table = markdown(result)
    print(table, flush=True)
    path = output_path(args.out)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        path.with_suffix(".md").write_text(table)
        print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
