"""Typed settings: ``params.yaml`` parsed and checked once, one frozen dataclass per group.

    >>> from rdfa.settings import load_settings
    >>> s = load_settings("params.yaml")
    >>> s.regions.L, s.whitening.setting().mode, s.features.size_for("synth").max_pixels
    (3, 'pca', 16777216)

Every group of the file is checked against its known keys when it is loaded,
whichever stage loads it: a typo (``regions.l``) is refused with the nearest
known key (``did you mean 'regions.L'?``), a value of the wrong type or range
names its key. Each setting has one default, the dataclass field's, equal to
``params.yaml``'s (``tests/test_settings.py`` compares them). A missing group
takes its defaults. Which stage reads which group is ``dvc.yaml``'s business;
``runtime:`` holds the settings that must not change results (no stage
declares them).
"""
from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path


class ParamError(ValueError):
    """A parameter is missing or nonsensical; the message names it."""


SettingsError = ParamError

#: Keys that moved, with where they went (refused with that advice rather than "unknown").
MOVED = {"methods.whiten_on": "whitening.train_on (the main pipeline's whitening and every method's learn "
                              "on the same dataset)"}
PRECISIONS = ("fp32", "bf16", "fp16")
#: ``features.backbone``: the networks of ``rdfa.io.backbones.BACKBONES`` (kept here without torch;
#: ``tests/test_backbones.py`` checks that the two lists agree). ``docs/backbones.md`` describes each.
BACKBONE_NAMES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "vgg16", "vgg19", "vgg19_caffe",
                  "resnet50", "resnet101", "resnet101_gem_sfm")
#: ``features.weights: random``: the network with seeded random weights (PyTorch's default initialisation), no download.
RANDOM_WEIGHTS = "random"
DTYPES = ("float16", "float32")
#: ``saliency.fallback``: how alpha is read when the detector finds fewer than N_min points.
FALLBACKS = ("grid", "pixels")
#: ``saliency.detector``: ``hesaff`` (the paper's Hessian-affine detector on the network input) or
#: ``hesaff_half`` (the same detector on the input shrunk 2x; ``rdfa.saliency.DETECTORS`` says what differs).
DETECTOR_NAMES = ("hesaff", "hesaff_half")
#: The largest ``regions.L``: 2^8 = 256 regions per image already give 256 second-order descriptors of
#: K'(K'+1)/2 = 8256 floats (8.5 MB) per image before whitening, and 256^2 region pairs per image pair in
#: eq. (7); L = 20 would ask for a million regions per image and never finish.
MAX_L = 8
EXECUTORS = ("local", "ray")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


# --- setting types used by the maths (re-exported by rdfa.whitening, rdfa.io.images, rdfa.index) ---

#: Default pixel limit of a network input: 16 Mpx (4096x4096). Above it the first VGG19 block's
#: fp32 activations alone pass 4 GB.
DEFAULT_MAX_PIXELS = 16_777_216
#: ``index.type``: ``exact`` (rdfa.index.exact_image_scores, the reference) or a FAISS index over the regions.
INDEX_TYPES = ("exact", "flat", "ivfpq", "ivfflat")

#: The whitening modes of ``whitening.mode`` (and ``methods.whitening``).
WHITENING_MODES = ("pca", "shrink", "power", "none")


@dataclass(frozen=True)
class Whitening:
    """How the descriptors are whitened: eq. (6) (``pca``) or a softer variant.

    ``shrink`` (mode ``shrink``): the eigenvalues become ``lambda + shrink *
    mean(lambda)`` before the inverse square root, the mean taken over all
    ``d`` axes of the fit (its total variance / d, so the same for every D);
    ``power`` (mode ``power``): the axes are scaled by ``lambda^-power``.
    ``none``: no PCA at all (the l2-normalised descriptors, full dimension).
    """

    mode: str = "pca"
    shrink: float = 1.0
    power: float = 0.5

    def __post_init__(self):
        if self.mode not in WHITENING_MODES:
            raise ValueError(f"'whitening.mode' must be one of {', '.join(WHITENING_MODES)} (got {self.mode!r})")
        if not (self.shrink >= 0 and math.isfinite(self.shrink)):
            raise ValueError(f"'whitening.shrink' must be a finite number >= 0 (got {self.shrink!r})")
        if not 0 <= self.power <= 0.5:
            raise ValueError(f"'whitening.power' must be in [0, 0.5] (got {self.power!r})")

    @property
    def label(self) -> str:
        """The mode and the one setting that matters for it, e.g. ``shrink (s=1)``."""
        if self.mode == "shrink":
            return f"shrink (s={self.shrink:g})"
        if self.mode == "power":
            return f"power (p={self.power:g})"
        return self.mode

    def record(self) -> dict:
        """What results files record of it."""
        out: dict = {"mode": self.mode}
        if self.mode == "shrink":
            out["shrink"] = self.shrink
        if self.mode == "power":
            out["power"] = self.power
        return out


@dataclass(frozen=True)
class SizePolicy:
    """How one dataset's images are sized for the network (``features.size.<dataset>``).

    ``max_side``: shrink so the longer side is at most this (None: keep, as
    the paper does for Oxford and Paris; Holidays uses 1024). ``min_side``:
    enlarge so the shorter side is at least this, so that small images
    (COIL's 128x128) still give a usable feature map. ``max_pixels``: refuse
    a network input larger than this (a 9,500x9,500 photo would ask for
    multi-GB activations): the error names the image and the key.
    """

    max_side: int | None = None
    min_side: int | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    @classmethod
    def from_params(cls, value, key: str) -> "SizePolicy":
        """Check and build a policy from ``params.yaml``'s mapping at ``key``."""
        if not isinstance(value, dict):
            raise ParamError(f"params.yaml: '{key}' must be a mapping with max_side, min_side, max_pixels "
                             f"(got {value!r})")
        check_keys(key, value, ("max_side", "min_side", "max_pixels"))
        out = {}
        for name in ("max_side", "min_side", "max_pixels"):
            v = value.get(name, getattr(cls, name))
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ParamError(f"params.yaml: '{key}.{name}' must be a positive integer or null (got {v!r})")
            out[name] = v
        if out["max_side"] and out["min_side"] and out["min_side"] > out["max_side"]:
            raise ParamError(f"params.yaml: '{key}.min_side' ({out['min_side']}) exceeds "
                             f"'{key}.max_side' ({out['max_side']})")
        return cls(**out)

    def as_dict(self) -> dict:
        return {"max_side": self.max_side, "min_side": self.min_side, "max_pixels": self.max_pixels}


@dataclass(frozen=True)
class IndexSettings:
    """``params.yaml``'s ``index`` group: which index and its FAISS parameters.

    ``nlist`` inverted lists (IVF types), ``m`` PQ sub-quantizers of
    ``nbits`` bits each (``ivfpq``), ``nprobe`` lists visited per query row,
    ``shortlist`` regions retrieved per query row before the exact
    re-ranking, ``train_size`` rows sampled (with ``seed``) to train the
    k-means of the lists and of PQ.
    """

    type: str = "exact"
    nlist: int = 1024
    m: int = 64
    nbits: int = 8
    nprobe: int = 16
    shortlist: int = 2000
    train_size: int = 65536
    seed: int = 0

    def __post_init__(self):
        if self.type not in INDEX_TYPES:
            raise ValueError(f"'index.type' must be one of {', '.join(INDEX_TYPES)} (got {self.type!r})")
        for key in ("nlist", "m", "nprobe", "shortlist", "train_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"'index.{key}' must be an integer >= 1 (got {value!r})")
        if not isinstance(self.nbits, int) or not 1 <= self.nbits <= 16:
            raise ValueError(f"'index.nbits' must be an integer in [1, 16] (got {self.nbits!r})")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"'index.seed' must be an integer >= 0 (got {self.seed!r})")
        if self.type in ("ivfpq", "ivfflat") and self.nprobe > self.nlist:
            raise ValueError(f"'index.nprobe' ({self.nprobe}) cannot exceed 'index.nlist' ({self.nlist})")

    @classmethod
    def from_params(cls, group: dict | None) -> IndexSettings:
        """The settings of a ``params.yaml`` ``index`` group (missing keys: the defaults)."""
        group = dict(group or {})
        unknown = sorted(set(group) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown key(s) in params.yaml's index group: {', '.join(f'index.{k}' for k in unknown)}")
        return cls(**group)

    @property
    def factory(self) -> str:
        """The ``faiss.index_factory`` description of the index."""
        return {"flat": "Flat", "ivfflat": f"IVF{self.nlist},Flat",
                "ivfpq": f"IVF{self.nlist},PQ{self.m}x{self.nbits}"}[self.type]

    def check_fit(self, dim: int, n_rows: int) -> None:
        """Refuse settings that cannot index ``n_rows`` rows of dimension ``dim``, naming the key."""
        if self.type == "exact":
            raise ValueError("'index.type' exact builds no FAISS index (use exact_image_scores)")
        n_train = min(self.train_size, n_rows)
        if self.type in ("ivfpq", "ivfflat") and self.nlist > n_train:
            raise ValueError(f"'index.nlist' ({self.nlist}) exceeds the {n_train} training rows "
                             f"(min of index.train_size and the database's {n_rows} rows)")
        if self.type == "ivfpq":
            if dim % self.m:
                raise ValueError(f"'index.m' ({self.m}) must divide the descriptor dimension {dim}")
            if 2 ** self.nbits > n_train:
                raise ValueError(f"'index.nbits' ({self.nbits}): 2^{self.nbits} PQ centroids exceed the "
                                 f"{n_train} training rows")


# --- checks: each returns the value (possibly normalised) or raises naming the key ----------------

def _fail(key: str, what: str, value) -> None:
    raise SettingsError(f"params.yaml: '{key}' must be {what} (got {value!r})")


def _int(key: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(key, "an integer", value)
    if minimum is not None and value < minimum:
        _fail(key, f"an integer >= {minimum}", value)
    return value


def _number(key: str, value, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(key, "a number", value)
    if positive and not value > 0:
        _fail(key, "a number > 0", value)
    return float(value)


def _bool(key: str, value) -> bool:
    if not isinstance(value, bool):  # "no" is a string, and bool("no") is True: refused
        _fail(key, "true or false", value)
    return value


def _choice(key: str, value, choices: tuple) -> str:
    if value not in choices:
        _fail(key, f"one of {', '.join(map(str, choices))}", value)
    return value


def _mapping(key: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(key, "a mapping", value)
    return value


def _name_map(key: str, value) -> dict[str, str]:
    """A mapping of names to names (``sources``' string values, ``distractors``, ``train_on``)."""
    out = {}
    for name, target in _mapping(key, value).items():
        if not isinstance(target, str) or not target:
            _fail(f"{key}.{name}", "a name", target)
        out[str(name)] = target
    return out


def check_keys(key: str, given: dict, known) -> None:
    """Refuse keys of ``given`` not in ``known``, with the nearest known key where one is close."""
    known = list(known)
    for name in given:
        full = f"{key}.{name}" if key else str(name)
        if name in known:
            continue
        if full in MOVED:
            raise SettingsError(f"params.yaml: '{full}' is now {MOVED[full]}")
        by_case = [k for k in known if str(k).lower() == str(name).lower()]
        near = by_case or difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
        hint = f"; did you mean '{key + '.' if key else ''}{near[0]}'?" if near else ""
        raise SettingsError(f"params.yaml: unknown key '{full}'{hint} (known: {', '.join(map(str, known))})")


def _group(cls, key: str, value):
    """``cls`` from the mapping ``value`` of group ``key``: unknown keys refused, defaults filled in,
    every field checked by ``cls.check``."""
    given = _mapping(key, value)
    check_keys(key, given, [f.name for f in fields(cls)])
    return cls(**given)


# --- the groups -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeaturesSettings:
    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    precision: str = "bf16"
    dtype: str = "float16"
    size: dict = field(default_factory=dict)

    def __post_init__(self):
        _choice("features.backbone", self.backbone, BACKBONE_NAMES)
        if self.weights is not None and not (isinstance(self.weights, str) and self.weights):
            _fail("features.weights", f"a weight file's path, {RANDOM_WEIGHTS!r} or null", self.weights)
        if self.backbone == "vgg19_caffe" and self.weights is None:
            raise SettingsError("params.yaml: 'features.backbone' vgg19_caffe needs 'features.weights': a local file "
                                "of VGG19 weights converted from Caffe (torchvision's layout; there is no official "
                                f"address for them), or {RANDOM_WEIGHTS!r}")
        _choice("features.precision", self.precision, PRECISIONS)
        _choice("features.dtype", self.dtype, DTYPES)
        sizes = _mapping("features.size", self.size)
        for dataset, policy in sizes.items():
            self.policy(dataset, policy)  # checked now, built where used

    @staticmethod
    def policy(dataset: str, value) -> SizePolicy:
        try:
            return SizePolicy.from_params(value, f"features.size.{dataset}")
        except ParamError:
            raise
        except ValueError as err:
            raise SettingsError(str(err)) from None

    def size_for(self, dataset: str):
        """``dataset``'s :class:`rdfa.io.images.SizePolicy`, or an error naming ``features.size.<dataset>``."""
        if dataset not in (self.size or {}):
            raise SettingsError(f"params.yaml: no 'features.size.{dataset}': give dataset '{dataset}' its "
                                "image-size policy ({max_side, min_side, max_pixels}; null keeps a side as it is)")
        return self.policy(dataset, self.size[dataset])


@dataclass(frozen=True)
class WeightsSettings:
    beta_eps: float = 1.0e-6

    def __post_init__(self):
        object.__setattr__(self, "beta_eps", _number("weights.beta_eps", self.beta_eps, positive=True))


@dataclass(frozen=True)
class SaliencySettings:
    n_max: int = 4000
    n_min: int = 300
    fallback: str = "grid"
    detector: str = "hesaff"

    def __post_init__(self):
        _int("saliency.n_max", self.n_max, 1)
        _int("saliency.n_min", self.n_min, 1)
        if self.n_min > self.n_max:
            raise SettingsError(f"params.yaml: 'saliency.n_min' ({self.n_min}) must not exceed 'saliency.n_max' "
                                f"({self.n_max})")
        _choice("saliency.fallback", self.fallback, FALLBACKS)
        _choice("saliency.detector", self.detector, DETECTOR_NAMES)


@dataclass(frozen=True)
class RegionsSettings:
    L: int = 3
    min_cells: int = 1
    kmeans_max_iter: int = 100

    def __post_init__(self):
        _int("regions.L", self.L, 1)
        if self.L > MAX_L:
            raise SettingsError(
                f"params.yaml: 'regions.L'={self.L} asks for 2^L = {2 ** self.L} regions per image; the limit is "
                f"L <= {MAX_L} (256 regions: 8.5 MB of second-order descriptors per image at K'=128, and 65,536 "
                "region pairs per image pair in eq. 7)")
        _int("regions.min_cells", self.min_cells, 1)
        _int("regions.kmeans_max_iter", self.kmeans_max_iter, 1)


@dataclass(frozen=True)
class PcaSettings:
    k_prime: int = 128

    def __post_init__(self):
        _int("pca.k_prime", self.k_prime, 1)


@dataclass(frozen=True)
class DescriptorsSettings:
    log_eps: float = 1.0e-2

    def __post_init__(self):
        object.__setattr__(self, "log_eps", _number("descriptors.log_eps", self.log_eps, positive=True))


#: ``whitening.distractors.fit``: what the whitening used with a distractor set is learned on.
DISTRACTOR_FITS = ("database", "collection")


@dataclass(frozen=True)
class DistractorWhitening:
    """``whitening.distractors``: with a distractor set, the whitening is learned on the database
    (``database``: the whitening stage's fit, the paper's) or on the database plus the first
    ``fit_images`` images of the set (``collection``: the distractors stage fits it, then whitens
    the database, the queries and every distractor with it)."""

    fit: str = "database"
    fit_images: int = 1000

    def __post_init__(self):
        _choice("whitening.distractors.fit", self.fit, DISTRACTOR_FITS)
        _int("whitening.distractors.fit_images", self.fit_images, 1)


@dataclass(frozen=True)
class WhiteningSettings:
    D: int = 512
    mode: str = "pca"
    shrink: float = 1.0
    power: float = 0.5
    train_on: dict = field(default_factory=dict)
    distractors: DistractorWhitening = field(default_factory=DistractorWhitening)

    def __post_init__(self):
        _int("whitening.D", self.D, 1)
        object.__setattr__(self, "shrink", _number("whitening.shrink", self.shrink))
        object.__setattr__(self, "power", _number("whitening.power", self.power))
        object.__setattr__(self, "train_on", _name_map("whitening.train_on", self.train_on))
        if not isinstance(self.distractors, DistractorWhitening):
            object.__setattr__(self, "distractors", _group(DistractorWhitening, "whitening.distractors",
                                                           self.distractors))
        mode = self.setting()  # the mode and its values, checked by Whitening itself
        if self.distractors.fit == "collection" and mode.mode == "none":
            raise SettingsError("params.yaml: 'whitening.distractors.fit' is collection, but 'whitening.mode' is "
                                "none: there is no whitening to learn")

    def setting(self) -> Whitening:
        """The :class:`Whitening` of ``mode``, ``shrink`` and ``power``."""
        try:
            return Whitening(self.mode, self.shrink, self.power)
        except ValueError as err:
            raise SettingsError(f"params.yaml: {err}") from None

    def training_dataset(self, dataset: str, datasets: list[str]) -> str:
        """The dataset whose database ``dataset`` learns its basis and whitening on (``train_on``;
        itself by default). It must be in ``datasets`` and learn on itself."""
        source = self.train_on.get(dataset, dataset)
        if source == dataset:
            return dataset
        if source not in datasets:
            raise SettingsError(f"params.yaml: 'whitening.train_on.{dataset}' is {source!r}, which is not in "
                                f"'datasets' ({', '.join(datasets) or 'empty'}): add it there so that its "
                                "descriptors exist")
        onward = self.train_on.get(source, source)
        if onward != source:
            raise SettingsError(f"params.yaml: 'whitening.train_on.{dataset}' is {source!r}, which itself learns "
                                f"on {onward!r}: a training set must learn on itself")
        return source


@dataclass(frozen=True)
class RankingSettings:
    n_qe: int = 10
    qe_include_query: bool = True

    def __post_init__(self):
        _int("ranking.n_qe", self.n_qe, 0)
        _bool("ranking.qe_include_query", self.qe_include_query)


@dataclass(frozen=True)
class RuntimeSettings:
    """Settings that must not change results: no stage declares them in ``dvc.yaml``."""

    device: str = "auto"
    threads: int = 0
    blas_threads: int = 0
    workers: int = 0
    batch_size: int = 0
    chunk_rows: int = 16384
    shard_images: int = 2000
    executor: str = "local"
    ray_address: str | None = None

    def __post_init__(self):
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            _fail("runtime.device", "auto, cpu, cuda, cuda:N or mps", self.device)
        for key in ("threads", "blas_threads", "workers", "batch_size"):
            _int(f"runtime.{key}", getattr(self, key), 0)
        _int("runtime.chunk_rows", self.chunk_rows, 1)
        _int("runtime.shard_images", self.shard_images, 1)
        _choice("runtime.executor", self.executor, EXECUTORS)
        address = self.ray_address
        if address is not None and (not isinstance(address, str) or not address.strip() or " " in address.strip()):
            _fail("runtime.ray_address", "a Ray cluster address (ray://<head>:10001, <head>:6379 or auto) or null "
                  "for a Ray started on this machine", address)

    def worker_count(self) -> int:
        """``workers`` with 0 made concrete for the local executor (this machine's cores); with Ray a 0
        stays 0 (one actor per CPU of the cluster)."""
        if self.workers or self.executor == "ray":
            return self.workers
        return os.cpu_count() or 1

    def executor_options(self) -> dict:
        """The keyword arguments of :func:`rdfa.io.stage.worker_map` that this group decides."""
        return {"executor": self.executor, "ray_address": self.ray_address}

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class MethodsSettings:
    D: tuple = (128, 256, 512)
    compare_whitening: tuple = ()
    full_query: bool = True
    gem_p: float = 3.0
    crow_a: float = 2.0
    crow_b: float = 2.0
    rmac_levels: int = 3
    rmac_overlap: float = 0.4
    figure_queries: int = 4
    figure_top_k: int = 6
    # Table 1's methods the distractor pass computes too (O2_R's rows always); a plugin's joins when named.
    distractor_methods: tuple = ("MAC", "SPoC", "CroW", "R-MAC", "R-MAC+G", "GeM", "O1_W", "O1_R", "O2_W", "O2_R")

    def __post_init__(self):
        dims = self.D
        if (not isinstance(dims, (list, tuple)) or not dims
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dims)):
            _fail("methods.D", "a non-empty list of positive integers", dims)
        object.__setattr__(self, "D", tuple(sorted(set(dims))))
        compare = self.compare_whitening or ()
        if not isinstance(compare, (list, tuple)) or not all(m in WHITENING_MODES for m in compare):
            _fail("methods.compare_whitening", f"a list of modes among {', '.join(WHITENING_MODES)}", compare)
        object.__setattr__(self, "compare_whitening", tuple(dict.fromkeys(compare)))
        _bool("methods.full_query", self.full_query)
        for key in ("gem_p", "crow_a", "crow_b", "rmac_overlap"):
            object.__setattr__(self, key, _number(f"methods.{key}", getattr(self, key), positive=True))
        if self.rmac_overlap >= 1:
            _fail("methods.rmac_overlap", "< 1", self.rmac_overlap)
        for key in ("rmac_levels", "figure_queries", "figure_top_k"):
            _int(f"methods.{key}", getattr(self, key), 1)
        chosen = self.distractor_methods
        if (not isinstance(chosen, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in chosen)
                or len(set(chosen)) != len(chosen)):
            _fail("methods.distractor_methods", "a list of method names, each once (the names are checked "
                  "against the registered methods by the distractors stage)", chosen)
        object.__setattr__(self, "distractor_methods", tuple(chosen))


@dataclass(frozen=True)
class ReportSettings:
    top_k: int = 10
    thumbnail: int = 160

    def __post_init__(self):
        _int("report.top_k", self.top_k, 1)
        _int("report.thumbnail", self.thumbnail, 16)


def _index(value) -> IndexSettings:
    given = _mapping("index", value)
    check_keys("index", given, [f.name for f in fields(IndexSettings)])
    try:
        return IndexSettings.from_params(given)
    except ValueError as err:
        raise SettingsError(f"params.yaml: {err}") from None


#: The groups of params.yaml: key -> parser of its value.
GROUPS = {
    "features": lambda v: _group(FeaturesSettings, "features", v),
    "weights": lambda v: _group(WeightsSettings, "weights", v),
    "saliency": lambda v: _group(SaliencySettings, "saliency", v),
    "regions": lambda v: _group(RegionsSettings, "regions", v),
    "pca": lambda v: _group(PcaSettings, "pca", v),
    "descriptors": lambda v: _group(DescriptorsSettings, "descriptors", v),
    "whitening": lambda v: _group(WhiteningSettings, "whitening", v),
    "ranking": lambda v: _group(RankingSettings, "ranking", v),
    "index": _index,
    "runtime": lambda v: _group(RuntimeSettings, "runtime", v),
    "methods": lambda v: _group(MethodsSettings, "methods", v),
    "report": lambda v: _group(ReportSettings, "report", v),
}
TOP_LEVEL = ("datasets", "sources", "distractors", "data", *GROUPS)


@dataclass(frozen=True)
class Settings:
    """The whole of ``params.yaml``, checked. ``data``: the per-dataset options of the data stage (a
    mapping of mappings, checked by the dataset's own code, which knows its keys)."""

    datasets: tuple = ()
    sources: dict = field(default_factory=dict)
    distractors: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    features: FeaturesSettings = FeaturesSettings()
    weights: WeightsSettings = WeightsSettings()
    saliency: SaliencySettings = SaliencySettings()
    regions: RegionsSettings = RegionsSettings()
    pca: PcaSettings = PcaSettings()
    descriptors: DescriptorsSettings = DescriptorsSettings()
    whitening: WhiteningSettings = WhiteningSettings()
    ranking: RankingSettings = RankingSettings()
    index: IndexSettings = IndexSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    methods: MethodsSettings = MethodsSettings()
    report: ReportSettings = ReportSettings()
    #: The parsed file as it is (for what has no group of its own here, e.g. ``data``).
    params: dict = field(default_factory=dict, repr=False, compare=False)

    def training_dataset(self, dataset: str) -> str:
        """:meth:`WhiteningSettings.training_dataset` against this file's ``datasets``."""
        return self.whitening.training_dataset(dataset, list(self.datasets))

    def source(self, dataset: str):
        """``sources.<dataset>``, or an error naming it."""
        if dataset not in self.sources:
            raise SettingsError(f"params.yaml: no 'sources.{dataset}' (generated, download, or a local path)")
        return self.sources[dataset]

    def data_options(self, dataset: str) -> dict:
        """``data.<dataset>`` (empty when absent)."""
        return _mapping(f"data.{dataset}", self.data.get(dataset))


def parse_settings(params: dict | None) -> Settings:
    """:class:`Settings` of an already-read ``params.yaml`` mapping (missing groups: defaults)."""
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise SettingsError("params.yaml: expected a mapping at the top level")
    check_keys("", params, TOP_LEVEL)
    datasets = params.get("datasets") or []
    if not isinstance(datasets, list) or not all(isinstance(d, str) and d for d in datasets):
        _fail("datasets", "a list of dataset names", datasets)
    if len(set(datasets)) != len(datasets):
        _fail("datasets", "a list without repeats", datasets)
    sources = _mapping("sources", params.get("sources"))
    for name, value in sources.items():
        if not isinstance(value, str) or not value:
            _fail(f"sources.{name}", "generated, download, or a local path", value)
    data = _mapping("data", params.get("data"))
    for name, value in data.items():
        _mapping(f"data.{name}", value)
    groups = {key: parse(params.get(key)) for key, parse in GROUPS.items()}
    return Settings(datasets=tuple(datasets), sources=dict(sources),
                    distractors=_name_map("distractors", params.get("distractors")), data=dict(data),
                    params=params, **groups)


def load_settings(path: str | Path = "params.yaml") -> Settings:
    """Read and check ``params.yaml`` (every group, once)."""
    import yaml  # here, not at the top: the setting types import on a bare GPU machine (bench/gpu.py)

    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"{path}: parameter file not found")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SettingsError(f"{path}: not valid YAML ({err})") from None
    try:
        return parse_settings(params or {})
    except SettingsError as err:
        message = str(err)
        if str(path) != "params.yaml" and message.startswith("params.yaml:"):
            message = f"{path}:" + message[len("params.yaml:"):]
        raise SettingsError(message) from None
