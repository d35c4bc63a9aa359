"""Image decoding and the image-size policy of the features stage."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np


class ImageError(ValueError):
    """An image cannot be used; the message names the file and why."""


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image to ``(H, W, 3) uint8`` RGB, as a user would expect.

    EXIF orientation is applied; grayscale and palette images are converted;
    16-bit images are scaled to 8 bits (not clipped); an alpha channel is
    composited onto black. A corrupt or unreadable file raises ``ImageError``
    naming it.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb8(img)
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: cannot decode image ({err})") from None


def _to_rgb8(img) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        gray = np.zeros(arr.shape, np.uint8) if hi <= lo else np.rint((arr - lo) / (hi - lo) * 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def target_size(height: int, width: int, max_side: int | None, min_side: int | None) -> tuple[int, int]:
    """Size ``(H, W)`` the network sees under the size policy.

    ``max_side``: shrink so the longer side is at most this (None: keep, as
    the paper does for Oxford and Paris). ``min_side``: enlarge so the shorter
    side is at least this, so that small images (COIL's 128x128) still give a
    usable feature map. Aspect ratio is kept.
    """
    scale = 1.0
    if max_side and max(height, width) > max_side:
        scale = max_side / max(height, width)
    if min_side and min(height, width) * scale < min_side:
        scale = min_side / min(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def resize_to(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize to ``(H, W)``: area averaging when shrinking, bilinear when enlarging."""
    import cv2

    th, tw = int(size_hw[0]), int(size_hw[1])
    if (th, tw) == image.shape[:2]:
        return image
    interp = cv2.INTER_AREA if th < image.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image, (tw, th), interpolation=interp)


def prepare(image: np.ndarray, max_side: int | None, min_side: int | None,
            stride: int, name: str, box=None) -> np.ndarray:
    """Crop to ``box`` (x1, y1, x2, y2 in pixels) if given, then resize by the size policy.

    Raises ``ImageError`` naming ``name`` when the result is smaller than the
    network's stride (it would give an empty feature map) or the box is empty.
    """

    if box is not None:
        h, w = image.shape[:2]
        x1, y1 = max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1])))
        x2, y2 = min(w, int(math.ceil(box[2]))), min(h, int(math.ceil(box[3])))
        if x2 <= x1 or y2 <= y1:
            raise ImageError(f"{name}: query box {list(box)} does not overlap the {w}x{h} image")
        image = image[y1:y2, x1:x2]
    h, w = image.shape[:2]
    th, tw = target_size(h, w, max_side, min_side)
    image = resize_to(image, (th, tw))
    if min(th, tw) < stride:
        raise ImageError(
            f"{name}: image is {tw}x{th} after the size policy, smaller than the network's "
            f"stride ({stride}); raise features.min_side")
    return np.ascontiguousarray(image)
