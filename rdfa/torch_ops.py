"""eq. (5) and eq. (7) in torch, batched, for the GPU path.

The same arithmetic as :func:`rdfa.pooling.second_order` and
:func:`rdfa.search.image_similarities`, but over many regions of many images
(one batched eigendecomposition per chunk) and many queries at once, on any
torch device. ``bench/gpu.py`` imports this module on a GPU machine that has
only torch and numpy, so nothing else may be imported here, at module level
or inside the functions (``rdfa.weights``, NumPy only, is the one project
module used). CuPy, where it imports, is the one optional extra: on a CUDA
device its batched eigensolver replaces ``torch.linalg.eigh`` (see
:func:`batched_eigh`).

Both functions return torch tensors on the compute device, in the compute
dtype; the caller moves them to the host and casts to the stored precision
(float32 for descriptors, as :func:`rdfa.pooling.region_descriptors` does).
In float64 on the CPU the descriptors agree with ``rdfa.pooling`` to about
1e-13; in float32 to about 1e-5 (max abs on l2-normalised vectors:
``tests/test_torch_ops.py`` checks 1e-4, ``bench/gpu.py`` measures it).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch


def region_weights(masks: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The averaging weights of eq. (5) for the regions of one image, ``(M, H*W)`` float64.

    ``alpha * mask`` normalised to sum 1 per region; a region whose alpha is
    zero everywhere falls back to uniform weights over its positions, exactly
    as :func:`rdfa.pooling.second_moments` does.
    """
    masks = np.asarray(masks)
    weights = masks.reshape(len(masks), -1).astype(np.float64)
    weighted = weights * np.asarray(alpha, dtype=np.float64).reshape(1, -1)
    totals = weighted.sum(1)
    dead = totals <= 0
    weighted[dead] = weights[dead]
    totals[dead] = weights[dead].sum(1)
    return weighted / np.maximum(totals, 1e-300)[:, None]


def pack_regions(locals_: list[np.ndarray], weights: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack the regions of several images (of any grid sizes) for :func:`second_order_torch`.

    ``locals_[i]``: image ``i``'s reduced local descriptors, ``(h, w, K')`` or
    ``(P_i, K')`` (eq. 4); ``weights[i]``: its ``(M_i, P_i)`` region weights
    (:func:`region_weights`). Positions are zero-padded to the largest ``P``,
    with zero weight, which adds nothing to any second moment. Returns
    ``(local (N, P, K'), weights (sum M_i, P), owner (sum M_i,))``; region
    ``b`` belongs to image ``owner[b]``, regions in image order.
    """
    if len(locals_) != len(weights):
        raise ValueError(f"{len(locals_)} local arrays but {len(weights)} weight arrays")
    flat = [np.asarray(x).reshape(-1, np.shape(x)[-1]) for x in locals_]
    p_max = max(x.shape[0] for x in flat)
    kp = flat[0].shape[1]
    local = np.zeros((len(flat), p_max, kp), dtype=np.result_type(*flat))
    for i, (x, w) in enumerate(zip(flat, weights)):
        if np.ndim(w) != 2 or np.shape(w)[1] != x.shape[0]:
            raise ValueError(f"image {i}: weights {np.shape(w)} do not match its {x.shape[0]} positions")
        local[i, :len(x)] = x
    return (local,) + _padded_weights(weights, p_max)


def _padded_weights(weights: list[np.ndarray], p_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Every image's ``(M_i, P_i)`` region weights zero-padded to ``p_max`` positions and stacked, and the
    image each region belongs to."""
    padded = np.concatenate([np.pad(np.asarray(w, dtype=np.float64), ((0, 0), (0, p_max - np.shape(w)[1])))
                             for w in weights])
    return padded, np.repeat(np.arange(len(weights)), [len(w) for w in weights])


@contextmanager
def _exact_float32_matmul():
    """Turn TF32 off for the duration: with it, float32 matmuls on Ampere and later keep 10
    mantissa bits, and the second moments (hence the descriptors) would be ~1e-3 off."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


#: The eigensolvers :func:`batched_eigh` knows; "auto" is CuPy's on CUDA tensors when CuPy imports, else torch's.
EIGH_BACKENDS = ("auto", "torch", "cupy")


def _cupy():
    try:
        import cupy
    except Exception:  # not installed, or installed without a usable CUDA runtime
        return None
    return cupy


def eigh_backend(tensor: torch.Tensor, backend: str = "auto") -> str:
    """The eigensolver :func:`batched_eigh` uses for ``tensor``: "torch" or "cupy"."""
    if backend not in EIGH_BACKENDS:
        raise ValueError(f"eigh backend must be one of {', '.join(EIGH_BACKENDS)} (got {backend!r})")
    if backend == "torch" or not tensor.is_cuda:
        return "torch"
    if _cupy() is None:
        if backend == "cupy":
            raise RuntimeError("eigh backend 'cupy' asked for, but cupy does not import")
        return "torch"
    return "cupy"


def batched_eigh(m: torch.Tensor, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of a batch of symmetric matrices, as ``torch.linalg.eigh``.

    Why CuPy on CUDA: torch 2.11 (CUDA 13) decomposes a batch of 128x128 matrices one matrix at a
    time, about 690 float64 matrices per second on an H200, slower than NumPy on the CPU; CuPy's
    batched cuSOLVER call did 7,000 float64 and 57,000 float32 per second on the same GPU
    (bench/gpu.py, section b). The tensors are shared through DLPack, without copies.
    """
    if eigh_backend(m, backend) == "torch":
        return torch.linalg.eigh(m)
    cupy = _cupy()
    with cupy.cuda.Device(m.device.index if m.device.index is not None else torch.cuda.current_device()):
        eigvals, eigvecs = cupy.linalg.eigh(cupy.from_dlpack(m.contiguous()))
    return torch.from_dlpack(eigvals), torch.from_dlpack(eigvecs)


def _tensor(x, device, dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), device=device, dtype=dtype)


def second_order_torch(local, weights, log_eps: float, owner=None, device="cpu", dtype=torch.float64,
                       chunk: int = 4096, eigh: str = "auto") -> torch.Tensor:
    """eq. (5) for a batch of regions: ``vec(log(G^avg_R))``, l2-normalised, ``(B, K'(K'+1)/2)``.

    ``local``: ``(N, P, K')`` reduced local descriptors of N images (eq. 4),
    zero-padded to P positions (:func:`pack_regions`); ``weights``: ``(B, P)``
    normalised region weights (:func:`region_weights`); ``owner``: ``(B,)``
    the image of each region (default: region ``b`` is image ``b``, B = N).
    Per region, as :func:`rdfa.pooling.second_order`: ``G`` = weighted mean
    of ``f f^T``, ridge ``log_eps * tr(G)/K' * I``, eigenvalues floored at
    1e-3 of the ridge, log, reconstruct, upper triangle, l2. ``chunk``
    regions are decomposed at a time (memory: ``chunk * P * K'`` values for
    the gathered positions); ``eigh``: the eigensolver (:func:`batched_eigh`).
    Returns a tensor on ``device`` in ``dtype``.
    """
    if log_eps <= 0:
        raise ValueError(f"descriptors.log_eps must be > 0 (got {log_eps})")
    local = _tensor(local, device, dtype)
    weights = _tensor(weights, device, dtype)
    if local.ndim != 3 or weights.ndim != 2 or weights.shape[1] != local.shape[1]:
        raise ValueError(f"expected local (N, P, K') and weights (B, P); got {tuple(local.shape)} and "
                         f"{tuple(weights.shape)}")
    n_regions, kp = weights.shape[0], local.shape[2]
    if owner is None:
        if n_regions != local.shape[0]:
            raise ValueError(f"{n_regions} regions but {local.shape[0]} images: pass owner")
        owner = torch.arange(n_regions, device=local.device)
    else:
        owner = _tensor(owner, local.device, torch.int64)
    rows, cols = torch.triu_indices(kp, kp, device=local.device)
    eye = torch.eye(kp, device=local.device, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    out = torch.empty((n_regions, len(rows)), device=local.device, dtype=dtype)
    with _exact_float32_matmul(), torch.no_grad():
        for start in range(0, n_regions, chunk):
            stop = min(start + chunk, n_regions)
            f = local[owner[start:stop]]  # (c, P, K')
            g = (f * weights[start:stop, :, None]).transpose(1, 2) @ f  # (c, K', K')
            ridge = (log_eps * torch.diagonal(g, dim1=-2, dim2=-1).sum(-1) / kp).clamp_min(tiny)
            eigvals, eigvecs = batched_eigh(g + ridge[:, None, None] * eye, eigh)
            # The floor of rdfa.pooling; clamping again at tiny keeps log finite where float32 flushes
            # a tiny ridge's 1e-3 to zero (an all-zero region), and changes nothing anywhere else.
            eigvals = torch.maximum(eigvals, ridge[:, None] * 1e-3).clamp_min(tiny)
            logm = (eigvecs * torch.log(eigvals)[:, None, :]) @ eigvecs.transpose(1, 2)
            vec = logm[:, rows, cols]
            out[start:stop] = vec / torch.linalg.vector_norm(vec, dim=1, keepdim=True).clamp_min(1e-12)
    return out


def region_descriptors_torch(fmaps: list[np.ndarray], masks: list[np.ndarray], components: np.ndarray,
                             beta_eps: float, log_eps: float, device="cpu", dtype=torch.float64,
                             chunk: int = 4096) -> list[np.ndarray]:
    """:func:`rdfa.pooling.region_descriptors_batch` on a torch device: eqs. (1), (2), (4), (5) for many images.

    Per image ``(h, w, K)`` map and its ``(M, h, w)`` masks: alpha and beta
    (eqs. 1-2, NumPy, as the CPU path), the local descriptors reduced by
    ``components`` (eq. 4) and eq. (5) on ``device`` in ``dtype``. Returns
    one ``(M, K'(K'+1)/2)`` float32 array per image, like the CPU path (float64
    agrees with it to the last float32 bit or so: ``tests/test_torch_ops.py``).
    """
    from .weights import channel_weights, spatial_weights  # NumPy only, like this module

    comps = _tensor(components, device, dtype)
    locals_, weights = [], []
    for fmap, image_masks in zip(fmaps, masks):
        fmap = np.asarray(fmap, dtype=np.float64)
        beta = _tensor(channel_weights(fmap, beta_eps), device, dtype)
        with _exact_float32_matmul():
            locals_.append((_tensor(fmap.reshape(-1, fmap.shape[-1]), device, dtype) * beta) @ comps)
        weights.append(region_weights(image_masks, spatial_weights(fmap)))
    if not locals_:
        return []
    p_max = max(len(x) for x in locals_)
    local = torch.zeros((len(locals_), p_max, comps.shape[1]), device=comps.device, dtype=dtype)
    for i, x in enumerate(locals_):
        local[i, :len(x)] = x
    padded, owner = _padded_weights(weights, p_max)
    rows = second_order_torch(local, padded, log_eps, owner=owner, device=device, dtype=dtype, chunk=chunk)
    rows = rows.cpu().numpy().astype(np.float32)
    return np.split(rows, np.cumsum([len(w) for w in weights])[:-1])


def _image_chunks(offsets: np.ndarray, chunk_rows: int):
    """``(first image, end image)`` ranges whose rows total at most ``chunk_rows`` (at least one image
    each), so that no image's regions are split across two chunks."""
    n_images = len(offsets) - 1
    i = 0
    while i < n_images:
        j = int(np.searchsorted(offsets, offsets[i] + chunk_rows, side="right")) - 1
        j = min(max(j, i + 1), n_images)
        yield i, j
        i = j


def exact_search_torch(queries, q_offsets, regions, offsets, chunk_rows: int = 1 << 20, device="cpu",
                       dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """eq. (7) for many queries at once: per (query, image), the best pair of query row and image region.

    ``queries``: ``(R_q, D)`` stacked query descriptors, query ``j`` owning
    rows ``q_offsets[j]:q_offsets[j + 1]``; ``regions``: ``(R, D)`` database
    region descriptors, image ``i`` owning rows ``offsets[i]:offsets[i + 1]``
    (a tensor already on ``device``, e.g. float16, stays there: each chunk
    is cast to ``dtype`` in turn). Descriptors are l2-normalised, so the dot
    product is the cosine similarity. ``chunk_rows`` database rows are
    compared at a time (whole images only). Returns ``(similarity,
    best_region)``, both ``(n_queries, n_images)`` on ``device``: as
    :func:`rdfa.search.image_similarities` per query, ``best_region`` the
    first row (in ``regions``) reaching the image's maximum.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    q_offsets = np.asarray(q_offsets, dtype=np.int64)
    counts = np.diff(offsets)
    if np.any(counts <= 0):
        raise ValueError("every database image needs at least one region")
    if np.any(np.diff(q_offsets) <= 0):
        raise ValueError("every query needs at least one row")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1 (got {chunk_rows})")
    q = _tensor(queries, device, dtype)
    if not isinstance(regions, torch.Tensor):
        regions = torch.from_numpy(np.ascontiguousarray(regions))
    n_q, n_img, n_rows = len(q_offsets) - 1, len(offsets) - 1, int(offsets[-1])
    single_row = len(q) == n_q  # one row per query, the usual case: no max over query rows
    q_owner = torch.repeat_interleave(torch.arange(n_q, device=q.device),
                                      torch.as_tensor(np.diff(q_offsets), device=q.device))
    similarity = torch.empty((n_q, n_img), device=q.device, dtype=dtype)
    best = torch.empty((n_q, n_img), device=q.device, dtype=torch.int64)
    with _exact_float32_matmul(), torch.no_grad():
        for i0, i1 in _image_chunks(offsets, chunk_rows):
            r0, r1 = int(offsets[i0]), int(offsets[i1])
            sims = q @ regions[r0:r1].to(device=q.device, dtype=dtype).T  # (R_q, c)
            if not single_row:
                init = torch.full((n_q, r1 - r0), -torch.inf, device=q.device, dtype=dtype)
                sims = init.scatter_reduce_(0, q_owner[:, None].expand_as(sims), sims, "amax")
            owner = torch.repeat_interleave(torch.arange(i1 - i0, device=q.device),
                                            torch.as_tensor(counts[i0:i1], device=q.device))
            index = owner[None].expand(n_q, -1)
            image_sim = torch.full((n_q, i1 - i0), -torch.inf, device=q.device, dtype=dtype)
            image_sim.scatter_reduce_(1, index, sims, "amax")
            row = torch.arange(r0, r1, device=q.device).expand(n_q, -1)
            row = torch.where(sims >= image_sim[:, owner], row, n_rows)
            first = torch.full((n_q, i1 - i0), n_rows, device=q.device, dtype=torch.int64)
            best[:, i0:i1] = first.scatter_reduce_(1, index, row, "amin")
            similarity[:, i0:i1] = image_sim
    return similarity, best
