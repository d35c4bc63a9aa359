"""Image decoding and the image-size policy of the features stage."""
from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..settings import DEFAULT_MAX_PIXELS, SizePolicy  # noqa: F401  (the size policy is a setting)

log = logging.getLogger(__name__)



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
    except Image.DecompressionBombError as err:
        raise ImageError(f"{path}: refused, {_bomb(err)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: cannot decode image ({err})") from None


def _bomb(err: Exception) -> str:
    """Pillow's DecompressionBombError in words (it is no OSError/ValueError, so it escaped as a traceback)."""
    return (f"its pixel count is over twice Pillow's limit for a decompression bomb ({err}); "
            "an image this large cannot be described")


def check_header(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from an image file's header, without decoding its pixels; ``ImageError`` naming
    the file when it is missing, not an image, or a decompression bomb (what :func:`load_rgb` would refuse
    for these, found at the cost of reading the header)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise ImageError(f"{path}: image file not found") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"{path}: refused, {_bomb(err)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: cannot decode image ({err})") from None


def decode_rgb(data: bytes, name: str) -> np.ndarray:
    """:func:`load_rgb` of an encoded image held in memory (a member of an archive); ``name`` is
    named in the error of a corrupt one."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb8(img)
    except Image.DecompressionBombError as err:
        raise ImageError(f"{name}: refused, {_bomb(err)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{name}: cannot decode image ({err})") from None


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
    """Size ``(H, W)`` the network sees under the size policy (aspect ratio kept)."""
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


@dataclass
class Prepared:
    """A network input and where it came from.

    ``image``: ``(H, W, 3) uint8``; ``scale``: ``(sy, sx)`` from the original
    image to the resized whole image; ``crop``: the box cut from the resized
    image, ``[x1, y1, x2, y2]`` in its pixels (the whole image when there is no
    box); ``enlarged``: extra factor applied to a crop smaller than the stride.
    """

    image: np.ndarray
    scale: tuple[float, float]
    crop: tuple[int, int, int, int]
    enlarged: float = 1.0


def prepare_input(image: np.ndarray, policy: SizePolicy, stride: int, name: str, box=None) -> Prepared:
    """The network input of an image, or of a query box cut out of it.

    The size policy is applied to the *whole* image, and the box (original
    pixels ``x1, y1, x2, y2``) is cut from the resized image at that scale,
    so a query keeps the scale of the database image it must match (the
    standard Oxford/Paris protocol). Only a crop smaller than the network's
    stride is enlarged (to the stride, logged), since it would give an empty
    feature map. Raises ``ImageError`` naming ``name`` for an empty box, an
    image smaller than the stride, or an input over ``policy.max_pixels``.
    """
    h, w = image.shape[:2]
    th, tw = target_size(h, w, policy.max_side, policy.min_side)
    if policy.max_pixels and th * tw > policy.max_pixels:
        raise ImageError(
            f"{name}: a {w}x{h} image gives a {tw}x{th} network input, more than the "
            f"{policy.max_pixels} pixels of features.size.<dataset>.max_pixels; set max_side for this dataset "
            "(or raise max_pixels if the machine has the memory)")
    if min(th, tw) < stride:
        raise ImageError(
            f"{name}: image is {tw}x{th} after the size policy, smaller than the network's "
            f"stride ({stride}); raise features.size.<dataset>.min_side")
    resized = resize_to(image, (th, tw))
    sy, sx = th / h, tw / w
    if box is None:
        return Prepared(np.ascontiguousarray(resized), (sy, sx), (0, 0, tw, th))
    if len(box) != 4 or not all(math.isfinite(float(v)) for v in box):
        raise ImageError(f"{name}: query box {list(box)} must be four finite numbers x1, y1, x2, y2")
    if box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h:
        inside = [max(0.0, float(box[0])), max(0.0, float(box[1])), min(float(w), float(box[2])),
                  min(float(h), float(box[3]))]
        if inside[2] > inside[0] and inside[3] > inside[1]:
            log.warning("%s: query box %s reaches outside the %dx%d image: clipped to %s", name, list(box), w, h,
                        [round(v, 2) for v in inside])
    # The box's edges at the resized image's scale, rounded to the nearest pixel edge (the crop
    # is then within a pixel of the box times the scale).
    x1, y1 = max(0, int(math.floor(box[0] * sx + 0.5))), max(0, int(math.floor(box[1] * sy + 0.5)))
    x2, y2 = min(tw, int(math.floor(box[2] * sx + 0.5))), min(th, int(math.floor(box[3] * sy + 0.5)))
    if x2 <= x1 or y2 <= y1:
        raise ImageError(f"{name}: query box {list(box)} does not overlap the {w}x{h} image")
    crop = resized[y1:y2, x1:x2]
    enlarged = 1.0
    if min(crop.shape[:2]) < stride:
        enlarged = stride / min(crop.shape[:2])
        ch, cw = target_size(crop.shape[0], crop.shape[1], None, stride)
        log.warning("%s: query box %s is %dx%d pixels at the dataset's scale, smaller than the network's "
                    "stride (%d): enlarged %.2fx to %dx%d", name, list(box), crop.shape[1], crop.shape[0],
                    stride, enlarged, cw, ch)
        crop = resize_to(crop, (ch, cw))
    return Prepared(np.ascontiguousarray(crop), (sy, sx), (x1, y1, x2, y2), enlarged)


def prepare(image: np.ndarray, max_side: int | None, min_side: int | None,
            stride: int, name: str, box=None) -> np.ndarray:
    """:func:`prepare_input`'s image for a policy given as ``max_side``/``min_side`` (no pixel limit)."""
    return prepare_input(image, SizePolicy(max_side, min_side, None), stride, name, box).image


def thumbnail(image: np.ndarray, height: int, max_width: int | None = None) -> tuple[np.ndarray, float, float]:
    """The image shrunk to at most ``height`` rows (and ``max_width`` columns), with its x and y scale.

    Never enlarged; the aspect ratio is kept.
    """
    h, w = image.shape[:2]
    scale = min(1.0, height / h, max_width / w if max_width else 1.0)
    th, tw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    return resize_to(image, (th, tw)), tw / w, th / h
