"""One image, from its pixels to its whitened region descriptors: the per-image stages in one call.

The stages run the per-image steps one at a time over a whole dataset,
keeping every intermediate file (feature maps, points, regions); ``rdfa
search`` and the distractor path (``stages/distractors.py``) need the same
steps for one image at a time, keeping only the result. :func:`describe_image`
chains the very functions the stages call
(``rdfa.io.images.prepare_input``, ``rdfa.io.backbones.stored_feature_map``,
``rdfa.saliency.image_points``, ``rdfa.regions.image_regions``,
``rdfa.pooling.region_descriptors``, ``rdfa.whitening.whitened``), so the two
paths cannot drift apart: nothing here re-implements a step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..pooling import region_descriptors
from ..regions import box_region, image_regions, rescale_points
from ..saliency import image_points
from ..settings import Settings
from ..whitening import PCA, Whitening, whitened
from .backbones import feature_config, stored_feature_map  # noqa: F401  (feature_config: its old home)
from .images import SizePolicy, prepare_input


class DescribeError(ValueError):
    """An image cannot be described (too few salient points for L clusters); the message names it."""


@dataclass(frozen=True)
class DescribeConfig:
    """The parameters of the per-image stages (params.yaml) an image is described with."""

    n_max: int
    n_min: int
    fallback: str
    detector: str
    n_clusters: int
    min_cells: int
    max_iter: int
    beta_eps: float
    log_eps: float
    n_qe: int
    include_query: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> "DescribeConfig":
        s = settings
        return cls(n_max=s.saliency.n_max, n_min=s.saliency.n_min, fallback=s.saliency.fallback,
                   detector=s.saliency.detector,
                   n_clusters=s.regions.L, min_cells=s.regions.min_cells, max_iter=s.regions.kmeans_max_iter,
                   beta_eps=s.weights.beta_eps, log_eps=s.descriptors.log_eps,
                   n_qe=s.ranking.n_qe, include_query=s.ranking.qe_include_query)



@dataclass(frozen=True)
class Describer:
    """What describing an image needs besides the network: the dataset's size policy, the stored
    precision of its maps, its fitted K -> K' basis (eq. 4) and whitening (eq. 6)."""

    policy: SizePolicy
    dtype: str  # features.dtype: the map is rounded to it, as the features stage stores it
    components: np.ndarray  # (K, K') basis of eq. 4
    whitening: PCA | None  # eq. 6 as fitted by the whitening stage (None: whitening.mode none)
    whitening_mode: Whitening
    conf: DescribeConfig


@dataclass(frozen=True)
class Described:
    """One image described: ``rows`` ``(M, D)`` whitened region descriptors (the whole image last),
    ``hulls`` each region's polygon ``(x, y)`` in the original image's pixels, ``image_hw`` its size;
    and what Table 1's other methods pool from (``rdfa.methods.Image``): ``fmap`` the feature map in
    the stored precision, ``masks`` the regions on its grid, ``pooled`` eq. 5's rows before eq. 6."""

    rows: np.ndarray
    hulls: list
    image_hw: tuple[int, int]
    fmap: np.ndarray | None = None
    masks: np.ndarray | None = None
    pooled: np.ndarray | None = None


def describe_image(describer: Describer, backbone, image: np.ndarray, name: str, box=None) -> Described:
    """The whitened region descriptors of an ``(H, W, 3)`` uint8 RGB image, as the pipeline describes it.

    The size policy on the whole image (a box cut at that scale); its feature
    map in the stored precision; with a box, R_M of the crop (a query, as in
    section 5); without, its salient points, fast global k-means and
    power-set hull regions, as a database image; then eq. 5 and the fitted
    whitening. ``DescribeError`` naming ``name`` when it has fewer salient
    points than ``regions.L``.
    """
    conf = describer.conf
    prepared = prepare_input(image, describer.policy, backbone.stride, name, box)
    fmap = stored_feature_map(backbone, prepared.image, describer.dtype, name)
    input_hw, grid_hw = prepared.image.shape[:2], fmap.shape[:2]
    if box is not None:
        regions = box_region(input_hw, grid_hw)
    else:
        points = image_points(prepared.image, fmap, conf.n_max, conf.n_min, conf.fallback, conf.detector).points
        if len(points) < conf.n_clusters:
            raise DescribeError(f"{name}: {len(points)} salient points, fewer than regions.L={conf.n_clusters}")
        regions = image_regions(points, conf.n_clusters, input_hw, grid_hw, conf.min_cells, conf.max_iter)
    pooled = region_descriptors(fmap, regions.masks, describer.components, conf.beta_eps, conf.log_eps)
    rows = whitened(pooled, describer.whitening, describer.whitening_mode)
    # Hull vertices from the network input's pixels back to the original image's, as
    # rdfa.io.hulls maps the stored ones (for a box: first into the resized whole image).
    sy, sx = prepared.scale
    x0, y0 = prepared.crop[:2]
    hulls = [rescale_points(np.asarray(h, dtype=np.float64) / prepared.enlarged + [x0, y0], (1.0 / sx, 1.0 / sy))
             for h in regions.hulls]
    return Described(rows, hulls, tuple(image.shape[:2]), fmap, regions.masks, pooled)
