"""Table 1's ten methods, registered in the table's order through :func:`rdfa.methods.register`.

Each returns the raw descriptor(s) of one image; the methods stage l2-normalises every row,
whitens, searches and scores them as it does a user's method. Baselines: MAC, SPoC, CroW, GeM
(``rdfa.baselines``); R-MAC (Tolias et al.'s grid) and R-MAC+G (with the whole-image MAC as one
more region, as cnnimageretrieval-pytorch's ``rmac``). The paper's variants (Figure 1): O1_W and
O1_R, eq. 9 on the whole image / on every candidate region; O2_W and O2_R, eq. 5 from the
descriptors stage's rows (O2_R is the main pipeline).
"""
from __future__ import annotations

import numpy as np

from ..baselines import crow, gem, mac, rmac_maxima, rmac_regions, spoc
from ..pooling import first_order
from . import Image, register


def _mac(image: Image) -> np.ndarray:
    # The maxima of the float32 map: the float64 map's (a maximum does not round), half the bytes.
    return image.shared("mac", lambda: mac(image.fmap).astype(np.float64))


@register("MAC", kind="global")
def mac_(image: Image) -> np.ndarray:
    return _mac(image)


@register("SPoC", kind="global")
def spoc_(image: Image) -> np.ndarray:
    return spoc(image.fmap64)


@register("CroW", kind="global")
def crow_(image: Image) -> np.ndarray:
    s = image.settings
    return crow(image.fmap64, s.crow_a, s.crow_b, s.beta_eps, beta=image.beta, summed=image.channel_sums)


def _rmac(image: Image) -> np.ndarray:
    h, w, _ = image.fmap.shape
    regions = rmac_regions(h, w, image.settings.rmac_levels, image.settings.rmac_overlap)
    return image.shared("rmac", lambda: rmac_maxima(image.fmap, regions).astype(np.float64))


@register("R-MAC", kind="rmac")
def rmac_(image: Image) -> np.ndarray:
    return _rmac(image)


@register("R-MAC+G", kind="rmac")
def rmac_g(image: Image) -> np.ndarray:
    return np.vstack([_rmac(image), _mac(image)])


@register("GeM", kind="global")
def gem_(image: Image) -> np.ndarray:
    return gem(image.fmap64, image.settings.gem_p)


def _o1(image: Image) -> np.ndarray:
    return image.shared("o1", lambda: first_order(image.fmap64, image.masks, image.beta, image.alpha))


@register("O1_W", kind="global")
def o1_w(image: Image) -> np.ndarray:
    return _o1(image)[-1]


@register("O1_R", kind="regional")
def o1_r(image: Image) -> np.ndarray:
    return _o1(image)


@register("O2_W", kind="global", stored="descriptors")
def o2_w(image: Image) -> np.ndarray:
    return image.descriptors[-1]


@register("O2_R", kind="regional", stored="descriptors", pipeline=True)
def o2_r(image: Image) -> np.ndarray:
    return image.descriptors
