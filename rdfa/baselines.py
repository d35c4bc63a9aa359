"""The global baselines of Table 1, pooled from the same feature maps as the paper's method.

``fmap`` is an ``(H, W, K)`` feature map (non-negative activations). Each
pooling function returns the raw ``(K,)`` (or ``(R, K)``) vector; the
l2-normalisation / PCA-whitening / l2-normalisation that all these papers
apply afterwards is :func:`rdfa.pooling.l2_normalize` and
:func:`rdfa.whitening.whiten`, done by the caller.

* MAC: global max-pooling (Tolias, Sicre and Jegou, ICLR 2016, ref. [6]).
* SPoC: sum-pooling with a Gaussian centre prior (Babenko and Lempitsky,
  ICCV 2015, ref. [1]).
* CroW: cross-dimensional weighting (Kalantidis, Mellina and Osindero, 2015,
  ref. [5]).
* R-MAC: regional MAC over a fixed multi-scale grid (Tolias et al., ref. [6]).
* GeM: generalised-mean pooling (Radenovic, Tolias and Chum, TPAMI 2018).
* Average query expansion (Chum et al., ICCV 2007, ref. [19]), as CroW's QE.
"""
from __future__ import annotations

import math

import numpy as np

from .pooling import l2_normalize
from .search import rank_all
from .weights import channel_sums, channel_weights


def _as_map(fmap: np.ndarray) -> np.ndarray:
    fmap = np.asarray(fmap)
    if fmap.ndim != 3:
        raise ValueError(f"expected an (H, W, K) feature map, got shape {fmap.shape}")
    return fmap.astype(np.float64, copy=False)


def mac(fmap: np.ndarray) -> np.ndarray:
    """MAC: ``f_k = max_p f_{p,k}``, the maximum activation of each channel (in the map's type)."""
    fmap = np.asarray(fmap)
    if fmap.ndim != 3:
        raise ValueError(f"expected an (H, W, K) feature map, got shape {fmap.shape}")
    return fmap.reshape(-1, fmap.shape[-1]).max(0)


def spoc_prior(height: int, width: int) -> np.ndarray:
    """SPoC's centre prior ``exp(-((y - H/2)^2 + (x - W/2)^2) / (2 sigma^2))``, ``(H, W)``.

    Babenko and Lempitsky (sec. 3.2): sigma is one third of the distance from
    the centre to the closest border. Positions are cell centres ``(i + 0.5)``
    on the ``[0, W] x [0, H]`` grid, so the centre is ``(W/2, H/2)`` and the
    closest border is ``min(W, H) / 2`` away.
    """
    if height < 1 or width < 1:
        raise ValueError(f"SPoC prior needs a non-empty map (got {height}x{width})")
    sigma = min(height, width) / 2.0 / 3.0
    ys = np.arange(height) + 0.5 - height / 2.0
    xs = np.arange(width) + 0.5 - width / 2.0
    return np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2.0 * sigma ** 2))


def spoc(fmap: np.ndarray, center_prior: bool = True) -> np.ndarray:
    """SPoC: ``f_k = sum_p prior_p f_{p,k}`` (plain sum-pooling without the prior)."""
    fmap = _as_map(fmap)
    h, w, k = fmap.shape
    weights = spoc_prior(h, w) if center_prior else np.ones((h, w))
    return weights.reshape(-1) @ fmap.reshape(h * w, k)


def crow_spatial_weights(fmap: np.ndarray, a: float = 2.0, b: float = 2.0,
                         summed: np.ndarray | None = None) -> np.ndarray:
    """CroW's spatial weights (Kalantidis et al., eq. 3): ``(S / ||S||_a)^(1/b)``, ``(H, W)``.

    ``S`` is the channel-summed map (``summed``, when it is computed already:
    :func:`rdfa.weights.channel_sums`); the paper's choice is ``a = 2, b = 2``.
    A map with no response at all gets zero weights.
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"CroW needs a > 0 and b > 0 (got a={a}, b={b})")
    summed = channel_sums(fmap) if summed is None else summed
    norm = (summed ** a).sum() ** (1.0 / a)
    if norm == 0:
        return np.zeros_like(summed)
    return (summed / norm) ** (1.0 / b)


def crow(fmap: np.ndarray, a: float = 2.0, b: float = 2.0, eps: float = 1e-6,
         beta: np.ndarray | None = None, summed: np.ndarray | None = None) -> np.ndarray:
    """CroW: ``f_k = beta_k sum_p s_p f_{p,k}`` (Kalantidis et al., sec. 3).

    ``s`` are :func:`crow_spatial_weights`; ``beta`` CroW's channel weights,
    the log of the inverse channel sparsity, which is eq. (2) of the paper
    (:func:`rdfa.weights.channel_weights` with ``eps``; pass them when they are
    already computed). Channel weighting follows the spatially weighted sum,
    as in CroW.
    """
    fmap = _as_map(fmap)
    h, w, k = fmap.shape
    pooled = crow_spatial_weights(fmap, a, b, summed).reshape(-1) @ fmap.reshape(h * w, k)
    return (channel_weights(fmap, eps) if beta is None else beta) * pooled


def gem(fmap: np.ndarray, p: float = 3.0, eps: float = 1e-6) -> np.ndarray:
    """GeM: ``f_k = (mean_p max(f_{p,k}, eps)^p)^(1/p)`` (Radenovic et al., eq. 2).

    ``p = 1`` is average pooling, ``p -> inf`` MAC; ``eps`` clamps the
    activations as the authors' code does, so fractional powers stay defined.
    """
    if p <= 0:
        raise ValueError(f"GeM power p must be > 0 (got {p})")
    flat = _as_map(fmap).reshape(-1, np.shape(fmap)[-1])
    # Most activations are 0 after the ReLU (about 95 % on COIL-100): all of them clamp to eps,
    # whose power is taken once; only the others go through pow. The same values as
    # max(f, eps) ** p element by element.
    powered = np.full(flat.shape, (np.full(1, eps, dtype=np.float64) ** p)[0])
    above = flat > eps
    powered[above] = flat[above] ** p
    return np.mean(powered, axis=0) ** (1.0 / p)


def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> np.ndarray:
    """R-MAC's square regions (Tolias et al., sec. 3) on an ``H x W`` map: ``(R, 4)`` ``[x0, y0, x1, y1)``.

    At scale ``l = 1..levels`` the regions are squares of side
    ``floor(2 min(W, H) / (l + 1))``. At ``l = 1`` the number ``m`` of regions
    along the long side (2 to 7) is the one whose overlap between consecutive
    regions is closest to ``overlap`` (40 %); scale ``l`` then has ``l`` regions
    along the short side and ``l + m - 1`` along the long side, spread
    uniformly from border to border (positions as the authors' ``rmac_regions``).
    Ordered by scale, then row, then column; regions of side 0 are skipped.
    """
    if height < 1 or width < 1:
        raise ValueError(f"R-MAC regions need a non-empty map (got {height}x{width})")
    if levels < 1:
        raise ValueError(f"R-MAC needs at least one scale (got levels={levels})")
    short, long_ = min(height, width), max(height, width)
    extra_w = extra_h = 0
    if long_ > short:
        steps = np.arange(2, 8)
        stride = (long_ - short) / (steps - 1)
        overlaps = (short ** 2 - short * stride) / short ** 2
        extra = int(np.argmin(np.abs(overlaps - overlap))) + 1  # m - 1
        if width > height:
            extra_w = extra
        else:
            extra_h = extra
    boxes = []
    for level in range(1, levels + 1):
        side = int(math.floor(2 * short / (level + 1)))
        if side == 0:
            continue
        half = math.floor(side / 2 - 1)
        starts = []
        for size, extra in ((width, extra_w), (height, extra_h)):
            n = level + extra
            step = (size - side) / (n - 1) if n > 1 else 0.0
            starts.append([int(math.floor(half + i * step) - half) for i in range(n)])
        xs, ys = starts
        boxes += [(x, y, x + side, y + side) for y in ys for x in xs]
    return np.array(boxes, dtype=np.int64).reshape(-1, 4)


def rmac_maxima(fmap: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """MAC of each R-MAC region (:func:`rmac_regions`), ``(R, K)`` in the map's type (l2-normalised and
    whitened one by one afterwards, then :func:`sum_aggregate`)."""
    fmap = np.asarray(fmap)
    if fmap.ndim != 3:
        raise ValueError(f"expected an (H, W, K) feature map, got shape {fmap.shape}")
    out = np.empty((len(regions), fmap.shape[-1]), dtype=fmap.dtype)
    for r, (x0, y0, x1, y1) in enumerate(np.asarray(regions)):
        out[r] = fmap[y0:y1, x0:x1].max(axis=(0, 1))  # on the view: no copy of the region
    return out


def sum_aggregate(regions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """R-MAC's last step: sum each image's (whitened, l2) region vectors, l2-normalise: ``(n, D)``.

    Image ``i`` owns rows ``offsets[i]:offsets[i + 1]`` (at least one each).
    """
    offsets = np.asarray(offsets)
    if np.any(np.diff(offsets) <= 0):
        raise ValueError("every image needs at least one R-MAC region")
    from scipy.sparse import csr_matrix

    # Each image's rows summed in order, in float64, by a 0/1 sparse matrix: the same sums as
    # np.add.reduceat along the rows, which is slow along axis 0.
    regions = np.asarray(regions)
    owners = csr_matrix((np.ones(len(regions)), np.arange(len(regions)), offsets),
                        shape=(len(offsets) - 1, len(regions)))
    return l2_normalize(owners @ regions.astype(np.float64))


def average_query_expansion(query: np.ndarray, database: np.ndarray, ranking: np.ndarray,
                            n_qe: int) -> np.ndarray:
    """Average QE (ref. [19]): l2-normalised sum of the query and its top ``n_qe`` results, ``(D,)``.

    ``database`` holds one l2-normalised descriptor per image (rows),
    ``ranking`` the first search's image order.
    """
    if n_qe < 0:
        raise ValueError(f"ranking.n_qe must be >= 0 (got {n_qe})")
    top = np.asarray(database)[np.asarray(ranking)[:n_qe]]
    return l2_normalize(np.asarray(query, dtype=np.float64) + top.sum(0))


def global_search(queries: np.ndarray, database: np.ndarray, n_qe: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rank ``database`` (one l2 descriptor per image) for each query by cosine similarity.

    Returns ``(ranks, ranks_qe)``, each ``(n_queries, n_images)``: the first
    search, and the second after average query expansion over the top
    ``n_qe`` (equal to the first when ``n_qe`` is 0). Ties keep index order.
    """
    if n_qe < 0:
        raise ValueError(f"ranking.n_qe must be >= 0 (got {n_qe})")
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float64))
    database = np.asarray(database, dtype=np.float64)
    ranks = rank_all(queries @ database.T)
    if n_qe == 0:
        return ranks, ranks.copy()
    # Average QE of every query at once: the top results summed one rank after the other, then
    # added to the query, as average_query_expansion's ``query + top.sum(0)`` rounds.
    top = ranks[:, :n_qe]
    summed = np.zeros_like(queries)
    if top.shape[1]:
        summed = database[top[:, 0]].copy()
        for j in range(1, top.shape[1]):
            summed += database[top[:, j]]
    expanded = l2_normalize(queries + summed)
    return ranks, rank_all(expanded @ database.T)
